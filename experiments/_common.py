"""What the experiment scripts share: TensorBoard scalars of a run, and writing a result JSON atomically.

The scripts run as `python experiments/<name>.py`, so this folder is on sys.path and `from _common import …` works.
"""

import json
import os
from pathlib import Path


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
    """`payload` as indented JSON at `path`, written to a temporary file first and renamed (atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
    os.replace(tmp, path)
