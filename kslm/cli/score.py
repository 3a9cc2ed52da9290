"""`kslm score --gold FILE --predictions FILE [--format F] [--dev_split S] [--out metrics.json]`: score the canonical
JSONL that `kslm predict` writes (NER `entities` or RE `triples`) against gold records in any supported dataset
format, with the metrics validation logs (kslm.metrics: exact-match micro, macro and per-label P/R/F1; flat / nested
for NER). Predictions are matched to gold records by their `line` (the input line `kslm predict` read them from),
or by order when they carry none; every gold record needs its prediction, with the same text.
"""

from pathlib import Path
from typing import List, Optional

from kslm.data.formats import FORMATS, cluener_train_dev, cmeee_train_dev, read_records_with_lines
from kslm.data.formats.jsonl import iter_jsonl
from kslm.errors import DataError
from kslm.io import write_json


def _gold(path: str, fmt: str, dev_split: Optional[str]) -> List[dict]:
    if not Path(path).is_file():
        raise DataError("file not found", path=path, field="--gold")
    if dev_split:  # the records kslm validates on with --data.dev_split, numbered as `kslm predict` numbers the file
        train, _ = (cluener_train_dev if dev_split == "cluener" else cmeee_train_dev)(path)
        return read_records_with_lines(path, dev_split)[len(train):]  # (file lines: blank lines count, as predict's)
    return read_records_with_lines(path, fmt)


def _predictions(path: str) -> List[dict]:
    if not Path(path).is_file():
        raise DataError("file not found", path=path, field="--predictions")
    out = []
    for line, rec in iter_jsonl(path):
        if not isinstance(rec.get("text"), str):
            raise DataError("a prediction needs its 'text'", path=path, line=line, field="text")
        if not isinstance(rec.get("entities", rec.get("triples")), list):
            raise DataError("a prediction needs 'entities' (NER) or 'triples' (RE)", path=path, line=line,
                            field="entities")
        out.append({**rec, "_at": line})
    return out


def _items(rec: dict, ner: bool, path, line) -> list:
    try:
        if ner:
            return [(int(e["start"]), int(e["end"]), str(e["type"])) for e in rec.get("entities", [])]
        return [(str(t["subject"]), str(t["predicate"]), str(t["object"])) for t in rec.get("triples", [])]
    except (KeyError, TypeError, ValueError) as exc:
        field = "entities" if ner else "triples"
        raise DataError(f"malformed {field[:-1] if ner else 'triple'} ({type(exc).__name__}: {exc})", path=path,
                        line=line, field=field) from None


def score(gold_path: str, pred_path: str, fmt: str = "auto", dev_split: Optional[str] = None) -> dict:
    """The metrics of the predictions against the gold records (compute()'s dict, plus "records" and "task")."""
    gold, preds = _gold(gold_path, fmt, dev_split), _predictions(pred_path)
    if not gold:
        raise DataError("no gold records", path=gold_path, field="--gold")
    ner = "entities" in gold[0]
    by_line = {p["line"]: p for p in preds if "line" in p}
    if by_line:
        matched = [by_line.get(g["line"]) for g in gold]
    elif len(preds) == len(gold):
        matched = preds
    else:
        raise DataError(f"{len(preds)} predictions for {len(gold)} gold records (and no 'line' to match them by)",
                        path=pred_path, field="--predictions")
    for g, p in zip(gold, matched, strict=True):
        if p is None:
            raise DataError(f"no prediction for gold record at line {g['line']}", path=pred_path, field="line")
        if p["text"] != g["text"]:
            raise DataError(f"text differs from the gold record at line {g['line']} of {gold_path}", path=pred_path,
                            line=p["_at"], field="text")
    gold_items = [_items(g, ner, gold_path, g["line"]) for g in gold]
    pred_items = [_items(p, ner, pred_path, p["_at"]) for p in matched]
    labels = sorted({x[2 if ner else 1] for items in gold_items + pred_items for x in items})
    from kslm.metrics import SpanF1, TripleF1  # (torchmetrics and torch: only once there is something to score)

    metric = SpanF1(labels=labels, nested=True) if ner else TripleF1(labels=labels)
    metric.update(pred_items, gold_items)
    return {**metric.compute(), "records": len(gold), "task": "ner" if ner else "re"}


def main(argv: List[str]) -> None:
    from kslm.cli.verbs import VerbParser

    parser = VerbParser("score", __doc__.split("\n\n")[0])
    parser.add_argument("--gold", required=True, help="gold records (any supported dataset format)")
    parser.add_argument("--predictions", required=True, help="the JSONL `kslm predict` wrote")
    parser.add_argument("--format", default="auto", choices=["auto", *FORMATS], help="the gold file's format")
    parser.add_argument("--dev_split", choices=["cluener", "cmeee"], default=None,
                        help="score the dataset's dev split of --gold (as --data.dev_split validates on)")
    parser.add_argument("--out", default=None, help="write the metrics as JSON here (atomically)")
    args = parser.parse_args(argv)
    from kslm.metrics import format_report, report_json

    res = score(args.gold, args.predictions, args.format, args.dev_split)
    per = "entity type" if res["task"] == "ner" else "predicate"
    shown = res if res.get("per_category", {}).get("nested", {}).get("support") else \
        {k: v for k, v in res.items() if k != "per_category"}
    print(format_report(shown, f"kslm: scores per {per} ({res['records']} records)"))
    if args.out:
        write_json(args.out, report_json(res))


__all__ = ["score", "main"]
