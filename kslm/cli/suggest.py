""""Did you mean": jsonargparse's error for a misspelt option, choice value or class name → one line.

jsonargparse reports an unknown key of a subclass-mode argument (`--model.backbone.nrom post`) as a Union dump
('Parser key "model": Does not validate against any of the Union subtypes … unrecognized arguments: …'), an
unknown key in a config file as "Subcommand 'fit' does not accept option …", a bad Literal value with the list of
types it tried. `explain` reads those messages back and says, on one line, what was wrong and the closest valid
spelling (difflib):

    unknown option --model.backbone.nrom (did you mean --model.backbone.norm?)
    configs/my.yaml line 14: unknown option model.bakbone (did you mean model.backbone?)
    --model.backbone.norm psot: not one of pre, post, deepnorm (did you mean post?)

Messages it does not recognise are left to kslm.cli's generic shortening.
"""

import enum
import re
import typing
from difflib import get_close_matches
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

SECTIONS = {"model": "LightningModule", "data": "LightningDataModule"}  # the subclass-mode arguments
_NOT_OPTIONS = ("help", "config", "print_config")


def option_keys(parser) -> List[str]:
    """The dotted keys a jsonargparse parser accepts (`trainer.max_steps`, `model`, `backbone.norm`, …)."""
    keys = []
    for action in getattr(parser, "_actions", []):
        dest = getattr(action, "dest", None)
        if not dest or dest in _NOT_OPTIONS or dest.endswith(".help") or type(action).__name__ == "_ActionConfigLoad":
            continue
        keys.append(dest)
    return keys


def class_parser(class_path: str):
    """A parser of `class_path`'s init arguments (as LightningCLI adds a model / data class), or None."""
    from jsonargparse import ArgumentParser
    from jsonargparse._util import import_object

    try:
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(import_object(class_path), fail_untyped=False)
    except Exception:  # not importable: the class-name check says so
        return None
    return parser


def known_classes(section: str) -> List[str]:
    """The short names of the imported, concrete subclasses a section (model / data) accepts."""
    import lightning.pytorch as pl
    from jsonargparse._typehints import get_all_subclass_paths

    base = pl.LightningModule if section == "model" else pl.LightningDataModule
    names = [p.rsplit(".", 1)[1] for p in get_all_subclass_paths(base)]
    return [n for n in dict.fromkeys(names) if n not in (base.__name__, "KslmTask", "ExtractionTask",
                                                          "KslmDataModule", "ExtractionDataModule")]


def closest(word: str, candidates: Iterable[str], cutoff: float = 0.6) -> Optional[str]:
    hit = get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=cutoff)
    return hit[0] if hit else None


def correct_key(key: str, keys: List[str]) -> Tuple[Optional[str], int]:
    """The valid key closest to `key` and the index of its first misspelt segment. Segment by segment, a misspelt
    group or leaf becomes its closest sibling (`traner.max_step` → trainer.max_steps); failing that, the closest
    key below the good prefix, as a whole or as the only one with a close last segment (`model.nrom` →
    model.backbone.norm). None if none is close (or `key` is valid)."""
    parts = key.split(".")
    fixed: List[str] = []
    first_bad = None
    for i, part in enumerate(parts):
        prefix = ".".join(fixed)
        if prefix in keys:  # a leaf with segments left (a dict or class value): below it nothing can be checked
            fixed.extend(parts[i:])
            break
        level = list(dict.fromkeys(k[len(prefix) + 1:].split(".")[0] if prefix else k.split(".")[0]
                                   for k in keys if not prefix or k.startswith(prefix + ".")))
        if part not in level:
            hit = closest(part, level)
            if hit is None:  # the rest as a whole, or by its last segment, among the keys below the good prefix
                below = [k[len(prefix) + 1:] if prefix else k for k in keys if not prefix or k.startswith(prefix + ".")]
                rest = closest(".".join(parts[i:]), below, 0.75) or _by_leaf(parts[-1], below)
                fix = ".".join([*fixed, rest]) if rest else None
                return fix, i if first_bad is None else first_bad
            first_bad = i if first_bad is None else first_bad
            part = hit
        fixed.append(part)
    return (".".join(fixed) if first_bad is not None else None), (len(parts) if first_bad is None else first_bad)


def _by_leaf(leaf: str, keys: List[str]) -> Optional[str]:
    """A key whose last segment is the only one close to `leaf` (`--model.nrom` → model.backbone.norm)."""
    leaves = {}
    for k in keys:
        leaves.setdefault(k.rsplit(".", 1)[-1], []).append(k)
    hit = closest(leaf, leaves)
    return leaves[hit][0] if hit is not None and len(leaves[hit]) == 1 else None


