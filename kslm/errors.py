"""User-facing errors. The CLI prints any KslmError on one line and exits with code 2."""


class KslmError(Exception):
    """Base class: a mistake the user can fix (bad config value, bad file, mismatched checkpoint)."""


class ConfigError(KslmError):
    """A configuration value is invalid or inconsistent."""


class DataError(KslmError):
    """A data file is missing or malformed; the message names the file, line and field."""

    def __init__(self, message: str, path=None, line=None, field=None):
        where = []
        if path is not None:
            where.append(str(path) + (f":{line}" if line is not None else ""))
        elif line is not None:  # a record given in memory: "record 3"
            where.append(str(line))
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__((": ".join([", ".join(where), message])) if where else message)


class CheckpointError(KslmError):
    """A checkpoint is missing, unreadable or does not match the model/tokenizer."""


def kslm_cause(exc: BaseException):
    """The KslmError behind `exc` (itself, or one it was raised from: jsonargparse and Lightning wrap the errors
    raised while they build classes), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KslmError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
