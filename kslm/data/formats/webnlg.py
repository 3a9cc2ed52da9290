"""WebNLG (the PRGC / ETL-span exact-match variant): a JSON array `{"text", "triple_list": [[subject, relation,
object]]}` of full entity strings in space-tokenized English; each is placed in the text here, preferring
occurrences on word boundaries."""

import logging
from pathlib import Path
from typing import Iterator

from kslm.data.formats.jsonl import ReadStats, check_keys, iter_json_array, read_located
from kslm.errors import DataError

log = logging.getLogger(__name__)
KEYS = ("text", "triple_list", "id")


def _webnlg_triples(obj, p, where) -> list:
    check_keys(obj, KEYS, "webnlg", p, where)
    tl = obj.get("triple_list", [])
    if not isinstance(tl, list):
        raise DataError("must be a list", path=p, line=where, field="triple_list")
    raw = []
    for k, t in enumerate(tl):
        if not (isinstance(t, list) and len(t) == 3):
            raise DataError(f"expected [subject, relation, object], got {t!r}", path=p, line=where,
                            field=f"triple_list[{k}]")
        raw.append((f"triple_list[{k}]", t[0], t[1], t[2], {}))
    return raw


def read_webnlg(path, all_occurrences: bool = False, skip_unlocatable: bool = False,
                stats: ReadStats | None = None) -> Iterator[dict]:
    """WebNLG (PRGC/ETL-span variant) JSON array: `triple_list` [[subject, relation, object]] of full entity strings.

    Located like `read_duie` (kslm.data.formats.duie), preferring occurrences on word boundaries (the text is
    space-tokenized English).
    """
    return read_located(iter_json_array(path), Path(path), _webnlg_triples, all_occurrences, skip_unlocatable, stats,
                        True, log)


__all__ = ["read_webnlg"]
