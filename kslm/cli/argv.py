"""The raw command line meets a checkpoint: the model / data sections a checkpoint supplies when no --config is
given, the model options the user typed (to refuse those a checkpoint fixes), and config files read as UTF-8 before
jsonargparse sees them. Used by kslm.cli before the classes are built."""

import copy
import json
from pathlib import Path
from typing import Optional, Tuple

from jsonargparse import Namespace

from kslm.checkpoint import Checkpoint, open_checkpoint
from kslm.errors import CheckpointError, ConfigError

LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")  # ckpt_path values Lightning resolves itself
RESTORED_ON_RESUME = ("optim",)  # fit --ckpt_path restores the optimiser and its schedule exactly
_MISSING = object()
CONFIG_OPTIONS = ("-c", "--config", "--model", "--data", "--trainer", "--checkpoint", "--predictions")  # take a file


def _option(argv, *names) -> Optional[str]:
    """The value of `--name VALUE` or `--name=VALUE` in argv (the last one given), else None."""
    value = None
    for i, a in enumerate(argv):
        for n in names:
            if a == n and i + 1 < len(argv):
                value = argv[i + 1]
            elif a.startswith(n + "="):
                value = a[len(n) + 1:]
    return value


def checkpoint_config_args(argv: list) -> Tuple[list, Optional[Checkpoint]]:
    """`kslm predict|validate|test --ckpt_path X` without --config or --model: the checkpoint knows its task, its
    settings and its data settings; they become the --model / --data sections (later options still override).
    Returns the command line and the checkpoint opened for it (None when it was not needed), which the CLI keeps."""
    if not argv or argv[0] not in ("validate", "test", "predict"):
        return argv, None
    rest = argv[1:]
    if any(a in ("-c", "--config", "--model") or a.startswith(("--config=", "--model=")) for a in rest):
        return argv, None
    ckpt = _option(rest, "--ckpt_path")
    if ckpt == "last":  # the latest run's last checkpoint: without a config, the run is named on the command line
        name = _option(rest, "--name")
        if not name:
            raise ConfigError("--ckpt_path last without --config: name the run (--name NAME reads "
                              "checkpoints/NAME/last.ckpt), or give the checkpoint file (field 'ckpt_path')")
        ckpt = str(Path("checkpoints") / name / "last.ckpt")
        if not Path(ckpt).is_file():
            raise CheckpointError(f"{ckpt}: checkpoint not found (--ckpt_path last --name {name}: run {name!r} has "
                                  "saved none here) (field 'ckpt_path')")
        rest = [ckpt if a == "last" and i and rest[i - 1] == "--ckpt_path" else
                f"--ckpt_path={ckpt}" if a == "--ckpt_path=last" else a for i, a in enumerate(rest)]
    if not ckpt or ckpt in LIGHTNING_CKPT_NAMES:
        return argv, None
    refuse_sharded(ckpt, argv[0], None)
    opened = open_checkpoint(ckpt, "ckpt_path")
    payload = opened.payload
    model, data = payload.predict_config()
    given_data = any(a == "--data" or a.startswith("--data=") for a in rest)
    corpus = ("--data.data_files", "--data.dataset") + (("--data.test_file",) if argv[0] == "test" else ())
    if argv[0] != "predict" and payload.task == "LanguageModel" and not given_data and \
            not any(a.split("=")[0] in corpus for a in rest):
        import sys

        print(f"kslm: note: a checkpoint holds no data paths: without --config, kslm {argv[0]} reads the embedded "
              "corpus (give --data.data_files, or the training config)", file=sys.stderr)
    injected = ["--model", json.dumps(model)] + ([] if given_data else ["--data", json.dumps(data)])
    return [argv[0], *injected, *rest], opened


