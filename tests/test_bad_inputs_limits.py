"""Issue 13, classes 7 and 9: size and time (a 10 MB record or context is refused — or, for an LM prompt, cut — in
seconds, before the expensive work; NBCE splitting is linear) and leftovers (an input or output path that is not a
file is refused before anything is generated or written, no temporary file survives a killed writer, output files
get the umask's mode, a DDP rank that lost its peer says so in one line)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from bad_inputs import cli, one_error_line
from helpers import REPO, read_jsonl, run_cli, tiny_args

CLUENER = REPO / "data" / "samples" / "cluener.jsonl"
RE_CANONICAL = REPO / "data" / "samples" / "re_canonical.jsonl"
BIG = 10_000_000  # characters
FAST = 60  # seconds: the limit for any input


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def lm_ckpt(tmp_path_factory, small_corpus):
    tmp = tmp_path_factory.mktemp("lm-fit")
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        code, err = run_cli(["fit", *tiny_args(small_corpus, tmp, "--model.backbone.max_length", "64", steps=2)])
    finally:
        os.chdir(cwd)
    assert code == 0, err
    return tmp / "ckpt" / "last.ckpt"


def ner_args(tmp, train=CLUENER, val=CLUENER, *extra):
    return ["--config", str(REPO / "configs/ner/cluener-egp.yaml"), "--data.train_file", str(train),
            "--data.val_file", str(val), "--data.dev_split", "null", "--data.max_length", "32",
            "--model.backbone.d_model", "32", "--model.backbone.n_layers", "1", "--model.backbone.n_heads", "2",
            "--model.head_size", "16", "--trainer.max_steps", "1", "--checkpoint.dirpath", str(tmp / "ckpt"), *extra]


def big_cluener(path, n=BIG):
    small = {"text": "张三是北京人", "label": {"name": {"张三": [[0, 1]]}}}
    big = {"text": "小明在北京大学读书。" * (n // 10), "label": {"name": {"小明": [[0, 1]]}}}
    path.write_text(json.dumps(small, ensure_ascii=False) + "\n" + json.dumps(big, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    return path


@pytest.mark.parametrize("where", ["train", "val"])
def test_ner_10mb_record_refused_before_tokenizing(workdir, capsys, where):
    big = big_cluener(workdir / "big.jsonl")
    files = (big, CLUENER) if where == "train" else (CLUENER, big)
    t0 = time.monotonic()
    one_error_line(*cli(["fit", *ner_args(workdir, *files)], capsys), "big.jsonl:2", "field 'text'",
                   "data.max_text_chars")
    assert time.monotonic() - t0 < FAST


def test_re_10mb_record_refused_before_tokenizing(workdir, capsys):
    big = workdir / "big.jsonl"
    rec = json.loads(RE_CANONICAL.read_text(encoding="utf-8").splitlines()[0])
    big.write_text(json.dumps(rec, ensure_ascii=False) + "\n" + json.dumps({**rec, "text": rec["text"] * (BIG // 20)},
                                                                           ensure_ascii=False) + "\n", encoding="utf-8")
    args = ["--config", str(REPO / "configs/re/duie-gplinker.yaml"), "--data.train_file", str(big),
            "--data.val_file", str(RE_CANONICAL), "--data.format", "canonical", "--model.head_size", "16",
            "--trainer.max_steps", "1", "--checkpoint.dirpath", str(workdir / "ckpt")]
    t0 = time.monotonic()
    one_error_line(*cli(["fit", *args], capsys), "big.jsonl:2", "data.max_text_chars")
    assert time.monotonic() - t0 < FAST


@pytest.mark.parametrize("limit,ok", [("100", False), ("1000", True)])
def test_ner_predict_record_size_limit(workdir, capsys, limit, ok):
    """The limit applies to predict input too (checked on the records read, before tokenizing); under it every
    record is answered."""
    code, err = cli(["fit", *ner_args(workdir)], capsys)
    assert code == 0, err
    recs = workdir / "pred_in.jsonl"
    recs.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in ["北京", "上海" * 150, "x"]),
                    encoding="utf-8")
    args = ["--ckpt_path", str(workdir / "ckpt" / "last.ckpt"), "--data.predict_file", str(recs),
            "--data.max_text_chars", limit, "--predictions.path", str(workdir / "out.jsonl"),
            "--trainer.enable_progress_bar", "false"]
    code, err = cli(["predict", *args], capsys)
    if ok:
        assert code == 0, err
        assert [r["line"] for r in read_jsonl(workdir / "out.jsonl")] == [1, 2, 3]
    else:
        one_error_line(code, err, "pred_in.jsonl:2", "data.max_text_chars 100")


def nbce(lm_ckpt, workdir, capsys, records, *extra):
    path = workdir / "nbce.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    args = ["--config", str(REPO / "configs/nbce/kslm-lm.yaml"), "--model.checkpoint", str(lm_ckpt),
            "--data.predict_file", str(path), "--data.window", "64", "--model.max_new_tokens", "2",
            "--predictions.path", str(workdir / "out.jsonl"), *extra]
    t0 = time.monotonic()
    result = cli(["predict", *args], capsys)
    assert time.monotonic() - t0 < FAST
    return result


SMALL = {"id": "s", "context": "The class statement defines a class.", "question": "What?"}
BIG_NBCE = [
    ({"context": "The import statement loads a module. " * (BIG // 37), "question": "What?"}, "field 'context'"),
    ({"context": "x" * 1_000_000, "question": "What?"}, "field 'context'"),  # no boundary at all
    ({"context": ["short", "y " * (BIG // 2)], "question": "What?"}, "field 'context[1]'"),
    ({"context": "A module.", "question": "Why? " * 200_000}, "field 'question'"),
]


@pytest.mark.parametrize("record,field", BIG_NBCE, ids=["10MB-sentences", "1MB-no-boundary", "10MB-chunk", "1MB-question"])
def test_nbce_huge_input_refused_in_seconds(lm_ckpt, workdir, capsys, record, field):
    one_error_line(*nbce(lm_ckpt, workdir, capsys, [SMALL, record]), "nbce.jsonl:2", field)
    assert not (workdir / "out.jsonl").exists()


def test_nbce_long_context_is_split_and_answered(lm_ckpt, workdir, capsys):
    """60 KB of text in a 64-token window: hundreds of chunks, split linearly, every record answered."""
    long = {"id": "long", "context": "The import statement loads a module. " * 1600, "question": "What?"}
    code, err = nbce(lm_ckpt, workdir, capsys, [SMALL, long])
    assert code == 0, err
    recs = read_jsonl(workdir / "out.jsonl")
    assert [r["id"] for r in recs] == ["s", "long"] and recs[1]["n_contexts"] > 100


@pytest.mark.parametrize("extra,names", [(["--data.window", "0"], "data.window"),
                                         (["--data.max_batch_tokens", "0"], "data.max_batch_tokens"),
                                         (["--data.window", "1000"], "data.window 1000 exceeds the model's window 64")])
def test_nbce_data_option(lm_ckpt, workdir, capsys, extra, names):
    one_error_line(*nbce(lm_ckpt, workdir, capsys, [SMALL], *extra), names)


@pytest.mark.parametrize("text", ["x" * 200_000, "word " * 40_000, "One two. " * 20_000], ids=["run", "words", "sentences"])
def test_split_context_is_linear(text):
    """The characters counted stay a small multiple of the text's (the old splitter counted the whole remaining
    text at every bisection step: quadratic), and every chunk fits."""
    from kslm.data.nbce import split_context

    counted = [0]

    def count(s):
        counted[0] += len(s)
        return (len(s) + 3) // 4  # ~4 characters a token

    chunks = split_context(text, 50, count)
    assert all(count(c) <= 50 for c in chunks) and "".join(chunks).replace(" ", "") == text.replace(" ", "")
    assert counted[0] < 40 * len(text), counted[0] / len(text)


def test_lm_predict_10mb_prompt_is_cut_in_seconds(lm_ckpt, workdir, capsys):
    prompts, out = workdir / "p.txt", workdir / "out.jsonl"
    prompts.write_text("short\n" + "The module defines a class. " * (BIG // 28) + "\nlast\n", encoding="utf-8")
    t0 = time.monotonic()
    code, err = cli(["predict", "--ckpt_path", str(lm_ckpt), "--data.predict_file", str(prompts), "--predictions.path",
                     str(out), "--model.max_new_tokens", "2"], capsys)
    assert code == 0, err
    assert time.monotonic() - t0 < FAST
    recs = read_jsonl(out)
    assert [r["line"] for r in recs] == [1, 2, 3] and recs[1]["prompt_chars_dropped"] > BIG - 1000
    assert "kslm: warning: 1 prompt(s) longer than the window" in err


# ------------------------------------------------------------------------------------------------ leftovers
def predict(ckpt, prompts, out, capsys, *extra):
    return cli(["predict", "--ckpt_path", str(ckpt), "--data.predict_file", str(prompts), "--predictions.path", str(out),
                "--model.max_new_tokens", "2", *extra], capsys)


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_prompt_file_that_is_not_a_file(lm_ckpt, workdir, capsys, what):
    prompts = workdir / ("missing.txt" if what == "missing" else "folder")
    if what == "directory":
        prompts.mkdir()
    one_error_line(*predict(lm_ckpt, prompts, workdir / "out.jsonl", capsys), "data.predict_file", prompts.name)


@pytest.mark.parametrize("out", ["outdir", "outdir/", "afile/out.jsonl"])
def test_output_path_refused_before_generation(lm_ckpt, workdir, capsys, out):
    (workdir / "outdir").mkdir()
    (workdir / "afile").write_text("x")
    prompts = workdir / "p.txt"
    prompts.write_text("The module\n", encoding="utf-8")
    code, err = predict(lm_ckpt, prompts, workdir / out, capsys)
    one_error_line(code, err, "predictions.path")
    assert "wrote" not in err and list((workdir / "outdir").iterdir()) == []


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640)], ids=["022", "027"])
def test_predictions_and_tokenizer_get_the_umask_mode(lm_ckpt, workdir, capsys, umask, mode):
    prompts, out = workdir / "p.txt", workdir / "out.jsonl"
    prompts.write_text("The module\n", encoding="utf-8")
    old = os.umask(umask)
    try:
        code, err = cli(["predict", "--ckpt_path", str(lm_ckpt), "--data.predict_file", str(prompts),
                         "--predictions.path", str(out), "--model.max_new_tokens", "2"], capsys)
        from kslm.data.tokenizer import cached_tokenizer

        tok = cached_tokenizer(workdir / "tok.json", lambda: iter(["some text to train on"] * 10), "char", 50)
    finally:
        os.umask(old)
    assert code == 0, err and tok
    assert (out.stat().st_mode & 0o777, (workdir / "tok.json").stat().st_mode & 0o777) == (mode, mode)


def test_stale_temp_of_a_killed_writer_is_removed_by_the_next_write(lm_ckpt, workdir, capsys):
    """A dead writer's temporary file (SIGKILL cannot be caught) goes at the next write of the same target; a live
    process's, or another target's, stays."""
    prompts, out = workdir / "p.txt", workdir / "out.jsonl"
    prompts.write_text("The module\n", encoding="utf-8")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale, live, other = (workdir / f".out.jsonl.{dead.pid}.abcd.tmp", workdir / ".out.jsonl.1.abcd.tmp",
                          workdir / f".out.jsonl.bak.{dead.pid}.abcd.tmp")
    for p in (stale, live, other):
        p.write_text("partial")
    code, err = cli(["predict", "--ckpt_path", str(lm_ckpt), "--data.predict_file", str(prompts),
                     "--predictions.path", str(out), "--model.max_new_tokens", "2"], capsys)
    assert code == 0, err
    assert not stale.exists() and live.exists() and other.exists() and len(read_jsonl(out)) == 1


WRITER = """
import sys, time
from pathlib import Path
from kslm.io import atomic_open, sigterm_raises
with sigterm_raises():
    with atomic_open(Path(sys.argv[1])) as f:
        f.write("partial")
        print("ready", flush=True)
        time.sleep(60)