# ------------------------------------------------------------------ where a key was given
def config_files(argv: List[str]) -> List[Tuple[str, str]]:
    """(section prefix, file) for each config file on the command line, in order (`--config F` → "", `--model F`
    → "model")."""
    from kslm.cli.argv import CONFIG_OPTIONS

    out = []
    for i, a in enumerate(argv):
        name, value = a.split("=", 1) if a.startswith("--") and "=" in a else (a, argv[i + 1] if i + 1 < len(argv) else None)
        if name in CONFIG_OPTIONS and value and Path(value).is_file():
            out.append(("" if name in ("-c", "--config") else name[2:], value))
    return out


def _yaml_line(path: str, parts: List[str], value=None) -> Optional[int]:
    """The 1-based line of key `parts` in a YAML file (class_path / init_args levels looked through), or None;
    with `value`, only where the key holds that value."""
    import yaml

    try:
        node = yaml.compose(Path(path).read_text(encoding="utf-8"))
    except Exception:
        return None
    line = None
    for part in parts:
        if not isinstance(node, yaml.MappingNode):
            return None
        found = dict((k.value, (k, v)) for k, v in node.value if isinstance(k, yaml.ScalarNode))
        if part not in found and "init_args" in found:
            found = dict((k.value, (k, v)) for k, v in found["init_args"][1].value if isinstance(k, yaml.ScalarNode)) \
                if isinstance(found["init_args"][1], yaml.MappingNode) else {}
        if part not in found:
            return None
        key_node, node = found[part]
        line = key_node.start_mark.line + 1
    if value is not None and not (isinstance(node, yaml.ScalarNode) and node.value == str(value)):
        return None
    return line


def on_command_line(key: str, argv: List[str]) -> bool:
    return any(a == f"--{key}" or a.startswith(f"--{key}=") for a in argv)


def where(key: str, argv: List[str], value=None) -> Optional[str]:
    """'FILE line N' for the last config file on the command line that sets `key` (to `value`), else None."""
    found = None
    for prefix, path in config_files(argv):
        parts = key.split(".")
        if prefix:
            if parts[0] != prefix:
                continue
            parts = parts[1:]
        line = _yaml_line(path, parts, value)
        if line is not None:
            found = f"{path} line {line}"
    return found


# ------------------------------------------------------------------ the three kinds of mistake
def unknown_option(key: str, keys: List[str], argv: List[str], help_hint: str) -> str:
    """One phrase for an unknown dotted option `key` (valid ones: `keys`): typed as `--key`, or found in a config
    file (named with its line; the key shown down to its first misspelt level)."""
    fix, bad = correct_key(key, keys)
    dash, place = "--", ""
    if not on_command_line(key, argv) and config_files(argv):
        depth = min(bad + 1, len(key.split(".")))
        key, fix = ".".join(key.split(".")[:depth]), ".".join(fix.split(".")[:depth]) if fix else None
        found = where(key, argv)
        dash, place = "", f"{found}: " if found else ""
    hint = f"did you mean {dash}{fix}?" if fix else f"see {help_hint}"
    if key.split(".")[0] in LIGHTNING_OPTIM:  # Lightning's own optimiser options, which kslm does not offer
        hint = "kslm's optimiser and schedule are --model.optim: --model.optim.name adamw|amos|amos_adamw|eg_adamw, " \
               "--model.optim.lr, --model.optim.schedule cosine|linear|constant"
    return f"{place}unknown option {dash}{key} ({hint})"


LIGHTNING_OPTIM = ("optimizer", "lr_scheduler")


def choices_of(typehint) -> List:
    """The values a Literal / Enum type (or a Union / Optional of them) allows; [] for any other type."""
    if isinstance(typehint, type) and issubclass(typehint, enum.Enum):
        return [m.name for m in typehint]
    if typing.get_origin(typehint) is typing.Literal:
        return list(typing.get_args(typehint))
    if typing.get_origin(typehint) is typing.Union:
        return [c for arg in typing.get_args(typehint) for c in choices_of(arg)]
    return []


def bad_choice(key: str, value: str, choices: List, argv: List[str]) -> str:
    names = list(dict.fromkeys(str(c) for c in choices))
    fix = closest(value, names, 0.5)
    place = None if on_command_line(key, argv) else where(key, argv, value)
    said = f"{place}: {key} {value}" if place else f"--{key} {value}"
    return f"{said}: not one of {', '.join(names)}" + (f" (did you mean {fix}?)" if fix else "")


def bad_class(option: str, name: str, argv: List[str]) -> str:
    """`option` is model / data (or model.help / data.help)."""
    section = option.split(".")[0]
    known = known_classes(section)
    fix = closest(name.rsplit(".", 1)[-1], known)
    place = None if on_command_line(option, argv) else where(f"{section}.class_path", argv)
    said = f"{place}: {section}.class_path {name}" if place else f"--{option} {name}"
    hint = f"did you mean {fix}? " if fix else ""
    return f"{said}: no such {section} class ({hint}kslm's are {', '.join(known)})"


