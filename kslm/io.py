"""The one atomic writer of the repository (kslm, bench/ and experiments/ all write through it).

A file is written to a temporary file in the target's folder and renamed over the target (`os.replace`, atomic on
POSIX), so a reader — or a run killed half-way — never sees a half-written file. The temporary file is removed on
any failure, and the result gets the mode a plain `open(path, "w")` would give (0666 less the umask), not
`mkstemp`'s 0600. `atomic_dir` does the same for a whole directory (written beside it, then renamed into place).

Temporary files are named `.NAME.PID.XXXXXXXX.tmp` (PID: the writing process). An exception, Ctrl-C
(KeyboardInterrupt) or SIGTERM (inside `sigterm_raises`, which the kslm CLI uses, SIGTERM is an exception)
removes the file on the way out. SIGKILL cannot be caught: its temporary file stays, and is removed by the next
write to the same target, which deletes every `.NAME.PID.*.tmp` whose process no longer exists.
"""

import glob
import json
import os
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Union

PathLike = Union[str, os.PathLike]


def _proc_umask():
    """The process umask as Linux (≥ 4.7) states it in /proc/self/status, read without changing it; else None."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _set_and_restore_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# where /proc does not say it: os.umask's set-and-restore, once, at import (before any thread of kslm's starts)
_UMASK_AT_IMPORT = _proc_umask()
if _UMASK_AT_IMPORT is None:
    _UMASK_AT_IMPORT = _set_and_restore_umask()


def _umask() -> int:
    mask = _proc_umask()
    return _UMASK_AT_IMPORT if mask is None else mask


class Terminated(SystemExit):
    """SIGTERM, as an exception (exit code 143): `finally` blocks and the writers' cleanup run on the way out."""


_DEFER: list = [lambda: False]


def _on_sigterm(signum, frame):
    # called directly by Python, or by another handler that wraps it (Lightning's, during a Trainer run): the caller
    # may defer to that one (it stops at a safe point of its own)
    if signal.getsignal(signal.SIGTERM) is not _on_sigterm and _DEFER[0]():
        return
    raise Terminated(128 + signum)


@contextmanager
def sigterm_raises(defer_when_wrapped: Callable[[], bool] = lambda: False) -> Iterator[None]:
    """Within the block SIGTERM raises `Terminated` (main thread only; a handler someone else installed is kept).
    defer_when_wrapped() → True: when another handler wraps this one, leave the stop to it."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    _DEFER[0] = defer_when_wrapped
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _DEFER[0] = lambda: False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temps(path: PathLike) -> int:
    """Delete the temporary files a killed writer of `path` left beside it (those whose process is gone) → count."""
    path = Path(path)
    removed = 0
    if not path.parent.is_dir():
        return 0
    legacy = path.parent.glob(f".{glob.escape(path.name)}.old.*")  # (kslm before 0.1's export fix: .NAME.old.PID)
    for tmp in [*path.parent.glob(f".{glob.escape(path.name)}.*.tmp"), *legacy]:
        if tmp.is_symlink() and not tmp.name.endswith(".tmp"):
            tmp.unlink()  # a replaced --out link kslm once moved aside: the link, never what it points to
            removed += 1
            continue
        if tmp.is_symlink():
            continue  # never ours: kslm writes files and folders
        pid = tmp.name[len(path.name) + 2:].removeprefix("old.").split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            removed += 1
    return removed


@contextmanager
def atomic_open(path: PathLike, mode: str = "w", encoding: str = "utf-8") -> Iterator:
    """`with atomic_open(path) as f: f.write(…)`: the target appears, complete, only when the block ends without
    an exception. Modes "w" (text, `encoding`) and "wb"."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes only ('w' or 'wb'), got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": encoding})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: PathLike, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_json(path: PathLike, data: Any, indent: int = 2) -> None:
    write_text(path, json.dumps(data, ensure_ascii=False, indent=indent) + "\n")


def write_jsonl(path: PathLike, records: Iterable[Any]) -> int:
    """One JSON object per line; → the number of records written."""
    n = 0
    with atomic_open(path) as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


