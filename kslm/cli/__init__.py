"""The front door: `kslm VERB [options]`. One verb table (VERBS) names each verb, its one-line summary and the
function that runs it, imported only when it runs: `kslm --help`, `kslm --version`, `kslm VERB --help` and a
misspelt verb answer without importing torch or Lightning (the console script `kslm = kslm.cli:main`).

Exit codes, whatever the verb: a user mistake is one line `kslm: error: …` and 2; a DDP rank that lost another rank
says so in one line and exits 1; Ctrl-C exits 130 and SIGTERM 143 (a fit saves a resumable checkpoint first).
"""

import importlib
import re
import signal
import sys
from typing import NamedTuple, Optional


class Verb(NamedTuple):
    name: str
    summary: str  # one line in `kslm --help`
    entry: str  # "module:function", imported when the verb runs
    trainer: bool = False  # a LightningCLI subcommand: the function takes the whole command line, verb included


VERBS = (
    Verb("fit", "train a model, or resume a run (--ckpt_path)", "kslm.cli.trainer:run", True),
    Verb("validate", "evaluate a checkpoint on validation data", "kslm.cli.trainer:run", True),
    Verb("test", "evaluate a checkpoint on a labelled test file", "kslm.cli.trainer:run", True),
    Verb("predict", "predict with a checkpoint: entities, triples, LM generations, NBCE answers", "kslm.cli.trainer:run",
         True),
    Verb("score", "score a predictions file against gold records (P / R / F1 per label)", "kslm.cli.score:main"),
    Verb("export", "write a checkpoint as a Hugging Face directory", "kslm.cli.verbs:export_main"),
    Verb("consolidate", "merge a sharded (fsdp2) checkpoint folder into one checkpoint file", "kslm.cli.verbs:consolidate_main"),
    Verb("serve", "serve a model over HTTP (LitServe): POST /predict, GET /health, GET /info", "kslm.cli.verbs:serve_main"),
)
BY_NAME = {v.name: v for v in VERBS}
HELP_ALL = "--help-all"  # `kslm VERB --help-all`: Lightning's full option list


def top_help() -> str:
    width = max(len(v.name) for v in VERBS) + 2
    rows = "\n".join(f"  {v.name:<{width}}{v.summary}" for v in VERBS)
    return f"""usage: kslm VERB [options]          kslm VERB --help: the verb's options

Su Jianlin's (kexue.fm) techniques as a PyTorch Lightning application.

verbs:
{rows}

options:
  -h, --help   this list
  --version    kslm's version (and torch's, Lightning's)

Start with: kslm fit --config configs/lm/gau.yaml"""


