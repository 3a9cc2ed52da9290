"""RE readers: DuIE / LIC2019 and CMeIE JSONL (`spo_list`) and WebNLG (`triple_list`), whose triples name their
entities by string — located in the text here (first occurrence, or every one) → kslm's canonical RE records
(see kslm.data.readers for the formats and the error contract)."""

from pathlib import Path
from typing import Iterator

from kslm.data.readers import ReadStats, _json_array, _text, iter_jsonl, log
from kslm.errors import DataError


def _occurrences(text: str, s: str, word_boundary: bool) -> list[int]:
    starts, i = [], text.find(s)
    while i >= 0:
        starts.append(i)
        i = text.find(s, i + 1)
    if word_boundary:  # English: "Al" must not be found inside "Alan"; fall back to any occurrence if none is a word
        def ok(i):
            left = i == 0 or not text[i - 1].isalnum() or not s[0].isalnum()
            right = i + len(s) == len(text) or not text[i + len(s)].isalnum() or not s[-1].isalnum()
            return left and right
        words = [i for i in starts if ok(i)]
        starts = words or starts
    return starts


def _locate_triples(text, raw_triples, path, line, all_occurrences, skip_unlocatable, stats, word_boundary):
    """raw_triples: [(field, subject, predicate, object, extra)] → canonical triples with spans."""
    out = []
    for fld, subj, pred, obj, extra in raw_triples:
        for name, val in (("subject", subj), ("predicate", pred), ("object", obj)):
            if not (isinstance(val, str) and val):
                raise DataError(f"must be a non-empty string, got {val!r}", path=path, line=line, field=f"{fld}.{name}")
        found = {}
        for name, val in (("subject", subj), ("object", obj)):
            found[name] = _occurrences(text, val, word_boundary)
        missing = [name for name in ("subject", "object") if not found[name]]
        if missing:
            name = missing[0]
            val = subj if name == "subject" else obj
            if not skip_unlocatable:
                raise DataError(f"entity {val!r} does not occur in the text; pass skip_unlocatable=True to skip "
                                "such triples (they are counted)", path=path, line=line, field=f"{fld}.{name}")
            stats.skipped_triples += 1
            stats.note(f"{path}:{line}: {fld}.{name} {val!r} not in text")
            continue
        pairs = ([(a, b) for a in found["subject"] for b in found["object"]] if all_occurrences
                 else [(found["subject"][0], found["object"][0])])
        for a, b in pairs:
            out.append({"subject": subj, "predicate": pred, "object": obj,
                        "subject_span": [a, a + len(subj)], "object_span": [b, b + len(obj)], **extra})
    return out


def _value(x):
    """CMeIE writes objects as {"@value": "..."}."""
    return x.get("@value") if isinstance(x, dict) else x


def _duie_triples(obj, p, n) -> list:
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


def _webnlg_triples(obj, p, where) -> list:
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


def _read_located(records, p, raw_triples, all_occurrences, skip_unlocatable, stats, word_boundary) -> Iterator[dict]:
    """(where, record) pairs → {"text", "triples"} with every entity string located in the text (see read_duie)."""
    stats = stats if stats is not None else ReadStats()
    for where, obj in records:
        text = _text(obj, p, where)
        raw = raw_triples(obj, p, where)
        stats.records += 1
        yield {"text": text,
               "triples": _locate_triples(text, raw, p, where, all_occurrences, skip_unlocatable, stats, word_boundary)}
    if stats.skipped_triples:
        log.warning("%s: skipped %d triples whose entity is not in the text (skip_unlocatable=True)",
                    p, stats.skipped_triples)


def read_duie(path, all_occurrences: bool = False, skip_unlocatable: bool = False,
              stats: ReadStats | None = None) -> Iterator[dict]:
    """DuIE (LIC2019) and CMeIE JSONL: `spo_list` of entity strings, located in the text.

    Each subject/object is placed at its FIRST occurrence in the text (as GPLinker's `search` does); with
    `all_occurrences=True` a triple is emitted for every (subject occurrence, object occurrence) pair.
    An entity string absent from the text is a DataError, or with `skip_unlocatable=True` the triple is skipped
    and counted in `stats.skipped_triples` (and logged). subject_type/object_type are kept when present.
    """
    return _read_located(iter_jsonl(path), Path(path), _duie_triples, all_occurrences, skip_unlocatable, stats, False)


read_cmeie = read_duie


def read_webnlg(path, all_occurrences: bool = False, skip_unlocatable: bool = False,
                stats: ReadStats | None = None) -> Iterator[dict]:
    """WebNLG (PRGC/ETL-span variant) JSON array: `triple_list` [[subject, relation, object]] of full entity strings.

    Located like `read_duie`, preferring occurrences on word boundaries (the text is space-tokenized English).
    """
    return _read_located(_json_array(path), Path(path), _webnlg_triples, all_occurrences, skip_unlocatable, stats, True)


__all__ = ["read_duie", "read_cmeie", "read_webnlg"]
