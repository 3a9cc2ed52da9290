"""DuIE (LIC2019) and CMeIE relation extraction: JSON Lines `{"text", "spo_list": [{"subject", "predicate", "object",
"subject_type", "object_type"}]}` naming entities by string, without offsets; CMeIE writes objects (and their types)
as `{"@value": ...}`. Each entity string is placed in the text here (first occurrence, or every one)."""

import logging
from pathlib import Path
from typing import Iterator

from kslm.data.formats.jsonl import ReadStats, check_keys, iter_jsonl, read_located
from kslm.errors import DataError

log = logging.getLogger(__name__)
KEYS = ("text", "spo_list", "postag", "id")  # LIC2019's DuIE records carry their POS tags


def _value(x):
    """CMeIE writes objects as {"@value": "..."}."""
    return x.get("@value") if isinstance(x, dict) else x


def _duie_triples(obj, p, n) -> list:
    check_keys(obj, KEYS, "duie", p, n)
    spo = obj.get("spo_list", [])
    if not isinstance(spo, list):
        raise DataError("must be a list", path=p, line=n, field="spo_list")
    raw = []
    for k, t in enumerate(spo):
        if not isinstance(t, dict):
            raise DataError("must be an object", path=p, line=n, field=f"spo_list[{k}]")
        extra = {key: _value(t[key]) for key in ("subject_type", "object_type") if key in t}
        raw.append((f"spo_list[{k}]", _value(t.get("subject")), t.get("predicate"), _value(t.get("object")), extra))
    return raw


def read_duie(path, all_occurrences: bool = False, skip_unlocatable: bool = False,
              stats: ReadStats | None = None) -> Iterator[dict]:
    """DuIE (LIC2019) and CMeIE JSONL: `spo_list` of entity strings, located in the text.

    Each subject/object is placed at its FIRST occurrence in the text (as GPLinker's `search` does); with
    `all_occurrences=True` a triple is emitted for every (subject occurrence, object occurrence) pair.
    An entity string absent from the text is a DataError, or with `skip_unlocatable=True` the triple is skipped
    and counted in `stats.skipped_triples` (and logged). subject_type/object_type are kept when present.
    """
    return read_located(iter_jsonl(path), Path(path), _duie_triples, all_occurrences, skip_unlocatable, stats, False,
                        log)


read_cmeie = read_duie


__all__ = ["read_duie", "read_cmeie"]
