"""Hugging Face encoders (BERT, RoFormer, …) as kslm backbones — the optional extra `hf` (pip install 'kslm[hf]').

The extraction heads only need `(input_ids [B, T], attention_mask [B, T]) → hidden [B, T, d]`; HFEncoder gives that
for any `transformers.AutoModel` encoder loaded from a local directory, so users with pretrained Chinese
BERT / RoFormer weights reach the published GlobalPointer numbers with the same heads, losses and metrics.
The model's config travels inside kslm checkpoints (as a dict), so predicting from a fine-tuned checkpoint rebuilds
the encoder without the original directory.
"""

import json
from pathlib import Path

from torch import nn

from kslm.errors import ConfigError


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError("model.hf_path needs the optional extra: pip install 'kslm[hf]'") from None
    from kslm.export.modeling_kslm import register

    register()  # `kslm export` directories (model_type kslm) load with kslm's installed classes, never an export's copy
    return transformers


def _without_pooler(factory, *args):
    """BERT-like models carry a pooler the heads never use (its unused weights would break DDP); drop it."""
    try:
        return factory(*args, add_pooling_layer=False)
    except TypeError:
        return factory(*args)


VOLATILE_KEYS = ("transformers_version", "dtype", "torch_dtype", "architectures")


def same_architecture(a: dict, b: dict) -> bool:
    """Two HF config dicts build the same model (bookkeeping keys such as _name_or_path or dtype ignored)."""
    def keep(d):
        return {k: v for k, v in d.items() if not k.startswith("_") and k not in VOLATILE_KEYS}

    return keep(a) == keep(b)


class HFEncoder(nn.Module):
    """A `transformers.AutoModel` encoder seen through kslm's backbone interface."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    @classmethod
    def from_config(cls, config: dict) -> "HFEncoder":
        """Architecture only (weights come from a kslm checkpoint)."""
        tf = _transformers()
        cfg = tf.AutoConfig.for_model(**config)
        return cls(_without_pooler(tf.AutoModel.from_config, cfg))

    @classmethod
    def from_pretrained(cls, path) -> "HFEncoder":
        p = Path(path)
        if not (p / "config.json").is_file():
            raise ConfigError(f"{p}: not a Hugging Face model directory (no config.json) (field 'model.hf_path')")
        tf = _transformers()
        from kslm.export.reader import is_export, read_export

        if is_export(p) and json.loads((p / "config.json").read_text(encoding="utf-8")).get("model_type") == "kslm":
            # built like Backbone(cfg) (the same random draws as --model.pretrained, so the head's init is the same),
            # then the export's weights
            from kslm.export.modeling_kslm import KslmConfig, KslmModel

            payload, state, _ = read_export(p, "model.hf_path")
            model = KslmModel(KslmConfig(backbone=payload.backbone))
            model.backbone.load_state_dict(state)
            return cls(model)
        return cls(_without_pooler(tf.AutoModel.from_pretrained, str(p)))

    @staticmethod
    def read_config(path) -> dict:
        p = Path(path)
        if not (p / "config.json").is_file():
            raise ConfigError(f"{p}: not a Hugging Face model directory (no config.json) (field 'model.hf_path')")
        return _transformers().AutoConfig.from_pretrained(str(p)).to_dict()

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


__all__ = ["HFEncoder", "same_architecture"]
