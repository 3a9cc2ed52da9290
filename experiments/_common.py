"""What the experiment scripts share: TensorBoard scalars of a run, writing a result JSON (atomically, through
kslm.io), the folder the runs work in, running `kslm` in this process, and `--table`: the tables of stored results
printed again, computing nothing (nothing here imports torch or lightning at import time, so that stays fast).

Runs work in a temporary folder that is deleted at the end; with KSLM_KEEP_RUNS=DIR set they work in a new folder
under DIR instead and keep it, so `tensorboard --logdir DIR` shows every run's curves.

The scripts run as `python experiments/<name>.py`, so this folder is on sys.path and `from _common import …` works.
"""

import functools
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from kslm.io import print_tables, table_flag, write_text  # noqa: F401  (--table helpers, re-exported)

RESULTS = Path(__file__).resolve().parent / "results"


def series(logdir, tag):
    """Sorted (step, value) pairs of scalar `tag` over every TensorBoard event file under `logdir`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points = []
    for events in sorted(Path(logdir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            points += [(s.step, s.value) for s in acc.Scalars(tag)]
    return sorted(points)


def save(path: Path, payload: dict) -> None:
    """`payload` as indented JSON at `path`, written atomically (kslm.io); values JSON lacks (paths) as strings."""
    write_text(path, json.dumps(payload, indent=1, ensure_ascii=False, default=str) + "\n")


def no_grad(fn):
    """`@torch.no_grad()` that imports torch when `fn` is called, not when the script is loaded."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper


def kslm_main(args, rundir) -> None:
    """`kslm ARGS` in this process with `rundir` as the working directory (TensorBoard logs land in rundir/logs);
    a non-zero exit becomes a RuntimeError naming the command."""
    from kslm.cli import main

    rundir = Path(rundir)
    rundir.mkdir(parents=True, exist_ok=True)
    here = os.getcwd()
    os.chdir(rundir)
    try:
        main(list(args))
    except SystemExit as exc:
        if exc.code:
            raise RuntimeError(f"kslm {' '.join(map(str, args))}: exited {exc.code}") from exc
    finally:
        os.chdir(here)


@contextmanager
def workdir(prefix: str):
    """A folder for the runs: temporary, or a new one under $KSLM_KEEP_RUNS that is kept (TensorBoard logs)."""
    keep = os.environ.get("KSLM_KEEP_RUNS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        path = tempfile.mkdtemp(prefix=prefix, dir=keep)
        print(f"runs kept in {path}", flush=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as path:
        yield path
