"""Run folders. A run has a name (`--name`, default: the config file's stem); each `kslm fit` writes its checkpoints
to `checkpoints/<name>/version_N/`, beside its TensorBoard events in `logs/<name>/version_N/` (the same N), so that no
run overwrites another's; the link `checkpoints/<name>/last.ckpt` names the latest run's latest checkpoint, which is
what `--ckpt_path last`, `model.pretrained: checkpoints/<name>/last.ckpt` and the README's commands read. A new run
removes the link when it starts (`start_run`): until its first checkpoint nothing resumes or reads the previous run
by mistake. A run stopped before its first training step leaves nothing (`discard_run`: its folders go, the link is
put back), so only fit runs that trained take numbers; validate and test log to `logs/<name>/<verb>-<time>/`.

A fit resumed from a run's own `last.ckpt` (through the link or the file) continues in that run's folders; a fit
resumed from any other checkpoint (an earlier top-k file, another config's, a file outside these folders) is a new
run with a new N. No lightning here: kslm.cli.trainer picks the folders, kslm.cli.callbacks.KslmCheckpoint moves the link.
"""

import os
import re
import shutil
import time
from pathlib import Path
from typing import Optional, Tuple

_VERSION = re.compile(r"version_(\d+)")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=-]*")
STARTUP_FILES = ("hparams.yaml", "config.yaml")  # what a run's log folder holds before its first step (+ events)


def name_error(name: str) -> Optional[str]:
    """Why `name` cannot name a run folder (None: it can): one path component of letters, digits and _ . + = -."""
    if not _NAME.fullmatch(name) or name in (".", ".."):
        return (f"--name {name!r}: a run name is one folder name (letters, digits, _ . + = -; not starting with . "
                "or -), e.g. --name weibo-egp")
    return None


def eval_version(logs, verb: str) -> str:
    """The log folder of a validate / test run under `logs` (logs/<name>): `<verb>-YYYYmmdd-HHMMSS` (then -2, -3, …
    within one second). Not a version number: those count fit runs only."""
    stem = f"{verb}-{time.strftime('%Y%m%d-%H%M%S')}"
    name, n = stem, 1
    while (Path(logs) / name).exists():
        n += 1
        name = f"{stem}-{n}"
    return name


def next_version(*folders) -> int:
    """The first N above every `version_N` in any of `folders` (0 when there is none): a new run's number, free in
    the logs and the checkpoints alike (validate / test log elsewhere, `eval_version`: they take no number)."""
    taken = [-1]
    for folder in folders:
        folder = Path(folder)
        if folder.is_dir():
            taken += [int(m.group(1)) for p in folder.iterdir() if (m := _VERSION.fullmatch(p.name)) and p.is_dir()]
    return max(taken) + 1


def resumed_version(ckpt: Optional[str], base) -> Optional[int]:
    """N when `ckpt` is run N's own last checkpoint, `base/version_N/last.ckpt` (directly or through the link):
    the resumed fit continues in run N's folders. None for any other checkpoint (a new run)."""
    if not ckpt:
        return None
    path, base = Path(ckpt).resolve(), Path(base).resolve()
    if path.name != "last.ckpt" or path.parent.parent != base:
        return None
    m = _VERSION.fullmatch(path.parent.name)
    return int(m.group(1)) if m else None


def point_link(link, target) -> Tuple[bool, Optional[Path]]:
    """Make `link` a relative symbolic link to `target`, atomically (a reader sees the old or the new link, never
    none). A regular file at `link` (the last.ckpt of a kslm from before run folders) is kept: renamed to
    `last-unversioned.ckpt` (or -1, -2, …), whose path is returned. Where symbolic links cannot be made (some
    Windows accounts) the link is a hard link, else a copy. Returns (whether a link was made, the renamed file)."""
    link, target = Path(link), Path(target)
    moved = None
    if link.is_file() and not link.is_symlink():
        moved = link.with_name("last-unversioned.ckpt")
        n = 0
        while moved.exists():
            n += 1
            moved = link.with_name(f"last-unversioned-{n}.ckpt")
        os.replace(link, moved)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    try:
        os.symlink(os.path.relpath(target, link.parent), tmp)
        symlink = True
    except OSError:
        symlink = False
        try:
            os.link(target, tmp)
        except OSError:
            import shutil

            shutil.copyfile(target, tmp)
    os.replace(tmp, link)
    return symlink, moved


def start_run(link) -> Optional[str]:
    """A new fit run starts: the link to the previous run's checkpoint is removed, so that until this run's first
    checkpoint `--ckpt_path last` and the configs that read the link find none rather than another run's. Returns
    the link's old target (for `discard_run`), None when there was no link. A regular file there is left alone
    (point_link keeps it at the first save)."""
    link = Path(link)
    if not link.is_symlink():
        return None
    target = os.readlink(link)
    link.unlink()
    return target


def discard_run(ckpt_dir, log_dir, link, old_target: Optional[str]) -> bool:
    """A new run stopped before its first training step: remove its checkpoint folder (when empty) and its log folder
    (when it holds only what a run writes at its start: STARTUP_FILES and TensorBoard event files), and put the link
    back where it pointed. Returns whether the folders went (anything else in them keeps both)."""
    ckpt_dir, log_dir, link = Path(ckpt_dir), Path(log_dir), Path(link)
    if ckpt_dir.is_dir() and any(ckpt_dir.iterdir()):
        return False
    if log_dir.is_dir() and not all(p.is_file() and (p.name in STARTUP_FILES or p.name.startswith("events.out."))
                                    for p in log_dir.iterdir()):
        return False
    for folder in (ckpt_dir, log_dir):
        if folder.is_dir():
            shutil.rmtree(folder)
    if old_target is not None and not link.exists() and not link.is_symlink():
        tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
        os.symlink(old_target, tmp)
        os.replace(tmp, link)
    return True


__all__ = ["discard_run", "eval_version", "name_error", "next_version", "point_link", "resumed_version", "start_run"]