def refuse_sharded(ckpt, sub: str, strategy) -> None:
    """A sharded checkpoint folder is read only to resume `fit --trainer.strategy fsdp2`; anything else is refused
    before a byte of the folder is read."""
    from kslm.checkpoint import is_sharded
    from kslm.cli.strategy import NAME as FSDP2

    if is_sharded(ckpt) and not (sub == "fit" and strategy == FSDP2):
        what = f"resume from it with --trainer.strategy {FSDP2}, or" if sub == "fit" else f"kslm {sub} takes"
        raise CheckpointError(f"{ckpt}: a sharded checkpoint (folder): {what} its consolidated file (kslm fit "
                              f"writes one beside it; `kslm consolidate {ckpt}` makes one) (field 'ckpt_path')")


def nested_nulls(argv: list) -> Tuple[list, list]:
    """`--model.optim.total_steps null` (any empty value: null, ~, Null) as `--model.optim '{"total_steps": null}'`:
    jsonargparse takes a null for a field of a nested dataclass only inside its section's dict (on the dotted form
    it refuses the value as "not an int"); the dict form merges with what the config and earlier options set. It
    does not check the field's type there, so the dotted keys rewritten come back too, for `check_nulls`."""
    import yaml

    out, keys, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        if "=" in a:
            (name, value), step = a.split("=", 1), 1
        else:
            name, value, step = a, argv[i + 1] if i + 1 < len(argv) else None, 2
        parts = name[2:].split(".") if name.startswith(("--model.", "--data.")) else []
        if parts[1:2] == ["init_args"]:
            parts = [parts[0], *parts[2:]]
        if len(parts) >= 3 and value is not None and _yaml_null(yaml, value):
            tree: dict = {}
            _assign(tree, ".".join(parts[2:]), None)
            out.extend([f"--{parts[0]}.{parts[1]}", json.dumps(tree)])
            keys.append(".".join(parts))
            i += step
            continue
        out.append(a)
        i += 1
    return out, keys


def check_nulls(cfg, keys: list) -> None:
    """A null given (through `nested_nulls`) to a dataclass field that does not take one: a one-line error."""
    import dataclasses
    import importlib
    import typing

    for key in keys:
        section, group, *rest = key.split(".")
        class_path = _lookup(cfg, f"{section}.class_path") if cfg is not None else _MISSING
        if not isinstance(class_path, str) or "." not in class_path or len(rest) != 1:
            continue
        module, _, name = class_path.rpartition(".")
        try:
            classes = getattr(importlib.import_module(module), name).__mro__
            owner = next((h[group] for h in map(_init_hints, classes) if group in h), None)
        except (ImportError, AttributeError):
            continue
        if not dataclasses.is_dataclass(owner):
            continue
        hint = typing.get_type_hints(owner).get(rest[0])
        if hint is not None and hint is not typing.Any and type(None) not in typing.get_args(hint):
            shown = getattr(hint, "__name__", str(hint))
            raise ConfigError(f"{key}: expected {shown}, got null")


def _init_hints(cls) -> dict:
    import typing

    try:
        return typing.get_type_hints(cls.__init__)
    except (NameError, TypeError):
        return {}


def _yaml_null(yaml, value: str) -> bool:
    try:
        return yaml.safe_load(value) is None and value.strip() != ""
    except yaml.YAMLError:
        return False


def check_config_files(argv) -> None:
    """Config files named on the command line (`--config F`, `--model F`, …) must be UTF-8: a one-line error naming
    the file, line and column of the first bad byte (jsonargparse would end in a UnicodeDecodeError)."""
    from kslm.data.formats.jsonl import check_utf8_file

    for i, a in enumerate(argv):
        if a.startswith("--") and "=" in a:
            name, value = a.split("=", 1)
        elif i + 1 < len(argv) and a.startswith("-"):
            name, value = a, argv[i + 1]
        else:
            continue
        config = name in CONFIG_OPTIONS or Path(value).suffix in (".yaml", ".yml")
        if config and Path(value).is_file():
            check_utf8_file(value)
            check_unique_keys(value)


