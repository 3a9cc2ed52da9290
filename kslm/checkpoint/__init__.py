"""The kslm checkpoint payload: what a Lightning `.ckpt` carries beside its weights so that it is self-contained.

This module is the payload's only writer and reader. `Payload` names the task that trained the weights (so a
checkpoint given to another task's config is refused), the task's settings (so `kslm predict --ckpt_path X` needs
no `--config`), the backbone config (or the Hugging Face config of an HF encoder), the tokenizer JSON, the label
set (entity types / predicates), the head options and the data settings prediction needs.

A checkpoint may come from a stranger, so it is data and nothing else (SECURITY.md): files are read with
`torch.load(weights_only=True)`, sharded folders through kslm.checkpoint.sharded's safe reader, and the payload is validated
against its schema (`validate`: known keys, plain JSON values of the right types, no `class_path` anywhere, data
settings that are numbers, never paths) before anything uses it. `open_checkpoint` builds the one validated
`Checkpoint` of a path (read once per process); every reader of `--ckpt_path`, `--model.pretrained` and
`kslm export` goes through it.
"""

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from tokenizers import Tokenizer

from kslm.checkpoint import schema
from kslm.checkpoint.sharded import META as SHARDED_META
from kslm.checkpoint.sharded import holds_optimizer, is_sharded, read_sharded
from kslm.errors import CheckpointError
from kslm.nn import Backbone, BackboneConfig

FORMAT_VERSION = 1
KEY = "kslm"  # the payload's key in Lightning's checkpoint dict
TASKS = {  # short name → class path (the payload stores the short name)
    "LanguageModel": "kslm.tasks.lm.LanguageModel",
    "EntityExtraction": "kslm.tasks.ner.EntityExtraction",
    "RelationExtraction": "kslm.tasks.re.RelationExtraction",
}
DATA_MODULES = {  # the data module that serves each task (predict without --config)
    "LanguageModel": "kslm.data.lm.LMDataModule",
    "EntityExtraction": "kslm.data.ner.NERDataModule",
    "RelationExtraction": "kslm.data.re.REDataModule",
}


def task_name(class_path: str) -> str:
    """'kslm.tasks.ner.EntityExtraction' (or its short name) → 'EntityExtraction'."""
    return str(class_path).rsplit(".", 1)[-1]


