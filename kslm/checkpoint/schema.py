"""The schema of kslm's checkpoint payload (and of an export's kslm.json): what a stranger's file may hold.

A payload is data: plain JSON values (None, bool, int, float, str, lists, dicts with str (or int) keys), nested at most
MAX_DEPTH deep, with no `class_path` / `init_args` key anywhere (jsonargparse would import the class it names), the
typed configs (backbone, optim, penalty) with their own fields and types, labels as non-empty distinct strings and
data settings that are positive integers of known names (window, stride, batch size) — never a path, so a
checkpoint cannot choose where kslm writes or what it reads. `validate` raises one CheckpointError naming the field.
"""

import math
import typing
from typing import Any, Literal

import torch

from kslm.errors import CheckpointError
from kslm.nn import BackboneConfig
from kslm.optim import OptimConfig, PenaltyConfig

MAX_DEPTH = 32
FORBIDDEN_KEYS = ("class_path", "init_args", "dict_kwargs", "__path__")  # jsonargparse's subclass / path specs
DATA_KEYS = {  # the data settings prediction takes from a checkpoint (all positive ints or null)
    "LanguageModel": ("seq_len", "batch_size"),
    "EntityExtraction": ("max_length", "stride", "batch_size"),
    "RelationExtraction": ("max_length", "stride", "batch_size"),
}
CONFIGS = {"backbone": BackboneConfig, "optim": OptimConfig, "penalty": PenaltyConfig}
_COMMON = ("backbone", "optim", "penalty", "pretrained", "hf_path")
SETTINGS = {  # the init arguments each task records (its run-time options apart); tests/test_payload_schema.py keeps
    # these equal to the tasks' signatures
    "LanguageModel": (*_COMMON, "mlm_probability", "seed", "aux_objective", "aux_weight", "heat_mode"),
    "EntityExtraction": (*_COMMON, "head", "head_size", "types", "loss", "token_dropout"),
    "RelationExtraction": (*_COMMON, "head_size", "predicates", "loss", "token_dropout"),
}
HEAD = {"LanguageModel": (), "EntityExtraction": ("head", "head_size"), "RelationExtraction": ("head_size",)}


def fail(source, where: str, message: str):
    raise CheckpointError(f"{source}: invalid checkpoint payload: {where}: {message}")


def check_plain(value, source, where: str, depth: int = 0) -> None:
    """`value` is a plain JSON value (tuples count as lists) without jsonargparse's class specs."""
    if depth > MAX_DEPTH:
        fail(source, where, f"nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            fail(source, where, f"{value} is not a finite number")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_plain(v, source, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):  # (HF configs' id2label has int keys)
                fail(source, where, f"a key {k!r} that is not a string")
            if k in FORBIDDEN_KEYS:
                fail(source, f"{where}.{k}", "a class or path specification, which a checkpoint may not hold")
            check_plain(v, source, f"{where}.{k}", depth + 1)
        return
    fail(source, where, f"a {type(value).__name__}, not a plain JSON value")


def _fits(value, hint) -> bool:
    """Whether a plain value fits a dataclass field's annotation (int, float, bool, str, Optional, Literal,
    Tuple, Dict, Any)."""
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return any(_fits(value, a) for a in args)
    if origin is Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args, strict=True))
        return all(_fits(v, args[0]) for v in value) if args else True
    if origin is dict:
        return isinstance(value, dict)
    return False


def check_config(cls, value, source, where: str) -> None:
    """A typed config (BackboneConfig, OptimConfig, PenaltyConfig) as a dict: known fields of the right types."""
    if not isinstance(value, dict):
        fail(source, where, f"a {type(value).__name__}, not a {cls.__name__} dict")
    hints = typing.get_type_hints(cls)
    for k, v in value.items():
        if k not in hints:
            fail(source, f"{where}.{k}", f"not a field of {cls.__name__}")
        if not _fits(v, hints[k]):
            fail(source, f"{where}.{k}", f"{v!r} does not fit its type")


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def validate(d: dict, source, payload_fields) -> None:
    """The payload dict `d` (format 0 already converted) against the schema; `payload_fields` are its known keys."""
    unknown = sorted(set(d) - set(payload_fields))
    if unknown:
        fail(source, unknown[0], "not a field of kslm's payload")
    if not isinstance(d.get("version"), int) or isinstance(d.get("version"), bool):
        fail(source, "version", "not an integer")
    task = d.get("task")
    if task not in DATA_KEYS:
        raise CheckpointError(f"{source}: unknown task {task!r} in the checkpoint")
    for name in ("backbone", "hf_config", "settings", "labels", "head", "data"):
        check_plain(d.get(name), source, name)
    if d.get("backbone") is not None:
        check_config(BackboneConfig, d["backbone"], source, "backbone")
    hf = d.get("hf_config")
    if hf is not None and not (isinstance(hf, dict) and isinstance(hf.get("model_type"), str)):
        fail(source, "hf_config", "not a Hugging Face config (a dict with its model_type)")
    settings = d.get("settings")
    if not isinstance(settings, dict):
        fail(source, "settings", "not a dict")
    for key in settings:
        if key not in SETTINGS[task]:
            fail(source, f"settings.{key}", f"not an option of {task}")
    for name, cls in CONFIGS.items():
        if settings.get(name) is not None:
            check_config(cls, settings[name], source, f"settings.{name}")
    labels = d.get("labels")
    if labels is not None:
        if not isinstance(labels, list) or not all(isinstance(x, str) and x.strip() for x in labels):
            fail(source, "labels", "not a list of non-empty names")
        if len(set(labels)) != len(labels):
            fail(source, "labels", "a name listed twice")
    if not isinstance(d.get("head"), dict):
        fail(source, "head", "not a dict")
    for key, value in d["head"].items():
        if key not in HEAD[task]:
            fail(source, f"head.{key}", f"not a head option of {task}")
        if key in settings and settings[key] != value:
            fail(source, f"head.{key}", f"{value!r} differs from settings.{key} {settings[key]!r}")
    data = d.get("data")
    if not isinstance(data, dict):
        fail(source, "data", "not a dict")
    for k, v in data.items():
        if k not in DATA_KEYS[task]:
            fail(source, f"data.{k}", f"not a data setting a checkpoint may hold ({', '.join(DATA_KEYS[task])}): "
                 "files and folders come from the command line or the config")
        if v is not None and not _positive_int(v):
            fail(source, f"data.{k}", f"{v!r} is not a positive integer")
    if d.get("rng") is not None and not isinstance(d["rng"], torch.Tensor):
        fail(source, "rng", "not a tensor")
    rngs = d.get("rngs")
    if rngs is not None and not (isinstance(rngs, list) and all(
            isinstance(r, dict) and all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in r.items())
            for r in rngs)):
        fail(source, "rngs", "not a list of random states")


__all__ = ["validate", "check_plain", "check_config", "DATA_KEYS", "SETTINGS", "HEAD", "FORBIDDEN_KEYS", "MAX_DEPTH"]