"""


@pytest.mark.parametrize("sig,left", [(signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGKILL, True)],
                         ids=["SIGTERM", "SIGINT", "SIGKILL"])
def test_killed_writer_leaves_no_partial_file(tmp_path, sig, left):
    target = tmp_path / "out.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    # SIGINT as from a terminal: pytest-xdist's workers ignore it, and an ignored SIGINT is inherited through exec
    # (Python then installs no KeyboardInterrupt handler); the child starts with the default disposition instead
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    assert len(list(tmp_path.glob(".out.jsonl.*.tmp"))) == 1
    proc.send_signal(sig)
    proc.wait(timeout=30)
    assert proc.returncode == {signal.SIGTERM: 143, signal.SIGINT: -2, signal.SIGKILL: -9}[sig]
    assert not target.exists() and bool(list(tmp_path.glob(".out.jsonl.*.tmp"))) == left
    if left:  # SIGKILL: the next write of the target removes the dead writer's file
        from kslm.io import write_text

        write_text(target, "done")
        assert target.read_text() == "done" and not list(tmp_path.glob(".out.jsonl.*.tmp"))


@pytest.mark.parametrize("exc,code,names", [
    (RuntimeError("[pair.cc:553] Connection closed by peer [127.0.0.1]:1234. This is typically caused by a crash"), 1,
     ["DDP rank 1 of 2: rank 0 stopped", "Connection closed by peer"]),
    (RuntimeError("[pair.cc:537] Read error [127.0.0.1]:99: Connection reset by peer"), 1, ["rank 1 of 2", "reset"]),
    (KeyboardInterrupt(), 130, ["kslm: interrupted"]),
], ids=["gloo-closed", "gloo-reset", "ctrl-c"])
def test_run_stopped_from_outside_is_one_line(monkeypatch, capsys, exc, code, names):
    import torch.distributed as dist

    import kslm.cli
    import kslm.cli.trainer

    def stopped(**kwargs):
        raise exc

    monkeypatch.setattr(kslm.cli.trainer, "KslmCLI", stopped)  # (kslm fit runs it: kslm.cli is the front door)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda *a: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda *a: 2)
    with pytest.raises(SystemExit) as stop:
        kslm.cli.main(["fit"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("kslm:")]
    assert stop.value.code == code and len(lines) == 1 and "Traceback" not in err, err
    assert all(n in lines[0] for n in names), lines[0]


def test_other_runtime_errors_are_not_taken_for_a_lost_rank(monkeypatch):
    import torch.distributed as dist

    import kslm.cli
    import kslm.cli.trainer

    def broken(**kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(kslm.cli.trainer, "KslmCLI", broken)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    with pytest.raises(RuntimeError, match="shape mismatch"):  # a bug keeps its traceback
        kslm.cli.main(["fit"])
