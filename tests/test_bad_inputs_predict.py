"""Issue 13, class 6: LM predict. Every prompt is answered (records in = records out, in input order); a bad record
is one line naming its file and line (or JSON record) and field; the generation options and the output path are
checked before any prompt is generated; an input without prompts writes an empty file and says so."""

import json
import os

import pytest
from bad_inputs import cli, one_error_line
from helpers import read_jsonl, run_cli, tiny_args

WINDOW = 64  # the fitted model's max_length: prompt + </s> + new tokens


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, small_corpus):
    tmp = tmp_path_factory.mktemp("lm-fit")
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        code, err = run_cli(["fit", *tiny_args(small_corpus, tmp, "--model.backbone.max_length", str(WINDOW), steps=2)])
    finally:
        os.chdir(cwd)
    assert code == 0, err
    return tmp / "ckpt" / "last.ckpt"


def predict(ckpt, prompts, out, capsys, *extra):
    """`kslm predict --ckpt_path …` (the checkpoint's own settings, no config) → (code, stderr)."""
    args = ["--ckpt_path", str(ckpt), "--data.predict_file", str(prompts), "--model.max_new_tokens", "2",
            "--trainer.enable_progress_bar", "false", *(["--predictions.path", str(out)] if out else []), *extra]
    return cli(["predict", *args], capsys)


LONG = "The class statement defines a class. " * 60  # far more than the window's 61 prompt tokens

# (file name, content, the expected (line, prompt) of each output record)
VALID = [
    ("p.txt", "The module\n\nA class is\nImport\n", [(1, "The module"), (3, "A class is"), (4, "Import")]),
    ("crlf.txt", "The module\r\nA class\r\n", [(1, "The module"), (2, "A class")]),
    ("p.jsonl", '{"prompt": "The module", "id": "a"}\n\n{"prompt": "A class", "id": 7}\n', [(1, "The module"), (3, "A class")]),
    ("p.json", json.dumps([{"prompt": "The module", "id": 1}, {"prompt": "A class"}, {"prompt": ""}]),
     [(1, "The module"), (2, "A class"), (3, "")]),
    ("strings.json", json.dumps(["The module", "A class"]), [(1, "The module"), (2, "A class")]),
    ("upper.JSON", json.dumps(["The module"]), [(1, "The module")]),
    ("long.txt", f"short\n{LONG}\nlast\n", [(1, "short"), (2, LONG), (3, "last")]),
]


@pytest.mark.parametrize("name,content,expected", VALID, ids=[v[0] for v in VALID])
def test_every_prompt_is_answered(ckpt, workdir, capsys, name, content, expected):
    prompts, out = workdir / name, workdir / "out.jsonl"
    prompts.write_bytes(content.encode("utf-8"))
    code, err = predict(ckpt, prompts, out, capsys)
    assert code == 0, err
    recs = read_jsonl(out)
    assert [(r["line"], r["prompt"]) for r in recs] == expected  # records in = records out, in order
    assert all(isinstance(r["generation"], str) and 0 < len(r["token_ids"]) <= 2 or r["token_ids"] == [] for r in recs)
    assert f"wrote {len(expected)} predictions" in err
    if name == "p.jsonl":
        assert [r["id"] for r in recs] == ["a", 7]  # the records' own fields are kept
    cut = [r for r in recs if "prompt_chars_dropped" in r]
    if name == "long.txt":  # kept its last tokens: reported in its record and in one warning naming its line
        assert [r["line"] for r in cut] == [2] and 0 < cut[0]["prompt_chars_dropped"] < len(LONG)
        assert "kslm: warning: 1 prompt(s) longer than the window" in err and "lines 2" in err
    else:
        assert not cut


@pytest.mark.parametrize("name,content", [("empty.txt", ""), ("blank.txt", "\n \n\n"), ("empty.jsonl", ""),
                                          ("empty.json", "[]")])
def test_input_without_prompts_writes_an_empty_file(ckpt, workdir, capsys, name, content):
    prompts, out = workdir / name, workdir / "out.jsonl"
    prompts.write_text(content, encoding="utf-8")
    code, err = predict(ckpt, prompts, out, capsys)
    assert code == 0, err
    assert out.is_file() and out.read_text() == ""
    assert "wrote 0 predictions" in err and "holds no records" in err