@dataclass
class Payload:
    """Everything a kslm checkpoint holds beside Lightning's own state.

    task: the task's class name (LanguageModel, EntityExtraction, RelationExtraction).
    settings: the task's init arguments (run-time options such as sampling excepted; typed configs as dicts).
    backbone: BackboneConfig as a dict (the vocabulary size resolved), or None for a Hugging Face encoder.
    hf_config: the HF encoder's config dict (extraction tasks over `model.hf_path`), else None.
    tokenizer: the tokenizers JSON.
    labels: entity types (NER) or predicates (RE); None for language models.
    head: the options that shape the head (NER: head, head_size; RE: head_size).
    data: the data module's settings prediction needs (window length, stride, batch size).
    rng: torch's CPU RNG state at the save (rank 0's).
    rngs: every rank's random state at the save, by global rank ({"cpu": …, "cuda": … where a GPU draws}): each rank
        of a resumed run takes its own, so dropout resumes exactly on one process or many (ranks draw differently
        when their batches differ in shape: padded extraction batches).
    """

    task: str
    tokenizer: str
    backbone: Optional[Dict[str, Any]] = None
    hf_config: Optional[Dict[str, Any]] = None
    settings: Dict[str, Any] = field(default_factory=dict)
    labels: Optional[List[str]] = None
    head: Dict[str, Any] = field(default_factory=dict)
    data: Dict[str, Any] = field(default_factory=dict)
    rng: Optional[torch.Tensor] = None
    rngs: Optional[List[Dict[str, torch.Tensor]]] = None
    version: int = FORMAT_VERSION

    # ------------------------------------------------------------ conversion
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any, source="<checkpoint>") -> "Payload":
        """The payload of a checkpoint dict, validated (kslm.checkpoint.schema) before anything uses it."""
        if not isinstance(d, dict) or not isinstance(d.get("tokenizer"), str):
            raise CheckpointError(f"{source}: not a kslm checkpoint (no tokenizer inside)")
        if "version" not in d:  # the payload before it had an owner: flat keys, no task name
            d = _from_unversioned(d, source)
        if isinstance(d.get("version"), int) and d["version"] > FORMAT_VERSION:
            raise CheckpointError(f"{source}: checkpoint format {d['version']} is newer than this kslm's "
                                  f"({FORMAT_VERSION}); upgrade kslm")
        d = {"settings": {}, "head": {}, "data": {}, **d}
        schema.validate(d, source, {f.name for f in fields(cls)})
        if d.get("backbone") is None and d.get("hf_config") is None:
            raise CheckpointError(f"{source}: not a kslm checkpoint (no backbone config inside)")
        if d["task"] != "LanguageModel" and not d.get("labels"):
            raise CheckpointError(f"{source}: a {d['task']} checkpoint without its labels")
        if d.get("backbone") is not None:
            try:
                BackboneConfig.from_dict(d["backbone"])
            except Exception as exc:  # the config's own checks (ConfigError), or a type it cannot compare
                raise CheckpointError(f"{source}: invalid checkpoint payload: backbone: {exc}") from None
        try:
            Tokenizer.from_str(d["tokenizer"])
        except Exception as exc:  # tokenizers raises a bare Exception
            raise CheckpointError(f"{source}: the checkpoint's tokenizer is unreadable ({str(exc).splitlines()[0][:200]})") \
                from None
        return cls(**d)

    # ------------------------------------------------------------- accessors
    @property
    def task_class_path(self) -> str:
        return TASKS[self.task]

    def backbone_config(self) -> BackboneConfig:
        return BackboneConfig.from_dict(self.backbone)

    def load_tokenizer(self) -> Tokenizer:
        return Tokenizer.from_str(self.tokenizer)

    @property
    def max_length(self) -> Optional[int]:
        """The longest sequence the stored backbone accepts (an HF encoder: its max_position_embeddings)."""
        if self.backbone is not None:
            return self.backbone.get("max_length")
        return (self.hf_config or {}).get("max_position_embeddings")

    def predict_config(self) -> Tuple[dict, dict]:
        """(model, data) config sections equivalent to the training config's, for `kslm predict` without --config."""
        model = {"class_path": self.task_class_path, "init_args": {**self.settings}}
        if "backbone" not in model["init_args"] and self.backbone is not None:  # a payload of format 0
            model["init_args"]["backbone"] = dict(self.backbone)
        return model, {"class_path": DATA_MODULES[self.task], "init_args": dict(self.data)}


def _from_unversioned(d: dict, source) -> dict:
    """Checkpoints written before the payload had a format version: {backbone, tokenizer, rng, hf_config?,
    types | predicates, head options}."""
    known = {"backbone", "tokenizer", "rng", "hf_config", "types", "predicates", "head", "head_size"}
    if set(d) - known:
        raise CheckpointError(f"{source}: invalid checkpoint payload: {sorted(set(d) - known)[0]}: not a field of "
                              "kslm's payload")
    task = "EntityExtraction" if "types" in d else "RelationExtraction" if "predicates" in d else "LanguageModel"
    head = {k: d[k] for k in ("head", "head_size") if k in d}
    return {"task": task, "tokenizer": d["tokenizer"], "backbone": d.get("backbone"), "hf_config": d.get("hf_config"),
            "labels": d.get("types", d.get("predicates")), "head": head, "rng": d.get("rng"), "version": 0}


# ---------------------------------------------------------------------------------------------- files


def read_checkpoint(path, field_name: Optional[str] = None) -> dict:
    """The raw checkpoint dict (weights_only loading). Any unreadable file is a one-line CheckpointError. A sharded
    checkpoint folder (FSDP2) reads as its consolidated form: Lightning's state and the payload with whole weights
    (the optimiser's shards stay on disk), through kslm.checkpoint.sharded's safe reader."""
    p = Path(str(path))
    where = f" (field '{field_name}')" if field_name else ""
    if is_sharded(p):
        try:
            return read_sharded(p)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}{where}") from None
    if p.is_dir():
        raise CheckpointError(f"{p}: a folder, not a checkpoint file (a sharded checkpoint folder holds "
                              f"{SHARDED_META}){where}")
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint not found{where}")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and struct errors alike: the file is not a readable checkpoint
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"{p}: cannot read checkpoint ({detail}){where}") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{p}: not a Lightning checkpoint (a {type(ckpt).__name__}, not a dict){where}")
    return ckpt


