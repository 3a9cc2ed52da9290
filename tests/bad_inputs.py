"""What the bad-input suites (tests/test_bad_inputs_*.py, issue 13) share: the in-process CLI with the log handlers
pointed at this test's stderr, and the one-line check of the error contract."""


from helpers import run_cli


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
