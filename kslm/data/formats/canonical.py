"""kslm's canonical records as JSON Lines: NER `{"text", "entities": [{"start", "end", "type"}]}` and RE `{"text",
"triples": [{"subject", "predicate", "object", "subject_span": [s, e], "object_span": [s, e]}]}`, character offsets
with `end` EXCLUSIVE; a bare `{"text"}` is an NER record without entities. `check_record` validates one record:
besides "text", "entities" and "triples" it may carry an "id" and the "line" kslm's predictions record, nothing else
(a misspelled label key must not read as a record without labels)."""

from typing import Iterator

from kslm.data.formats.jsonl import check_keys, check_label, check_span, iter_jsonl, record_text
from kslm.errors import DataError

KEYS = ("text", "entities", "triples", "id", "line")


def check_record(rec: dict, path=None, line=None) -> dict:
    """Validate one canonical NER or RE record (returns it)."""
    check_keys(rec, KEYS, "canonical", path, line)
    text = record_text(rec, path, line)
    if "entities" in rec or "triples" not in rec:
        ents = rec.get("entities", [])
        if not isinstance(ents, list):
            raise DataError("must be a list", path=path, line=line, field="entities")
        for k, e in enumerate(ents):
            fld = f"entities[{k}]"
            if not isinstance(e, dict) or not {"start", "end", "type"} <= e.keys():
                raise DataError("must be an object with start, end, type", path=path, line=line, field=fld)
            check_label(e["type"], path, line, f"{fld}.type")
            if "text" in e and not isinstance(e["text"], str):
                raise DataError(f"must be a string (the text the span covers), got {e['text']!r}", path=path, line=line,
                                field=f"{fld}.text")
            check_span(text, e["start"], e["end"], path, line, fld, e.get("text"))  # its "text", if any, is the span's
    if "triples" in rec:
        triples = rec["triples"]
        if not isinstance(triples, list):
            raise DataError("must be a list", path=path, line=line, field="triples")
        for k, t in enumerate(triples):
            fld = f"triples[{k}]"
            if not isinstance(t, dict):
                raise DataError("must be an object", path=path, line=line, field=fld)
            for name in ("subject", "predicate", "object"):
                if not (isinstance(t.get(name), str) and t[name]):
                    raise DataError("must be a non-empty string", path=path, line=line, field=f"{fld}.{name}")
            check_label(t["predicate"], path, line, f"{fld}.predicate")
            for name in ("subject", "object"):
                span = t.get(f"{name}_span")
                if not (isinstance(span, list) and len(span) == 2):
                    raise DataError(f"expected [start, end], got {span!r}", path=path, line=line, field=f"{fld}.{name}_span")
                check_span(text, span[0], span[1], path, line, f"{fld}.{name}_span", t[name])
    return rec


def read_canonical(path) -> Iterator[dict]:
    """kslm's canonical JSONL (NER records with `entities`, RE records with `triples`; a bare {"text"} is NER)."""
    for n, obj in iter_jsonl(path):
        rec = check_record(obj, path, n)
        if "entities" not in rec and "triples" not in rec:
            rec["entities"] = []
        yield rec


__all__ = ["check_record", "read_canonical"]