@dataclass(frozen=True)
class Checkpoint:
    """One kslm checkpoint, read and validated once: its path, whether it is a sharded folder, Lightning's dict
    (whole weights) and the validated payload. `open_checkpoint` builds it."""

    path: Path
    sharded: bool
    raw: dict = field(repr=False)
    payload: Payload = field(repr=False)

    @property
    def state_dict(self) -> dict:
        state = self.raw.get("state_dict")
        return state if isinstance(state, dict) else {}

    def tensors(self, prefix: str) -> Dict[str, torch.Tensor]:
        """The weights under `prefix` (e.g. "backbone."), with the prefix removed."""
        return {k[len(prefix):]: v for k, v in self.state_dict.items() if k.startswith(prefix)}


_OPENED: Dict[tuple, Checkpoint] = {}
# task name → its check of an opened checkpoint (KslmTask.check_checkpoint: settings it takes, weights that fit the
# model built on the meta device); tasks register themselves, so this module imports none of them
TASK_CHECKS: Dict[str, Any] = {}  # the last checkpoints opened in this process, by (path, size, mtime)


def open_checkpoint(path, field_name: Optional[str] = None) -> Checkpoint:
    """The validated Checkpoint of `path`, read once per process (a file changed since is read again): Lightning's
    dict, the payload validated against its schema and — where its task's module is loaded — the task's own check
    (TASK_CHECKS), so a checkpoint that claims a larger model than it holds is refused before anything is built."""
    p = Path(str(path))
    sharded = is_sharded(p)
    try:
        stat = (p / SHARDED_META if sharded else p).stat()
        key = (str(p.resolve()), stat.st_size, stat.st_mtime_ns)
    except OSError:
        key = None
    if key in _OPENED:
        return _OPENED[key]
    raw = read_checkpoint(p, field_name)
    try:
        ckpt = Checkpoint(p, sharded, raw, payload_of(raw, p))
        check = TASK_CHECKS.get(ckpt.payload.task)
        if check is not None:  # the task's own check: its settings, and its shapes on the meta device
            check(ckpt)
    except CheckpointError as exc:
        where = f" (field '{field_name}')" if field_name and "(field '" not in str(exc) else ""
        raise CheckpointError(f"{exc}{where}") from None
    if key is not None:
        _OPENED.clear()  # one at a time: a process works with one checkpoint, and the weights are large
        _OPENED[key] = ckpt
    return ckpt


def forget(ckpt: Checkpoint) -> None:
    """Drop `ckpt` from open_checkpoint's memory: its dict is being handed to another owner (Lightning restores from
    it, and its optimiser state may change in place), so the next opening of the file reads it again."""
    for key, held in list(_OPENED.items()):
        if held is ckpt:
            del _OPENED[key]


