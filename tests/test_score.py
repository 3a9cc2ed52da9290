"""Per-type evaluation end to end: `kslm validate` prints and logs per-type, micro and macro scores, and `kslm score`
on the same model's `kslm predict` output gives the same numbers, which an independent scorer (plain set loops over
the gold file) confirms. Malformed score inputs are one-line errors."""

import json

import pytest
from helpers import CANONICAL, CLUENER, REPO, read_jsonl, run_cli


def _validate_table(ckpt, gold, capsys, extra=()):
    code, err = run_cli(["validate", "--ckpt_path", str(ckpt), "--data.train_file", str(gold), "--data.val_file",
                         str(gold), "--trainer.enable_progress_bar", "false", *extra], capsys)
    assert code == 0, err
    lines = err[err.index("kslm: val scores per"):].splitlines()
    table = {}
    for line in lines[2:]:
        parts = line.rsplit(None, 4)
        if len(parts) == 5 and parts[1].replace(".", "").isdigit():
            table[parts[0].strip()] = [float(x) / 100 for x in parts[1:4]]  # (printed in %)
    return table


def _naive_ner(gold_path, preds):
    records = [_canonical(json.loads(x)) for x in gold_path.read_text(encoding="utf-8").splitlines() if x.strip()]
    gold = [{(e["start"], e["end"], e["type"]) for e in r["entities"]} for r in records]
    pred = [{(e["start"], e["end"], e["type"]) for e in p["entities"]} for p in preds]
    out = {}
    for t in sorted({x[2] for s in gold + pred for x in s}):
        tp = sum(len({x for x in p & g if x[2] == t}) for p, g in zip(pred, gold, strict=True))
        n_p = sum(len({x for x in p if x[2] == t}) for p in pred)
        n_g = sum(len({x for x in g if x[2] == t}) for g in gold)
        out[t] = (tp / n_p if n_p else 0.0, tp / n_g if n_g else 0.0, 2 * tp / (n_p + n_g) if n_p + n_g else 0.0)
    return out


def _canonical(rec):
    """A CLUENER record's label dict → canonical entities (inclusive ends → exclusive)."""
    ents = [{"start": s, "end": e + 1, "type": t} for t, names in (rec.get("label") or {}).items()
            for spans in names.values() for s, e in spans]
    return {"text": rec["text"], "entities": ents}


def test_validate_table_equals_score_and_an_independent_scorer(ckpts, workdir, capsys):
    table = _validate_table(ckpts["ner"], CLUENER, capsys)
    assert {"game", "name", "organization", "micro avg", "macro avg"} <= set(table)
    out = workdir / "pred.jsonl"
    code, err = run_cli(["predict", "--ckpt_path", str(ckpts["ner"]), "--data.predict_file", str(CLUENER),
                         "--predictions.path", str(out), "--trainer.enable_progress_bar", "false"], capsys)
    assert code == 0, err
    code, err = run_cli(["score", "--gold", str(CLUENER), "--predictions", str(out), "--out", str(workdir / "m.json")],
                        capsys)
    assert code == 0, err
    metrics = json.loads((workdir / "m.json").read_text(encoding="utf-8"))
    naive = _naive_ner(CLUENER, read_jsonl(out))
    for t, (p, r, f) in naive.items():
        got = metrics["per_label"][t]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((p, r, f), abs=1e-6)
        assert table[t] == pytest.approx([p, r, f], abs=5.1e-4)  # the printed table rounds to 0.1 %
    assert table["micro avg"] == pytest.approx([metrics["precision"], metrics["recall"], metrics["f1"]], abs=5.1e-4)
    assert table["macro avg"] == pytest.approx([metrics[f"macro_{k}"] for k in ("precision", "recall", "f1")],
                                               abs=5.1e-4)


def test_re_score_per_predicate(ckpts, workdir, capsys):
    out = workdir / "pred.jsonl"
    code, err = run_cli(["predict", "--ckpt_path", str(ckpts["re"]), "--data.predict_file", str(CANONICAL),
                         "--predictions.path", str(out), "--trainer.enable_progress_bar", "false"], capsys)
    assert code == 0, err
    code, err = run_cli(["score", "--gold", str(CANONICAL), "--predictions", str(out), "--out", str(workdir / "m.json")],
                        capsys)
    assert code == 0, err
    metrics = json.loads((workdir / "m.json").read_text(encoding="utf-8"))
    assert metrics["task"] == "re" and metrics["records"] == len(read_jsonl(CANONICAL))
    gold = {t["predicate"] for r in read_jsonl(CANONICAL) for t in r["triples"]}
    assert gold <= set(metrics["per_label"]) and 0 <= metrics["macro_f1"] <= 1


@pytest.mark.parametrize("case", ["missing-gold", "missing-pred", "bad-json", "no-text", "text-differs", "count",
                                  "bad-entity", "bad-option"])
def test_score_bad_inputs_are_one_line(workdir, capsys, case):
    pred = workdir / "p.jsonl"
    gold_recs = read_jsonl(CLUENER)
    good = [{"line": i + 1, "text": r["text"], "entities": []} for i, r in enumerate(gold_recs)]
    body = {"bad-json": "{not json\n", "no-text": json.dumps({"entities": []}) + "\n",
            "text-differs": "".join(json.dumps({**g, "text": g["text"] + "x"}) + "\n" for g in good),
            "count": "".join(json.dumps({k: v for k, v in g.items() if k != "line"}) + "\n" for g in good[:-1]),
            "bad-entity": "".join(json.dumps({**g, "entities": [{"start": "a"}]}) + "\n" for g in good)}
    pred.write_text(body.get(case, "".join(json.dumps(g) + "\n" for g in good)), encoding="utf-8")
    args = ["score", "--gold", str(CLUENER if case != "missing-gold" else workdir / "nope.json"),
            "--predictions", str(pred if case != "missing-pred" else workdir / "nope.jsonl")]
    if case == "bad-option":
        args.append("--formt")
    code, err = run_cli(args, capsys)
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("kslm: error:"), err
    if case not in ("bad-option", "missing-gold"):
        assert "p.jsonl" in lines[0] or "nope.jsonl" in lines[0]


def test_readme_documents_score():
    assert "kslm score --gold" in (REPO / "README.md").read_text(encoding="utf-8")