def check_unique_keys(path) -> None:
    """A key given twice in one mapping of a YAML config is a one-line error naming both lines (YAML loaders keep the
    last silently: a recipe edited by appending would run with a value the reader does not see first)."""
    import yaml

    try:
        root = yaml.compose(Path(path).read_text(encoding="utf-8-sig"))
    except yaml.YAMLError:
        return  # jsonargparse reports the syntax error with its position
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    line = key.start_mark.line + 1
                    if key.value in seen:
                        raise ConfigError(f"{path}:{line}: key '{key.value}' given twice in one mapping (first at line "
                                          f"{seen[key.value]}); keep one")
                    seen[key.value] = line
                stack.append(value)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def given_model_options(argv) -> list:
    """The model options (dotted, under init_args) set on the command line: `--model.optim.lr 0.5` → optim.lr;
    `--model.backbone '{"d_model": 64}'` → backbone.d_model."""
    import yaml

    keys = []
    for i, a in enumerate(argv):
        if not a.startswith("--model."):
            continue
        if "=" in a:
            name, value = a.split("=", 1)
        else:
            name, value = a, argv[i + 1] if i + 1 < len(argv) else None
        key = name[len("--model."):]
        key = key[len("init_args."):] if key.startswith("init_args.") else key
        if key in ("class_path", "help"):
            continue
        try:
            parsed = yaml.safe_load(value) if value is not None else None
        except yaml.YAMLError:
            parsed = None
        keys.extend(_leaves(parsed, key + ".") if isinstance(parsed, dict) and parsed else [key])
    return list(dict.fromkeys(keys))


def _leaves(d: dict, prefix: str = "") -> list:
    """Dotted keys of the leaves of a nested dict."""
    out = []
    for k, v in d.items():
        out.extend(_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [f"{prefix}{k}"])
    return out


def _lookup(tree, key: str):
    for part in key.split("."):
        if isinstance(tree, Namespace):
            tree = tree.as_dict()
        if not isinstance(tree, dict) or part not in tree:
            return _MISSING
        tree = tree[part]
    return tree.as_dict() if isinstance(tree, Namespace) else tree


def _assign(tree: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = value


def _plain(value):
    """A value as JSON would hold it (tuples as lists), for comparing a parsed option with a checkpoint's setting."""
    return json.loads(json.dumps(value, default=str))


def checkpoint_model_config(payload, given: list, configured, sub: str, ckpt) -> dict:
    """The model section for a run from `ckpt`: the checkpoint's settings, with the command-line options `given`
    (their parsed values in `configured`, the model's init_args) applied where they can be. An option that shapes
    the weights (the task's `weight_options`) — or, for fit, the optimiser and schedule the resume restores — with a
    value other than the checkpoint's is refused: one line lists them all."""
    import importlib

    module, _, name = payload.task_class_path.rpartition(".")
    fixed = getattr(importlib.import_module(module), name).weight_options
    model, _ = payload.predict_config()
    settings = model["init_args"] = copy.deepcopy(model["init_args"])  # applied options must not edit the payload
    refused, restored = [], False
    for key in given:
        new, old = _lookup(configured, key), _lookup(settings, key)
        if new is _MISSING or old is _MISSING or _plain(new) == _plain(old):
            continue  # not recorded in the checkpoint (a run-time option): the command line stands as it is
        top = key.split(".")[0]
        if top in fixed or (sub == "fit" and top in RESTORED_ON_RESUME):
            refused.append(f"model.{key} (checkpoint {_plain(old)!r}, given {_plain(new)!r})")
            restored = restored or top in RESTORED_ON_RESUME
        else:
            _assign(settings, key, new)
    if refused:
        what = "the weights and, resuming, the optimiser and its schedule" if restored else "the weights"
        raise CheckpointError(f"{ckpt}: these options cannot change with --ckpt_path, which fixes {what}: "
                              f"{'; '.join(refused)} (drop them, or train a new model) (field 'ckpt_path')")
    return model


__all__ = ["LIGHTNING_CKPT_NAMES", "checkpoint_config_args", "check_config_files", "check_unique_keys", "given_model_options",
           "checkpoint_model_config", "nested_nulls", "check_nulls"]