def check_shapes(expected: Dict[str, Tuple[int, ...]], state: dict, source, what: str = "the model",
                 field_name: Optional[str] = "ckpt_path") -> None:
    """The stored weights must be exactly those `expected` (name → shape, from a model built on the meta device):
    a checkpoint that claims a larger model than its weights is refused before anything is allocated."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: stored {tuple(state[k].shape)}, described {expected[k]}" for k in expected
              if k in state and isinstance(state[k], torch.Tensor) and tuple(state[k].shape) != expected[k]]
    shapes += [f"{k}: not a tensor" for k in expected if k in state and not isinstance(state[k], torch.Tensor)]
    if missing or unexpected or shapes:
        where = f" (field '{field_name}')" if field_name else ""
        raise CheckpointError(f"{source}: the checkpoint's weights do not fit {what} its payload describes (missing "
                              f"{missing[:3]}, unexpected {unexpected[:3]}, other shapes {shapes[:3]}){where}")


def meta_shapes(module: torch.nn.Module) -> Dict[str, Tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def check_backbone(cfg: BackboneConfig, state: dict, source) -> None:
    """`state` must be exactly the weights of Backbone(cfg), checked on the meta device (nothing allocated)."""
    with torch.device("meta"):
        expected = meta_shapes(Backbone(cfg))
    check_shapes(expected, state, source, "the backbone", None)


def consolidate(src, out=None) -> Path:
    """A sharded checkpoint folder → one kslm checkpoint file (whole weights, Lightning's state, the payload; no
    optimiser state: it is for prediction, export and `--model.pretrained`, not for resuming). `out` defaults to
    SRC's name with `.consolidated.ckpt`. Written atomically; returns its path."""
    from kslm.io import atomic_open

    src = Path(str(src))
    if not is_sharded(src):
        raise CheckpointError(f"{src}: not a sharded checkpoint folder (no {SHARDED_META} inside)")
    ckpt = read_sharded(src)
    payload_of(ckpt, src)  # a kslm checkpoint, or a one-line error
    out = Path(str(out)) if out else src.with_name(f"{src.name.removesuffix('.ckpt')}.consolidated.ckpt")
    with atomic_open(out, "wb") as f:
        torch.save(ckpt, f)
    return out


def payload_of(ckpt: dict, source="<checkpoint>") -> Payload:
    """The payload inside a checkpoint dict (as Lightning hands it to on_load_checkpoint)."""
    if KEY not in ckpt:
        raise CheckpointError(f"{source}: not a kslm checkpoint (no backbone config and tokenizer inside)")
    return Payload.from_dict(ckpt[KEY], source)


def read_payload(path, field_name: Optional[str] = None) -> Payload:
    return open_checkpoint(path, field_name).payload


RESUME_KEYS = ("optimizer_states", "lr_schedulers", "loops")  # what Lightning restores a training run from


def check_restorable(ckpt: dict, source, resume: bool = False, field_name: str = "ckpt_path") -> None:
    """What Lightning needs of a checkpoint it restores: weights (a non-empty dict of tensors) and its version key,
    and to resume training the optimiser, schedule and loop states. A CheckpointError names what is missing."""
    where = f" (field '{field_name}')"
    state = ckpt.get("state_dict")
    if not (isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise CheckpointError(f"{source}: the checkpoint holds no weights (its state_dict is missing, empty or not "
                              f"tensors){where}")
    if "pytorch-lightning_version" not in ckpt:
        raise CheckpointError(f"{source}: not a Lightning checkpoint (no 'pytorch-lightning_version'){where}")
    missing = [k for k in RESUME_KEYS if k not in ckpt] if resume else []
    if "optimizer_states" in missing and is_sharded(source) and holds_optimizer(source):
        missing.remove("optimizer_states")  # the optimiser's shards stay in the folder (FSDP2 resumes from them)
    if missing:
        raise CheckpointError(f"{source}: cannot resume training: the checkpoint holds no {', '.join(missing)} (a "
                              f"weights-only checkpoint?); start a new run from its backbone with --model.pretrained{where}")


def store(ckpt: dict, payload: Payload) -> None:
    """Put `payload` into a checkpoint dict (LightningModule.on_save_checkpoint)."""
    ckpt[KEY] = payload.to_dict()


def load_backbone(path, prefix: str = "backbone.") -> Tuple[BackboneConfig, dict, Tokenizer]:
    """→ (BackboneConfig, backbone state_dict, tokenizer) of a kslm checkpoint with a kslm backbone, its weights
    checked against the config before anything is built."""
    ckpt = open_checkpoint(path)
    payload = ckpt.payload
    if payload.backbone is None:
        raise CheckpointError(f"{path}: the checkpoint's backbone is a Hugging Face encoder, not a kslm backbone")
    cfg, state = payload.backbone_config(), ckpt.tensors(prefix)
    check_backbone(cfg, state, path)
    return cfg, state, payload.load_tokenizer()


__all__ = ["Payload", "Checkpoint", "FORMAT_VERSION", "TASKS", "read_checkpoint", "open_checkpoint", "forget", "read_payload",
           "payload_of", "check_restorable", "check_shapes", "check_backbone", "meta_shapes", "store", "load_backbone",
           "task_name", "is_sharded", "consolidate"]
