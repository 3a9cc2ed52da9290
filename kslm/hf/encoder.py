"""Hugging Face encoders (BERT, RoFormer, …) as kslm backbones — the optional extra `hf` (pip install 'kslm[hf]').

The extraction heads only need `(input_ids [B, T], attention_mask [B, T]) → hidden [B, T, d]`; HFEncoder gives that
for any `transformers.AutoModel` encoder loaded from a local directory, so users with pretrained Chinese
BERT / RoFormer weights reach the published GlobalPointer numbers with the same heads, losses and metrics.
The model's config travels inside kslm checkpoints (as a dict), so predicting from a fine-tuned checkpoint rebuilds
the encoder without the original directory.

`model.hf_path` is a local directory or a hub name (`bert-base-chinese`): a hub name's config and tokenizer files
come through the Hugging Face hub cache (`local_dir`), its weights from `from_pretrained(NAME)`; offline
(HF_HUB_OFFLINE=1) only what the cache holds is used, and a name it lacks is a one-line error.
"""

import os
import re
from contextlib import contextmanager
from pathlib import Path

from torch import nn

from kslm.errors import ConfigError

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # `bert-base-chinese`, `hfl/chinese-roberta-wwm-ext`
HUB_FILES = ["config.json", "tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"]


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError("model.hf_path needs the optional extra: pip install 'kslm[hf]'") from None
    from kslm.hf.modeling_kslm import register

    register()  # `kslm export` directories (model_type kslm) load with kslm's installed classes, never an export's copy
    return transformers


def _without_pooler(factory, *args):
    """BERT-like models carry a pooler the heads never use (its unused weights would break DDP); drop it. A model
    directory is data: remote code is never run (trust_remote_code=False, explicitly)."""
    try:
        return factory(*args, add_pooling_layer=False, trust_remote_code=False)
    except TypeError:
        return factory(*args, trust_remote_code=False)


def is_hub_name(path) -> bool:
    """`path` names a hub model rather than a local directory: it does not exist here, reads as a repo id, and its
    first part is no folder here (`checkpoints/export`, missing, is a local path that is not there, not a hub id)."""
    text = str(path)
    if Path(text).expanduser().exists() or not HUB_ID.fullmatch(text) or ".." in text:
        return False
    return "/" not in text or not Path(text.split("/", 1)[0]).is_dir()


