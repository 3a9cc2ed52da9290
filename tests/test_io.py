"""kslm.io, the one atomic writer: content replaced whole, nothing left behind on failure, the mode of a plain open(),
JSON / JSONL helpers, and atomic_dir's rename and refusal to clobber."""

import json
import os
import stat

import pytest

from kslm.io import atomic_dir, atomic_open, write_bytes, write_json, write_jsonl, write_text


@pytest.fixture
def umask():
    """umask(mask) sets the process umask (0o022 until then); the previous one is restored after the test."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


def leftovers(folder):
    """Temporary files or folders of kslm.io (".<name>.*.tmp") in `folder`."""
    return [p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]


def test_write_replaces_content_and_creates_parents(tmp_path):
    path = tmp_path / "a" / "b" / "out.txt"
    write_text(path, "first\n")
    assert path.read_text(encoding="utf-8") == "first\n"
    write_text(path, "second, ünïcode\n")
    assert path.read_text(encoding="utf-8") == "second, ünïcode\n"
    write_bytes(path, b"\x00\xffbytes")
    assert path.read_bytes() == b"\x00\xffbytes"
    assert leftovers(path.parent) == []


def test_failure_leaves_target_unchanged_and_no_temp_file(tmp_path):
    path = tmp_path / "out.json"
    write_text(path, "old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_open(path) as f:
            f.write("half of the new content")
            raise RuntimeError("boom")
    assert path.read_text(encoding="utf-8") == "old"
    assert leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_failure_on_a_new_file_creates_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(tmp_path / "new.txt", "wb") as f:
            f.write(b"x")
            raise KeyboardInterrupt  # BaseException too: a killed run leaves no debris
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_mode_is_that_of_a_plain_open(tmp_path, umask, mask):
    umask(mask)
    path = tmp_path / "out.txt"
    write_text(path, "x")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask  # not mkstemp's 0600
    with atomic_dir(tmp_path / "dir") as d:
        (d / "f").write_text("x")
    assert stat.S_IMODE((tmp_path / "dir").stat().st_mode) == 0o777 & ~mask


def test_atomic_open_rejects_read_and_append_modes(tmp_path):
    for mode in ("r", "a", "w+"):
        with pytest.raises(ValueError, match="writes only"):
            with atomic_open(tmp_path / "x", mode):
                pass
    assert list(tmp_path.iterdir()) == []


def test_write_json_and_jsonl(tmp_path):
    write_json(tmp_path / "r.json", {"a": [1, 2.5], "名": "值"})
    text = (tmp_path / "r.json").read_text(encoding="utf-8")
    assert json.loads(text) == {"a": [1, 2.5], "名": "值"} and "值" in text and text.endswith("\n")
    records = ({"line": i, "text": f"第{i}行"} for i in range(5))  # a generator: written as it is consumed
    assert write_jsonl(tmp_path / "p.jsonl", records) == 5
    lines = (tmp_path / "p.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [{"line": i, "text": f"第{i}行"} for i in range(5)]
    assert write_jsonl(tmp_path / "empty.jsonl", []) == 0 and (tmp_path / "empty.jsonl").read_text() == ""


def test_atomic_dir_appears_whole(tmp_path):
    out = tmp_path / "ckpt"
    with atomic_dir(out) as tmp:
        assert tmp.parent == tmp_path and tmp != out and not out.exists()  # written beside the target
        (tmp / "weights.bin").write_bytes(b"w")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "cfg.json").write_text("{}")
    assert (out / "weights.bin").read_bytes() == b"w" and (out / "sub" / "cfg.json").read_text() == "{}"
    assert leftovers(tmp_path) == []


def test_atomic_dir_refuses_a_non_empty_dir_unless_overwrite(tmp_path):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "old.bin").write_bytes(b"old")
    with pytest.raises(FileExistsError, match="not empty"):
        with atomic_dir(out):
            pytest.fail("the block must not run")
    assert (out / "old.bin").read_bytes() == b"old"
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "new.bin").write_bytes(b"new")
    assert sorted(p.name for p in out.iterdir()) == ["new.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp or ".old" folder left


def test_atomic_dir_into_an_empty_dir_and_over_a_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with atomic_dir(tmp_path / "empty") as tmp:
        (tmp / "f").write_text("x")
    assert (tmp_path / "empty" / "f").read_text() == "x"
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        with atomic_dir(tmp_path / "file"):
            pass


def test_atomic_dir_failure_keeps_the_old_dir(tmp_path):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "old.bin").write_bytes(b"old")
    with pytest.raises(OSError, match="disk full"):
        with atomic_dir(out, overwrite=True) as tmp:
            (tmp / "half.bin").write_bytes(b"h")
            raise OSError("disk full")
    assert sorted(p.name for p in out.iterdir()) == ["old.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_atomic_dir_gives_every_file_the_umask_mode_and_leaves_the_umask_alone(tmp_path, umask, mask):
    """Files written inside (safetensors writes 0600) get 0666 less the umask; reading the umask never changes it."""
    from kslm.io import _umask

    umask(mask)
    with atomic_dir(tmp_path / "dir") as d:
        (d / "weights").write_bytes(b"x")
        os.chmod(d / "weights", 0o600)
        (d / "sub").mkdir(mode=0o700)
    assert stat.S_IMODE((tmp_path / "dir" / "weights").stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((tmp_path / "dir" / "sub").stat().st_mode) == 0o777 & ~mask
    assert _umask() == mask and os.umask(mask) == mask  # (os.umask returns the mask in force: still ours)


def test_a_replaced_directory_left_behind_is_swept_like_a_temporary(tmp_path):
    """A writer killed between moving the old directory aside and removing it leaves `.NAME.PID.XXXX.old.tmp`
    (or, from older kslm, `.NAME.old.PID`): the next write of NAME removes it when PID is gone; a link is unlinked,
    never followed."""
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "f").write_text("x")
    dead = 2 ** 22 + 12345  # (above the default pid_max: no such process)
    (tmp_path / f".out.{dead}.abcd.old.tmp").mkdir()
    (tmp_path / f".out.old.{dead}").mkdir()
    os.symlink(tmp_path / "keep", tmp_path / f".out.old.{dead + 1}")
    with atomic_dir(tmp_path / "out") as d:
        (d / "f").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep", "out"]
    assert (tmp_path / "keep" / "f").read_text() == "x"