def version_line() -> str:
    """kslm's version, and the versions of what it runs on (from the installed metadata: nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    from kslm._version import __version__

    deps = []
    for name in ("torch", "lightning"):
        try:
            deps.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            deps.append(f"{name} not installed")
    return f"kslm {__version__} ({', '.join(deps)}, Python {sys.version.split()[0]})"


def unknown_verb(word: str) -> str:
    from difflib import get_close_matches

    names = [v.name for v in VERBS]
    fix = get_close_matches(word, names, n=1, cutoff=0.6)
    if word.startswith("-"):
        return f"{word}: the verb comes first: kslm VERB [options] (one of {', '.join(names)}; kslm --help)"
    return f"kslm {word}: no such command (one of {', '.join(names)}" + (f"; did you mean kslm {fix[0]}?)" if fix else ")")


def _entry(verb: Verb):
    module, _, function = verb.entry.partition(":")
    return getattr(importlib.import_module(module), function)


def main(args=None):
    """`kslm …` (the console script). `args`: the command line without the program name (default sys.argv[1:]),
    or a dict of a trainer verb's config (LightningCLI's dict form, verb under "subcommand")."""
    try:
        return _main(args)
    except BrokenPipeError:  # `kslm … | head`: the reader has gone; no traceback, and none at exit either
        _broken_pipe()


def _broken_pipe():
    import os

    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(128 + signal.SIGPIPE)


def _main(args):
    argv = None if isinstance(args, dict) else list(sys.argv[1:] if args is None else args)
    if argv is not None:
        if not argv or argv[0] in ("-h", "--help"):
            print(top_help())
            return None
        if argv[0] == "--version":
            print(version_line())
            return None
        if argv[0] not in BY_NAME:
            print(f"kslm: error: {unknown_verb(argv[0])}", file=sys.stderr)
            sys.exit(2)
    verb = BY_NAME[argv[0] if argv is not None else args.get("subcommand", "fit")]
    if verb.trainer and argv is not None and any(a in ("-h", "--help") for a in argv[1:]):
        from kslm.cli.help import verb_help

        print(verb_help(verb.name))
        return None
    sigint = signal.getsignal(signal.SIGINT)
    try:
        if verb.trainer:
            return _entry(verb)(args if argv is None else argv)
        return _entry(verb)(argv[1:])
    except BaseException as exc:  # noqa: B036 (every way out becomes its exit code and at most one line)
        _exit(exc)
    finally:  # Lightning ignores SIGINT once it has caught one; a later command in this process gets it back
        if signal.getsignal(signal.SIGINT) != sigint:
            signal.signal(signal.SIGINT, sigint)


def _exit(exc: BaseException):
    """How `exc` leaves kslm: its exit code and at most one line; a bug keeps its traceback (re-raised)."""
    from kslm.cli.interrupt import Interrupted
    from kslm.errors import kslm_cause

    if isinstance(exc, BrokenPipeError):
        _broken_pipe()
    if isinstance(exc, Interrupted):  # a fit stopped by Ctrl-C / SIGTERM after saving its checkpoint (every rank)
        if exc.rank == 0:
            print(f"kslm: {exc}", file=sys.stderr)
        sys.exit(exc.code)
    if isinstance(exc, SystemExit):
        if _keyboard_interrupt(exc):  # Lightning's way out of a Ctrl-C (exit 1) is kslm's 130
            print("kslm: interrupted", file=sys.stderr)
            sys.exit(130)
        raise exc
    if isinstance(exc, KeyboardInterrupt):
        print("kslm: interrupted", file=sys.stderr)
        sys.exit(130)
    if _sigterm(exc):
        print("kslm: stopped by SIGTERM", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
    if not isinstance(exc, Exception):
        raise exc
    cause, line = kslm_cause(exc), _rank_failure_line(exc)
    if line is not None:
        print(f"kslm: error: {line}", file=sys.stderr)
        sys.exit(1)
    if cause is None:
        raise exc
    print(f"kslm: error: {_one_line(str(cause))}", file=sys.stderr)
    sys.exit(2)


def _keyboard_interrupt(exc: SystemExit) -> bool:
    """Lightning catches a KeyboardInterrupt inside Trainer.fit / validate / test / predict and exits with 1."""
    context = exc.__context__
    return exc.code == 1 and isinstance(context, KeyboardInterrupt)


def _sigterm(exc: BaseException) -> bool:
    from kslm.io import Terminated

    if isinstance(exc, Terminated):
        return True
    lightning = sys.modules.get("lightning.pytorch.utilities.exceptions")
    return lightning is not None and isinstance(exc, lightning.SIGTERMException)


def _one_line(message: str) -> str:
    return re.sub(r"\s+", " ", message).strip()


def _rank_failure_line(exc: BaseException) -> Optional[str]:
    """A collective that failed because another DDP rank died (gloo / NCCL: connection closed, reset, timed out) →
    one line naming this rank and the lost one; None for any other error."""
    if not isinstance(exc, RuntimeError) or "torch" not in sys.modules:
        return None
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    text = str(exc)
    if not (isinstance(exc, getattr(dist, "DistError", ())) or
            re.search(r"gloo|nccl|connection (closed|reset)|closed by peer|broken pipe|timed out", text, re.I)):
        return None
    rank, world = dist.get_rank(), dist.get_world_size()
    lost = f"rank {1 - rank}" if world == 2 else "another rank"
    detail = re.sub(r"^\[[^\]]*\]\s*", "", text.strip().splitlines()[0] if text.strip() else type(exc).__name__)
    detail = detail.split(". This is typically")[0]
    return (f"DDP rank {rank} of {world}: {lost} stopped (killed or failed: see its own output), so this rank stops "
            f"too ({_one_line(detail)[:200]})")