def offline() -> bool:
    """The hub is off limits (HF_HUB_OFFLINE)."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE") or bool(constants.HF_HUB_OFFLINE)


def local_dir(path, field: str = "model.hf_path") -> Path:
    """The local directory of an HF model: `path` itself, or for a hub name its config and tokenizer files in the
    hub cache (fetched when online; offline, the cache alone)."""
    p = Path(str(path)).expanduser()
    if p.is_dir():
        return p
    if not is_hub_name(path):
        raise ConfigError(f"{path}: not a local Hugging Face model directory (field '{field}')")
    _transformers()
    from huggingface_hub import snapshot_download

    cache_only = offline()
    try:
        return Path(snapshot_download(str(path), allow_patterns=HUB_FILES, local_files_only=cache_only))
    except Exception as exc:  # huggingface_hub's errors for a missing cache entry / no connection, httpx's, OSError
        if type(exc).__name__ in ("RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError"):
            raise ConfigError(f"{field} {path}: not a local directory, and the Hugging Face hub has no such model "
                              f"(or it needs a login): check the name, or give a local path") from None
        why = "offline" if cache_only else "no network"
        raise ConfigError(f"{field} {path}: not a local directory, and the Hugging Face hub cannot be reached "
                          f"({why}): download it first or give a local path") from None


VOLATILE_KEYS = ("transformers_version", "dtype", "torch_dtype", "architectures")


def same_architecture(a: dict, b: dict) -> bool:
    """Two HF config dicts build the same model (bookkeeping keys such as _name_or_path or dtype ignored)."""
    def keep(d):
        return {k: v for k, v in d.items() if not k.startswith("_") and k not in VOLATILE_KEYS}

    return keep(a) == keep(b)


def _model_type(folder: Path):
    from kslm.io import JsonInputError, read_json

    try:
        config = read_json(folder / "config.json", 16 << 20)
    except (OSError, UnicodeDecodeError, JsonInputError) as exc:
        raise ConfigError(f"{folder}/config.json: unreadable ({str(exc).splitlines()[0][:200]}) (field 'model.hf_path')") \
            from None
    return config.get("model_type") if isinstance(config, dict) else None


@contextmanager
def _refused(path):
    """transformers' refusals (a model type it does not know, remote code it will not run, a damaged file) as one
    line: a model directory is data, and kslm never lets transformers run its code."""
    try:
        yield
    except (ValueError, OSError, KeyError, TypeError) as exc:
        detail = " ".join(str(exc).split())[:240]
        raise ConfigError(f"{path}: transformers cannot load this model without running code from it, or at all "
                          f"({detail}) (field 'model.hf_path')") from None


def config_dir(path) -> Path:
    """`local_dir`, which must hold a config.json."""
    p = local_dir(path)
    if not (p / "config.json").is_file():
        raise ConfigError(f"{p}: not a Hugging Face model directory (no config.json) (field 'model.hf_path')")
    return p


class HFEncoder(nn.Module):
    """A `transformers.AutoModel` encoder seen through kslm's backbone interface."""

    def __init__(self, model):
        super().__init__()
        # in train mode, as every freshly built module: `from_pretrained` returns the model in eval mode, and
        # Lightning (>= 2.2) keeps the modes it finds, so its dropouts would stay off for the whole fine-tuning
        self.model = model.train()

    @classmethod
    def from_config(cls, config: dict) -> "HFEncoder":
        """Architecture only (weights come from a kslm checkpoint)."""
        tf = _transformers()
        try:  # (the config of a checkpoint: a model type transformers has, or kslm's own; never remote code)
            cfg = tf.AutoConfig.for_model(**config)
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"the checkpoint's Hugging Face config builds no model ({str(exc).splitlines()[0][:200]})") \
                from None
        return cls(_without_pooler(tf.AutoModel.from_config, cfg))

    @classmethod
    def from_pretrained(cls, path) -> "HFEncoder":
        """From a local directory, or a hub name (its weights through the hub cache)."""
        p = config_dir(path)
        tf = _transformers()
        from kslm.hf.reader import is_export, read_export

        if is_export(p) and _model_type(p) == "kslm":
            # built like Backbone(cfg) (the same random draws as --model.pretrained, so the head's init is the same),
            # then the export's weights
            from kslm.hf.modeling_kslm import KslmConfig, KslmModel

            payload, state, _ = read_export(p, "model.hf_path")
            model = KslmModel(KslmConfig(backbone=payload.backbone))
            model.backbone.load_state_dict(state)
            return cls(model)
        with _refused(path):
            return cls(_without_pooler(tf.AutoModel.from_pretrained, str(path) if is_hub_name(path) else str(p)))

    @staticmethod
    def read_config(path) -> dict:
        with _refused(path):
            return _transformers().AutoConfig.from_pretrained(str(config_dir(path)), trust_remote_code=False).to_dict()

    @property
    def config_dict(self) -> dict:
        return self.model.config.to_dict()

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()  # where the input gradient penalty is taken

    def forward(self, input_ids, attention_mask=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def flops_per_token(self, seq_len: int, training: bool = True) -> float:
        """2·N (non-embedding weights) + 4·L·d·T for the T×T scores and their use, ×3 when training."""
        cfg = self.model.config
        n = sum(p.numel() for name, p in self.model.named_parameters() if "embeddings" not in name)
        fwd = 2 * n + 4 * cfg.num_hidden_layers * cfg.hidden_size * seq_len
        return fwd * (3 if training else 1)


__all__ = ["HFEncoder", "same_architecture", "local_dir", "config_dir", "is_hub_name"]
