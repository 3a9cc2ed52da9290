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
    assert "kslm score --gold" in (REPO / "docs" / "ner.md").read_text(encoding="utf-8")  # the README's NER section


def _synthetic(n):
    """n distinct records, each with one or two entities (types per, loc) at known character offsets."""
    out = []
    for i in range(n):
        name, place = f"人{i:04d}", f"地{i:04d}"
        text = f"{name}去了{place}。"
        ents = [{"start": 0, "end": 5, "type": "per"}]
        if i % 3:
            ents.append({"start": 7, "end": 12, "type": "loc"})
        out.append({"text": text, "entities": ents})
    return out


def _guess(i, rec):
    """A prediction that differs from gold in a way that depends on the record: a miss, a wrong type, or exact (the
    first 12 all exact, so that any 1,000 consecutive records score differently from the last 1,000)."""
    ents = [dict(e) for e in rec["entities"]]
    if i < 12:
        return ents
    if i % 4 == 1:
        ents = ents[:1]
    elif i % 4 == 2:
        ents[0]["type"] = "loc"
    return ents


def _naive(pairs):
    """Per-type P / R / F1 and the macro average by plain set loops over (gold, predicted) entity lists."""
    gold = [{(e["start"], e["end"], e["type"]) for e in g} for g, _ in pairs]
    pred = [{(e["start"], e["end"], e["type"]) for e in p} for _, p in pairs]
    out = {}
    for t in sorted({x[2] for s in gold + pred for x in s}):
        tp = sum(len({x for x in p & g if x[2] == t}) for p, g in zip(pred, gold, strict=True))
        n_p = sum(1 for p in pred for x in p if x[2] == t)
        n_g = sum(1 for g in gold for x in g if x[2] == t)
        out[t] = (tp / n_p if n_p else 0.0, tp / n_g if n_g else 0.0, 2 * tp / (n_p + n_g) if n_p + n_g else 0.0)
    return out, sum(f for _, _, f in out.values()) / len(out)


@pytest.mark.parametrize("blank_line", [False, True])
def test_dev_split_cluener_scores_the_last_1000_records_by_predict_line_numbers(workdir, capsys, blank_line):
    """`--dev_split cluener` scores exactly the last 1,000 records, matched to the predictions by the file line
    `kslm predict` gives each record (a blank line in the file shifts every later record's line)."""
    recs = _synthetic(1012)
    lines, numbers = [], []
    for i, r in enumerate(recs):
        if blank_line and i == 5:
            lines.append("")
        label = {}
        for e in r["entities"]:
            label.setdefault(e["type"], {})[r["text"][e["start"]:e["end"]]] = [[e["start"], e["end"] - 1]]
        lines.append(json.dumps({"text": r["text"], "label": label}, ensure_ascii=False))
        numbers.append(len(lines))  # this record's line in the file, 1-based (what kslm predict writes as "line")
    gold = workdir / "train.json"
    gold.write_text("\n".join(lines) + "\n", encoding="utf-8")
    preds = [{"line": n, "text": r["text"], "entities": _guess(i, r)} for i, (n, r) in enumerate(zip(numbers, recs,
                                                                                                     strict=True))]
    (workdir / "p.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds), encoding="utf-8")
    code, err = run_cli(["score", "--gold", str(gold), "--dev_split", "cluener", "--predictions", "p.jsonl", "--out",
                         "m.json"], capsys)
    assert code == 0, err
    metrics = json.loads((workdir / "m.json").read_text(encoding="utf-8"))
    want, macro = _naive([(r["entities"], _guess(i, r)) for i, r in enumerate(recs)][-1000:])
    assert metrics["records"] == 1000
    for t, prf in want.items():
        got = metrics["per_label"][t]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx(prf, abs=1e-6), t
    assert metrics["macro_f1"] == pytest.approx(macro, abs=1e-6)
    # the first 12 records' predictions alone would score otherwise: the split is what is scored
    assert _naive([(r["entities"], _guess(i, r)) for i, r in enumerate(recs)][:1000])[0] != want


def test_dev_split_cmeee_scores_the_records_after_the_first_3200(workdir, capsys):
    recs = _synthetic(3207)
    body = [{"text": r["text"], "entities": [{"start_idx": e["start"], "end_idx": e["end"] - 1, "type": e["type"],
                                              "entity": r["text"][e["start"]:e["end"]]} for e in r["entities"]]}
            for r in recs]
    (workdir / "cmeee.json").write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
    preds = [{"line": i + 1, "text": r["text"], "entities": _guess(i, r)} for i, r in enumerate(recs)]  # record numbers
    (workdir / "p.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds), encoding="utf-8")
    code, err = run_cli(["score", "--gold", "cmeee.json", "--dev_split", "cmeee", "--predictions", "p.jsonl", "--out",
                         "m.json"], capsys)
    assert code == 0, err
    metrics = json.loads((workdir / "m.json").read_text(encoding="utf-8"))
    want, _ = _naive([(r["entities"], _guess(i, r)) for i, r in enumerate(recs)][3200:])
    assert metrics["records"] == 7
    for t, prf in want.items():
        got = metrics["per_label"][t]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx(prf, abs=1e-6), t


def test_score_types_come_from_gold_and_predictions(workdir, capsys):
    """A type that only the predictions name is scored (precision 0, support 0) and counts in the macro average."""
    recs = _synthetic(9)
    (workdir / "gold.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    preds = [{"line": i + 1, "text": r["text"], "entities": _guess(i, r) + ([{"start": 2, "end": 4, "type": "verb"}]
                                                                          if i % 2 else [])}
             for i, r in enumerate(recs)]
    (workdir / "p.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds), encoding="utf-8")
    code, err = run_cli(["score", "--gold", "gold.jsonl", "--predictions", "p.jsonl", "--out", "m.json"], capsys)
    assert code == 0, err
    metrics = json.loads((workdir / "m.json").read_text(encoding="utf-8"))
    want, macro = _naive([(r["entities"], p["entities"]) for r, p in zip(recs, preds, strict=True)])
    assert set(want) == {"loc", "per", "verb"} == set(metrics["per_label"])
    assert metrics["per_label"]["verb"]["support"] == 0 and metrics["per_label"]["verb"]["precision"] == 0
    for t, prf in want.items():
        got = metrics["per_label"][t]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx(prf, abs=1e-6), t
    assert metrics["macro_f1"] == pytest.approx(macro, abs=1e-6)