@pytest.mark.parametrize("content,n", [("The module\nA class\n", 2), ("", 0)], ids=["two", "empty"])
def test_standard_output_gets_one_line_per_prompt(ckpt, workdir, capsys, content, n):
    prompts = workdir / "p.txt"
    prompts.write_text(content, encoding="utf-8")
    args = ["--ckpt_path", str(ckpt), "--data.predict_file", str(prompts), "--model.max_new_tokens", "2"]
    code, out, err = cli(["predict", *args], capsys, stdout=True)
    assert code == 0, err
    assert [json.loads(line)["line"] for line in out.splitlines()] == list(range(1, n + 1))
    assert ("holds no records" in err) == (n == 0)


def test_sampling_answers_every_prompt(ckpt, workdir, capsys):
    prompts, out = workdir / "p.jsonl", workdir / "out.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["a", "b", "c", "d"]), encoding="utf-8")
    code, err = predict(ckpt, prompts, out, capsys, "--model.temperature", "1", "--model.top_p", "0.5")
    assert code == 0, err
    assert [r["line"] for r in read_jsonl(out)] == [1, 2, 3, 4]


# (file name, content, what the one line names)
BAD_RECORDS = [
    ("obj.json", '{"prompt": "x"}', ["obj.json", "JSON array"]),
    ("text.json", json.dumps([{"prompt": "a"}, {"text": "b"}]), ["text.json:record 1", "field 'prompt'"]),
    ("number.json", json.dumps(["a", 3]), ["number.json:record 1", "got int"]),
    ("broken.json", '[{"prompt": "a"},\n {"prompt": }]', ["broken.json:2", "invalid JSON"]),
    ("noprompt.jsonl", '{"prompt": "a"}\n{"text": "b"}\n', ["noprompt.jsonl:2", "field 'prompt'"]),
    ("intprompt.jsonl", '{"prompt": 5}\n', ["intprompt.jsonl:1", "field 'prompt'"]),
    ("nullprompt.jsonl", '{"prompt": "a"}\n{"prompt": null}\n', ["nullprompt.jsonl:2", "field 'prompt'"]),
    ("line.jsonl", '{"prompt": "a", "line": 9}\n', ["line.jsonl:1", "field 'line'"]),
    ("broken.jsonl", '{"prompt": "a"}\n{"prompt": "b"\n', ["broken.jsonl:2", "invalid JSON"]),
    ("array.jsonl", '["a"]\n', ["array.jsonl:1", "JSON object"]),
]


@pytest.mark.parametrize("name,content,names", BAD_RECORDS, ids=[b[0] for b in BAD_RECORDS])
def test_bad_prompt_record_names_file_line_and_field(ckpt, workdir, capsys, name, content, names):
    prompts, out = workdir / name, workdir / "out.jsonl"
    prompts.write_text(content, encoding="utf-8")
    one_error_line(*predict(ckpt, prompts, out, capsys), *names)
    assert not out.exists() and not [p for p in workdir.iterdir() if p.name.endswith(".tmp")]


# (options, what the line names): refused before the first prompt is generated
BAD_OPTIONS = [
    (["--model.temperature", "-1"], "model.temperature"),
    (["--model.temperature", "1", "--model.top_p", "0"], "model.top_p"),
    (["--model.top_p", "2"], "model.top_p"),
    (["--model.max_new_tokens", "0"], "model.max_new_tokens"),
    (["--model.max_new_tokens", str(WINDOW - 1)], "model.max_new_tokens 63 leaves no room"),
    (["--data.seq_len", "100"], "data.seq_len 100 exceeds the checkpoint's backbone.max_length 64"),
    (["--trainer.devices", "0"], "trainer.devices"),
    (["--trainer.accelerator", "tpuz"], "trainer.accelerator"),
    (["--data.batch_size", "0"], "data.batch_size"),
]


@pytest.mark.parametrize("extra,names", BAD_OPTIONS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_generation_option_stops_before_any_prompt(ckpt, workdir, capsys, extra, names):
    prompts, out = workdir / "p.txt", workdir / "out.jsonl"
    prompts.write_text("The module\n", encoding="utf-8")
    one_error_line(*predict(ckpt, prompts, out, capsys, *extra), names)
    assert not out.exists()
