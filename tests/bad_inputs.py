"""What the bad-input suites (tests/test_bad_inputs_*.py, issue 13) share: the in-process CLI with the log handlers
pointed at this test's stderr, the one-line checks of the error contract, and JSON-lines input."""

import json

from helpers import run_cli

from kslm.errors import KslmError


def cli(args, capsys, stdout: bool = False):
    """run_cli → (exit code, stderr) [with stdout: (exit code, stdout, stderr)]."""
    if not stdout:
        return run_cli(args, capsys)
    code, _ = run_cli(args, None)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(code, err, *names) -> str:
    """The run failed with exit code 2 and exactly one `kslm: error:` line, naming every one of `names`."""
    lines = [line for line in err.splitlines() if line.startswith("kslm: error:")]
    assert code == 2, err[-3000:]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def ids(value):
    return " ".join(value) if isinstance(value, list) else None


def one_line(exc_info, *parts) -> str:
    """The message of a raised KslmError (pytest.raises' exc_info): one line, naming every one of `parts`."""
    msg = str(exc_info.value)
    assert isinstance(exc_info.value, KslmError) and "\n" not in msg, msg
    assert all(p in msg for p in parts), (parts, msg)
    return msg


def jl(*records) -> str:
    """JSON lines of `records` (None: a blank line)."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" if r is not None else "\n" for r in records)