@contextmanager
def atomic_dir(path: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """`with atomic_dir(out) as tmp: write files into tmp`: the directory appears at `path`, complete, when the
    block ends without an exception, its files and folders with the modes a plain write would give (0666 / 0777
    less the umask). An existing non-empty `path` is replaced only with `overwrite` (the caller decides whether
    its content may go: see kslm.export.writer); the old directory is moved aside as `.NAME.PID.XXXX.old.tmp`,
    removed at once, and — should the process die before that — by the next write of `path`, like any temporary."""
    path = Path(path)
    if path.is_symlink():
        raise FileExistsError(f"{path} is a symbolic link")
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} exists and is not empty")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp"))
    try:
        yield tmp
        _plain_modes(tmp)
        if path.is_dir():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".old.tmp"))
            os.replace(path, old)  # (onto the empty folder just made: a name nobody else holds)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _plain_modes(folder: Path) -> None:
    """Files 0666 and folders 0777, less the umask, under `folder` (mkdtemp's 0700 and some writers' 0600 are not
    what a user expects of an output)."""
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for names, mode in ((dirs, 0o777), (files, 0o666)):
            for name in names:
                full = os.path.join(root, name)
                if not os.path.islink(full):
                    os.chmod(full, mode & ~mask)


# ------------------------------------------------------------------------------- reading JSON (bounded)

MAX_JSON_DEPTH = 100  # arrays / objects nested deeper are refused (a record, a config, an export's kslm.json)
MAX_JSON_FILE_BYTES = 1 << 30  # a whole-file JSON document (a JSON array of records, an export's files)


class JsonInputError(ValueError):
    """JSON that kslm does not read: invalid, nested deeper than MAX_JSON_DEPTH, or larger than its limit. The
    message is one line; `line` is the 1-based line of an invalid document's error, where known."""

    def __init__(self, message: str, line=None):
        super().__init__(message)
        self.line = line


def json_loads(text: str) -> Any:
    """json.loads, bounded: nesting deeper than MAX_JSON_DEPTH is a JsonInputError (not a RecursionError)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JsonInputError(f"invalid JSON ({exc.msg} at column {exc.colno})", exc.lineno) from None
    except RecursionError:
        raise JsonInputError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels (kslm's limit)") from None
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise JsonInputError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels (kslm's limit)")
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return obj


def read_json(path: PathLike, max_bytes: int = MAX_JSON_FILE_BYTES) -> Any:
    """A whole JSON file (UTF-8), bounded in size and depth; OSError / UnicodeDecodeError / JsonInputError."""
    path = Path(path)
    if path.stat().st_size > max_bytes:
        raise JsonInputError(f"larger than {max_bytes >> 20} MiB (kslm's limit for a JSON file)")
    return json_loads(path.read_text(encoding="utf-8-sig"))


# ------------------------------------------------------- reading stored results back (bench/, experiments/)


def table_flag(parser, stored) -> None:
    """The bench/ and experiments/ scripts' common `--table [JSON ...]` option."""
    parser.add_argument("--table", nargs="*", metavar="JSON",
                        help="print the table of these result files and exit, computing nothing (default: the stored "
                        f"{', '.join(Path(p).name for p in stored)})")


def print_tables(files, stored, render) -> None:
    """`--table`: render(payload) of every result file named (none named: each of `stored` that exists), headed by
    its name when there are several."""
    paths = [Path(f) for f in files] if files else [Path(p) for p in stored if Path(p).is_file()]
    if not paths:
        print(f"no stored results ({', '.join(str(p) for p in stored) or 'this script keeps none'})")
        return
    for i, path in enumerate(paths):
        if len(paths) > 1:
            print(("\n" if i else "") + f"{path.name}:\n")
        print(render(json.loads(path.read_text(encoding="utf-8"))))


__all__ = ["json_loads", "read_json", "JsonInputError", "MAX_JSON_DEPTH", "MAX_JSON_FILE_BYTES", "atomic_open",
           "remove_stale_temps", "sigterm_raises", "Terminated", "write_text", "write_bytes", "write_json", "write_jsonl",
           "atomic_dir", "table_flag", "print_tables"]
