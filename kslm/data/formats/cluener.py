"""CLUENER2020 (fine-grained Chinese NER): JSON Lines `{"text", "label": {type: {entity: [[s, e], ...]}}}` with `e`
INCLUSIVE (text[s:e+1] == entity); test.json lines are `{"id", "text"}` with no label. Its dev split."""

from typing import Iterator

from kslm.data.formats.jsonl import check_keys, check_label, check_span, is_int, iter_jsonl, record_text, sorted_entities
from kslm.errors import DataError

KEYS = ("text", "label", "id")


def read_cluener(path) -> Iterator[dict]:
    """CLUENER2020 JSONL; `[s, e]` ends are INCLUSIVE in the file and exclusive in the output."""
    for n, obj in iter_jsonl(path):
        check_keys(obj, KEYS, "cluener", path, n)
        text = record_text(obj, path, n)
        label = obj.get("label", {})  # test.json: {"id", "text"} only
        if not isinstance(label, dict):
            raise DataError("must be an object {type: {entity: [[start, end], ...]}}", path=path, line=n, field="label")
        ents = []
        for typ, by_entity in label.items():
            check_label(typ, path, n, f"label.{typ}")
            if not isinstance(by_entity, dict):
                raise DataError("must be an object {entity: [[start, end], ...]}", path=path, line=n, field=f"label.{typ}")
            for entity, spans in by_entity.items():
                fld = f"label.{typ}.{entity}"
                if not isinstance(spans, list):
                    raise DataError("must be a list of [start, end]", path=path, line=n, field=fld)
                for k, span in enumerate(spans):
                    if not (isinstance(span, list) and len(span) == 2):
                        raise DataError(f"expected [start, end], got {span!r}", path=path, line=n, field=f"{fld}[{k}]")
                    s, e = span
                    check_span(text, s, e + 1 if is_int(e) else e, path, n, f"{fld}[{k}]", entity)
                    ents.append({"start": s, "end": e + 1, "type": typ})
        rec = {"text": text, "entities": sorted_entities(ents)}
        if "id" in obj:
            rec["id"] = obj["id"]
        yield rec


def cluener_train_dev(path, n_dev: int = 1000) -> tuple[list[dict], list[dict]]:
    """CLUENER's official dev.json is not shipped: the LAST `n_dev` lines of train.json are dev, the rest train."""
    recs = list(read_cluener(path))
    if len(recs) <= n_dev:
        raise DataError(f"{len(recs)} records, need more than n_dev={n_dev}", path=path)
    return recs[:-n_dev], recs[-n_dev:]


__all__ = ["read_cluener", "cluener_train_dev"]
