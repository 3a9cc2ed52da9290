"""`kslm test` on a real test split (--data.test_file) for NER, RE and LM, its fallback note, and the sample
generations an LM fit logs at each validation (TensorBoard text) without changing what it trains."""

import json
import re
from collections import Counter

import pytest
import torch
from helpers import CANONICAL, CLUENER, run_cli, scalars, tiny_args
from torch.nn import functional as F


def _events(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = []
    for events in sorted(logdir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        out.append(acc)
    return out


def _table_supports(err: str) -> dict:
    """{row name: support} of the per-type table kslm prints at the end of validate / test."""
    rows = {}
    for line in err.splitlines():
        parts = line.rsplit(None, 4)
        if len(parts) == 5 and parts[-1].isdigit():
            rows[parts[0]] = int(parts[-1])
    return rows


def _test(args, capsys):
    code, _ = run_cli(["test", *args])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out


def test_ner_test_file_is_evaluated_and_logged_as_test(ckpts, workdir, capsys):
    lines = CLUENER.read_text(encoding="utf-8").splitlines()[:2]  # a test split unlike the validation file (all 4)
    (workdir / "test.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = _test(["--ckpt_path", str(ckpts["ner"]), "--data.test_file", "test.jsonl"], capsys)
    labels = [json.loads(line)["label"] for line in lines]  # CLUENER: {type: {entity text: [[start, end], …]}}
    gold = Counter(t for label in labels for t, ents in label.items() for spans in ents.values() for _ in spans)
    supports = _table_supports(out.err)
    assert "kslm: test scores per entity type" in out.err and "note: no --data.test_file" not in out.err
    assert {k: supports.get(k, 0) for k in ("game", "name", "organization")} == dict(gold)
    assert supports["micro avg"] == sum(gold.values())
    logged = scalars(workdir / "logs")
    assert not [k for k in logged if k.startswith("val/")]
    for key in ("test/loss", "test/f1", "test/precision", "test/recall", "test/macro_f1", "test/f1/game",
                "test/precision/name", "test/recall/organization"):
        assert key in logged, sorted(logged)
    # one results line (Lightning's "Test metric" table is not printed: nothing on standard output)
    assert re.search(r"^kslm: test: test/loss [\d.]+ \| test/f1 [\d.]+% ", out.err, re.M) and out.out == ""
    assert "val/loss" not in out.err


def test_re_test_file_is_evaluated_and_logged_as_test(ckpts, workdir, capsys):
    lines = CANONICAL.read_text(encoding="utf-8").splitlines()[:3]
    (workdir / "test.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = _test(["--ckpt_path", str(ckpts["re"]), "--data.test_file", "test.jsonl"], capsys)
    gold = Counter(t["predicate"] for line in lines for t in json.loads(line)["triples"])
    supports = _table_supports(out.err)
    assert {p: supports[p] for p in gold} == dict(gold) and supports["micro avg"] == sum(gold.values())
    logged = scalars(workdir / "logs")
    assert not [k for k in logged if k.startswith("val/")]
    assert {"test/loss", "test/f1", "test/macro_f1", *(f"test/f1/{p}" for p in gold)} <= set(logged)
    assert re.search(r"^kslm: test: test/loss [\d.]+ \| test/f1 [\d.]+% ", out.err, re.M) and out.out == ""
    assert "val/" not in out.err


def test_lm_test_file_loss_equals_an_independent_computation(ckpts, workdir, capsys):
    from pydoc_data.topics import topics

    from kslm.data.tokenizer import EOS_ID
    from kslm.tasks.lm import LanguageModel

    text = " ".join(topics["assert"].split())[:1500]  # one paragraph: one document, then </s>
    (workdir / "held_out.txt").write_text(text, encoding="utf-8")
    out = _test(["--ckpt_path", str(ckpts["lm"]), "--data.test_file", "held_out.txt"], capsys)
    assert "note:" not in out.err and re.search(r"^kslm: test: test/loss [\d.]+ \| test/ppl [\d.]+$", out.err, re.M)
    model = LanguageModel.load_from_checkpoint(ckpts["lm"]).eval()
    T = model.data_settings["seq_len"] + 1
    ids = model.tokenizer.encode(text).ids + [EOS_ID]
    blocks = torch.tensor([ids[i:i + T] for i in range(0, len(ids) // T * T, T)])
    assert len(blocks) >= 2
    with torch.no_grad():
        logits = model.backbone.logits(model.backbone(blocks[:, :-1])).double()
    expected = F.cross_entropy(logits.flatten(0, 1), blocks[:, 1:].flatten()).item()
    assert scalars(workdir / "logs")["test/loss"] == pytest.approx(expected, rel=1e-5)


def test_without_test_file_kslm_test_says_it_evaluates_the_validation_split(ckpts, small_corpus, workdir, capsys):
    out = _test(["--ckpt_path", str(ckpts["lm"]), "--data.data_files", str(small_corpus),
                 "--trainer.limit_test_batches", "1"], capsys)
    notes = [line for line in out.err.splitlines() if line.startswith("kslm: note:")]
    assert len(notes) == 1 and "validation" in notes[0]
    assert "test/loss" in scalars(workdir / "logs")


@pytest.mark.parametrize("task, name, content, message", [
    ("ner", "test.jsonl", '{"text": "x", "label": {"zzz": {"x": [[0, 0]]}}}\n', "entity types ['zzz']"),
    ("ner", "absent.jsonl", None, "file not found"),
    ("re", "test.jsonl", "", "no test records"),
    ("lm", "held_out.csv", "a,b\n", "unsupported file type '.csv'"),
])
def test_bad_test_file_is_one_line(ckpts, workdir, capsys, task, name, content, message):
    if content is not None:
        (workdir / name).write_text(content, encoding="utf-8")
    code, err = run_cli(["test", "--ckpt_path", str(ckpts[task]), "--data.test_file", name], capsys)
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("kslm: error:") and message in last and "data.test_file" in last, err


def test_lm_samples_are_logged_and_change_nothing_trained(small_corpus, workdir, capsys, monkeypatch):
    """Two 4-step fits validating at steps 2 and 4, with and without samples: the same losses bit for bit and the
    same final weights; only the first logs val/samples (a prompt and its greedy continuation per sample)."""
    runs = {}
    for name, extra in (("with", []), ("without", ["--model.sample_count", "0"])):
        folder = workdir / name
        folder.mkdir()
        monkeypatch.chdir(folder)  # its own ./logs
        args = tiny_args(small_corpus, folder, "--trainer.val_check_interval", "2", "--trainer.log_every_n_steps", "1",
                         "--model.sample_tokens", "8", *extra, steps=4)
        code, err = run_cli(["fit", *args], capsys)
        assert code == 0, err
        acc = _events(folder / "logs")
        losses = {tag: [e.value for a in acc if tag in a.Tags()["scalars"] for e in a.Scalars(tag)]
                  for tag in ("train/loss", "val/loss")}
        texts = [(e.step, e.tensor_proto.string_val[0].decode()) for a in acc for tag in a.Tags()["tensors"]
                 if tag.startswith("val/samples") for e in a.Tensors(tag)]
        state = torch.load(folder / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]
        runs[name] = (losses, texts, state)
    (with_losses, texts, with_state), (without_losses, no_texts, without_state) = runs["with"], runs["without"]
    assert with_losses == without_losses and len(with_losses["val/loss"]) == 2 and len(with_losses["train/loss"]) == 4
    assert all(torch.equal(with_state[k], without_state[k]) for k in with_state)
    assert no_texts == [] and [step for step, _ in texts] == [2, 4]
    assert all(t.count("prompt / continuation") == 2 for _, t in texts)
