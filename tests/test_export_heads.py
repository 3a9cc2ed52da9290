"""NER / RE exports carry their head: `AutoModelForTokenClassification.from_pretrained(DIR, trust_remote_code=True)`
is KslmForExtraction (GlobalPointer or GPLinker as the export's task says), whose `extract(texts, tokenizer)` equals `kslm predict`'s records and
whose forward on `tokenizer(text)` gives the same entities / triples as token spans; the model card and kslm.json
record the run's last validation metrics, equal to what TensorBoard logged."""

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from helpers import CANONICAL, CLUENER, read_jsonl, run_cli  # noqa: E402
from test_export import export, lm_checkpoint, tokenizer  # noqa: E402, F401

LONG = "张三在北京大学读书，李四说李四很忙，玩了一下午NBA2K和CSOL游戏，然后张三去了北京大学。"  # > one 32-token window


def _texts(task):
    sample = CLUENER if task == "ner" else CANONICAL
    return [r["text"] for r in read_jsonl(sample)] + [LONG, "没有实体"]


def _predict(ckpt, texts, folder, capsys):
    (folder / "in.jsonl").write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts),
                                     encoding="utf-8")
    code, err = run_cli(["predict", "--ckpt_path", str(ckpt), "--data.predict_file", str(folder / "in.jsonl"),
                         "--predictions.path", str(folder / "p.jsonl"), "--trainer.enable_progress_bar", "false"],
                        capsys)
    assert code == 0, err
    return read_jsonl(folder / "p.jsonl")


def _char_items(task, text, offsets, row_items):
    """Token spans / triples of one `<s> text </s>` row → (start, end, type) / (subject, predicate, object, spans)."""
    if task == "ner":
        return sorted((offsets[i][0], offsets[j][1], t) for i, j, t in row_items)
    out = set()
    for sh, st, p, oh, ot in row_items:
        s, o = (offsets[sh][0], offsets[st][1]), (offsets[oh][0], offsets[ot][1])
        out.add((text[s[0]:s[1]], p, text[o[0]:o[1]], s, o))
    return sorted(out)


@pytest.mark.parametrize("task", ["ner", "re"])
def test_head_class_equals_kslm_predict(ckpts, tmp_path, capsys, task):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    texts = _texts(task)
    records = _predict(ckpts[task], texts, tmp_path, capsys)
    export(ckpts[task], tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text(encoding="utf-8"))
    cls = "KslmForExtraction"
    assert config["architectures"] == [cls] and config["auto_map"]["AutoModelForTokenClassification"] == f"modeling_kslm.{cls}"
    assert not (tmp_path / "out" / "head.safetensors").exists()  # the head's weights are in model.safetensors
    model = AutoModelForTokenClassification.from_pretrained(str(tmp_path / "out"), trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "out"), trust_remote_code=True)
    assert type(model).__name__ == cls
    key = "entities" if task == "ner" else "triples"
    assert model.extract(texts, tok) == [{"text": r["text"], key: r[key]} for r in records]
    assert sum(len(r[key]) for r in records) >= 2  # something predicted: the comparison can fail
    # one window: forward on tokenizer(text) (<s> text </s>) gives the same items as token spans
    window = json.loads((tmp_path / "out" / "kslm.json").read_text(encoding="utf-8"))["data"]["max_length"]
    checked = 0
    for rec in records:
        enc = tok(rec["text"], return_offsets_mapping=True, return_tensors="pt")
        ids = enc["input_ids"][0].tolist()
        assert ids[0] == tok.convert_tokens_to_ids("<s>") and ids[-1] == tok.convert_tokens_to_ids("</s>")
        if len(ids) > window:
            continue
        with torch.no_grad():
            out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        offsets = [tuple(o) for o in enc["offset_mapping"][0].tolist()]
        got = _char_items(task, rec["text"], offsets, out.spans[0] if task == "ner" else out.triples[0])
        if task == "ner":
            want = sorted((e["start"], e["end"], e["type"]) for e in rec["entities"])
        else:
            want = sorted((t["subject"], t["predicate"], t["object"], tuple(t["subject_span"]), tuple(t["object_span"]))
                          for t in rec["triples"])
        assert got == want, rec["text"]
        checked += bool(want)
    assert checked >= 1


def _tensorboard(folder: Path) -> dict:
    """tag → (step, value) of the last event of every val/ scalar a run logged."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for events in sorted(folder.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            if tag.startswith("val/"):
                last = acc.Scalars(tag)[-1]
                out[tag] = (last.step, last.value)
    return out


@pytest.mark.parametrize("task", ["lm", "ner", "re"])
def test_card_records_the_last_validation(ckpts, tmp_path, task):
    """kslm.json and the card hold the metrics of the run's last validation, as TensorBoard logged them (val/loss,
    and the extraction tasks' val/f1 with its per-label values), at the step it ran."""
    logged = _tensorboard(Path(ckpts[task]).parents[1] / "logs")
    assert "val/loss" in logged and (task == "lm" or "val/f1" in logged)
    export(ckpts[task], tmp_path / "out")
    trained = json.loads((tmp_path / "out" / "kslm.json").read_text(encoding="utf-8"))["trained"]
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert set(trained["metrics"]) == set(logged)
    steps = {s for s, _ in logged.values()}
    # Lightning writes a validation's scalars under the index of the last training batch (global step − 1)
    assert steps == {trained["validated_at_step"] - 1}
    assert trained["validated_at_step"] == trained["global_step"]  # these runs validate at their last step
    for tag, (_, value) in logged.items():
        assert trained["metrics"][tag] == pytest.approx(value, rel=1e-6, abs=1e-7), tag
        assert f"- {tag}: {trained['metrics'][tag]:.6g}" in card
    assert f"last validation (step {trained['validated_at_step']})" in card and "none recorded" not in card


def test_a_malformed_metrics_record_is_one_line(tokenizer, tmp_path, capsys):  # noqa: F811
    """A checkpoint is data from anyone: a metrics entry that is not {step, metrics: {name: float}} is refused."""
    ckpt, _ = lm_checkpoint(tmp_path / "m.ckpt", tokenizer)
    raw = torch.load(ckpt, weights_only=True)
    raw["kslm_metrics"] = {"step": 3, "metrics": {"val/loss\n# injected": 1.0}}
    torch.save(raw, ckpt)
    code, err = run_cli(["export", "--ckpt_path", str(ckpt), "--out", str(tmp_path / "out")], capsys)
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and "invalid kslm_metrics entry" in lines[0] and "--ckpt_path" in lines[0], err
    assert not (tmp_path / "out").exists()