def explain(message: str, parser, argv: List[str], subcommand: Optional[str]) -> Optional[str]:
    """The one line for a misspelling jsonargparse reported in `message` (the subcommand's parser: `parser`), or
    None when the message is about something else."""
    text = re.sub(r"\s+", " ", message).strip()
    sub = subcommand or "fit"
    keys = option_keys(parser)
    option = re.match(r'Parser key "(model|data)"', text) or re.match(r"--((?:model|data)\.help):", text)
    option = option.group(1) if option else None
    section = option.split(".")[0] if option else None
    # a class name: `--model LanguagModel`, `--model.help LanguagModel`, `class_path: kslm.tasks.lm.LanguagModel`
    m = re.search(r"Expected a dot import path string: (\S+)", text) or \
        re.search(r"Problem with given class_path '([^']+)': module '[^']+' has no attribute", text)
    if section and m:
        return bad_class(option, m.group(1), argv)
    # an unknown key inside the model / data class
    m = re.search(r"Problem with given class_path '([^']+)': (?:unrecognized arguments: (--\S+)|Option '([^']+)' is "
                  r"not accepted|Group '([^']+)' does not accept option '([^']+)')", text)
    if section and m:
        class_path = m.group(1)
        inner = (m.group(2) or "").lstrip("-").split("=")[0] or m.group(3) or f"{m.group(4)}.{m.group(5)}"
        key = f"{section}.{inner}"
        if class_path.rsplit(".", 1)[-1] == SECTIONS[section]:
            return (f"--{key}: no {section} class given before it; give --config FILE or --{section} CLASS "
                    f"(one of {', '.join(known_classes(section))}) first")
        inner_parser = class_parser(class_path)
        if inner_parser is None:
            return None
        class_keys = [f"{section}.{k}" for k in option_keys(inner_parser)]
        short = class_path.rsplit(".", 1)[-1]
        return unknown_option(key, class_keys, argv, f"kslm {sub} --{section}.help {short}")
    # an unknown top-level key: on the command line, or in a config file
    m = re.search(r"unrecognized arguments: (.*)$", text)
    if m and not section:
        unknown = [t.lstrip("-").split("=")[0] for t in m.group(1).split() if t.startswith("--")]
        if unknown:
            return "; ".join(unknown_option(k, keys, argv, f"kslm {sub} --help") for k in unknown)
    m = re.search(r"Subcommand '[^']+' does not accept (?:nested key|option) '([^']+)'", text)
    if m:
        return unknown_option(m.group(1), keys, argv, f"kslm {sub} --help")
    m = re.search(r"argument subcommand: invalid choice: '([^']+)' \(choose from (.*)\)", text)
    if m:
        options = re.findall(r"'([^']+)'", m.group(2))
        fix = closest(m.group(1), options)
        return f"kslm {m.group(1)}: no such command (one of {', '.join(options)}" + \
            (f"; did you mean kslm {fix}?)" if fix else ")")
    # a value that is not one of a Literal's choices
    if "Literal[" in text:
        return _literal_error(text, parser, argv, section)
    return None


def explain_parse_error(exc: BaseException, parser, subcommand_parsers: dict, argv: List[str]) -> Optional[str]:
    """`explain` for a parse error of the CLI (`parser`: the main parser; `subcommand_parsers`: fit's, …); None,
    never an exception of its own, when it cannot say more than jsonargparse's message."""
    sub = argv[0] if argv and argv[0] in subcommand_parsers else None
    try:
        return explain(str(exc), subcommand_parsers.get(sub, parser), argv, sub)
    except Exception:  # the message's form changed (a jsonargparse update): keep its own text
        return None


def _literal_error(text: str, parser, argv: List[str], section: Optional[str]) -> Optional[str]:
    chain = re.findall(r'Parser key "([^"]+)"', text)
    given = re.findall(r"(?:Got value|Given value): (.*?)(?: - |$)", text)
    if not chain or not given:
        return None
    key = ".".join(chain)
    value = given[0].strip() if section else given[-1].strip()
    typehint = None
    if section:
        m = re.search(r"Problem with given class_path '([^']+)'", text)
        inner = class_parser(m.group(1)) if m else None
        actions = getattr(inner, "_actions", []) if inner is not None else []
        inner_key = key[len(section) + 1:]
    else:
        actions, inner_key = getattr(parser, "_actions", []), key
    for action in actions:
        if getattr(action, "dest", None) == inner_key:
            typehint = getattr(action, "_typehint", None)
    choices = choices_of(typehint) if typehint is not None else []
    if not choices:  # from the message: every Literal[...] it lists
        import ast

        for group in re.findall(r"Literal\[([^\]]*)\]", text):
            try:
                choices.extend(ast.literal_eval(f"[{group}]"))
            except (ValueError, SyntaxError):
                return None
    return bad_choice(key, value, choices, argv) if choices else None


__all__ = ["explain", "explain_parse_error", "option_keys", "correct_key", "choices_of", "known_classes"]
