"""Run folders: each `kslm fit` of a config writes its checkpoints to `checkpoints/<config>/version_N/`, beside its
TensorBoard events in `logs/<config>/version_N/` (the same N), so that no run overwrites another's; the link
`checkpoints/<config>/last.ckpt` names the last checkpoint most recently written (the latest run's), which is what
`--ckpt_path last`, `model.pretrained: checkpoints/<config>/last.ckpt` and the README's commands read.

A fit resumed from a run's own `last.ckpt` (through the link or the file) continues in that run's folders; a fit
resumed from any other checkpoint (an earlier top-k file, another config's, a file outside these folders) is a new
run with a new N. No lightning here: kslm.cli picks the folders, kslm.callbacks.KslmCheckpoint moves the link.
"""

import os
import re
from pathlib import Path
from typing import Optional, Tuple

_VERSION = re.compile(r"version_(\d+)")


def next_version(*folders) -> int:
    """The first N above every `version_N` in any of `folders` (0 when there is none): a new run's number, free in
    the logs and the checkpoints alike (logs of validate / test runs count, so the numbers never collide)."""
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


__all__ = ["next_version", "point_link", "resumed_version"]
