"""CMeEE v1 / v2 (Chinese medical NER, CBLUE): a JSON array `{"text", "entities": [{"start_idx", "end_idx", "type",
"entity"}]}` with `end_idx` INCLUSIVE (text[s:e+1] == entity) and nested entities; test records have no entities.
Its dev split."""

from typing import Iterator

from kslm.data.formats.jsonl import check_keys, check_label, check_span, is_int, iter_json_array, record_text, sorted_entities
from kslm.errors import DataError

KEYS = ("text", "entities", "id")


def read_cmeee(path) -> Iterator[dict]:
    """CMeEE v1/v2 JSON array; `end_idx` INCLUSIVE (text[s:e+1] == entity); nested entities kept."""
    for where, obj in iter_json_array(path):
        check_keys(obj, KEYS, "cmeee", path, where)
        text = record_text(obj, path, where)
        raw = obj.get("entities", [])  # v1 test records have no "entities"
        if not isinstance(raw, list):
            raise DataError("must be a list", path=path, line=where, field="entities")
        ents = []
        for k, ent in enumerate(raw):
            fld = f"entities[{k}]"
            if not isinstance(ent, dict):
                raise DataError("must be an object", path=path, line=where, field=fld)
            for key in ("start_idx", "end_idx", "type"):
                if key not in ent:
                    raise DataError("missing", path=path, line=where, field=f"{fld}.{key}")
            s, e, typ = ent["start_idx"], ent["end_idx"], ent["type"]
            check_label(typ, path, where, f"{fld}.type")
            check_span(text, s, e + 1 if is_int(e) else e, path, where, fld, ent.get("entity"))
            ents.append({"start": s, "end": e + 1, "type": typ})
        yield {"text": text, "entities": sorted_entities(ents)}


def cmeee_train_dev(path, n_train: int = 3200) -> tuple[list[dict], list[dict]]:
    """CMeEE ships only the first 4,000 dev records: the first `n_train` (3,200) in file order are train, the rest
    (800) dev."""
    recs = list(read_cmeee(path))
    if len(recs) <= n_train:
        raise DataError(f"{len(recs)} records, need more than n_train={n_train}", path=path)
    return recs[:n_train], recs[n_train:]


__all__ = ["read_cmeee", "cmeee_train_dev"]
