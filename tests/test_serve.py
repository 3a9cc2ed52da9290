"""kslm serve and kslm.load over the one inference core: a server on an ephemeral loopback port answers exactly the
records `kslm predict` writes (NER, RE, LM), every bad-request class is a one-line JSON 4xx after which the server
keeps answering, concurrent clients are batched and each gets its own records, and SIGTERM with requests in flight
answers them before exiting 0. Checkpoints are crafted (untrained tiny models), so no case trains."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch
from helpers import REPO, read_jsonl, run_cli, save_untrained

from kslm.data.tokenizer import train_tokenizer
from kslm.errors import DataError
from kslm.nn import BackboneConfig
from kslm.tasks.lm import LanguageModel
from kslm.tasks.ner import EntityExtraction
from kslm.tasks.re import RelationExtraction

TEXTS = ["张三在北京", "李四和王五去了上海。", "Alan Bean is a pilot", "甲乙丙丁" * 20, "C D"]
PROMPTS = ["张三", "Alan", "王五去了"]


def _craft(path, task, tok, labels=None, data=None):
    torch.manual_seed(0)
    task.connect(tok, labels, None, data)
    task.build(tok)
    with torch.no_grad():  # away from the init so that the heads find spans and the LM says something
        for p in task.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    save_untrained(task, path)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    tok = train_tokenizer(TEXTS + PROMPTS, "char", 200, 1)
    tmp = tmp_path_factory.mktemp("serve")
    bb = dict(d_model=16, n_layers=1, n_heads=2, qk_dim=8)
    ex = {"max_length": 16, "stride": None, "batch_size": 2}  # (windows of 16: the long text is windowed)
    return {
        "ner": _craft(tmp / "ner.ckpt", EntityExtraction(backbone=BackboneConfig(**bb, mask="bidirectional"), head_size=8,
                                                         types=["LOC", "PER"]), tok, ["LOC", "PER"], ex),
        "re": _craft(tmp / "re.ckpt", RelationExtraction(backbone=BackboneConfig(**bb, mask="bidirectional"), head_size=8,
                                                         predicates=["is", "lives"]), tok, ["is", "lives"], ex),
        "lm": _craft(tmp / "lm.ckpt", LanguageModel(backbone=BackboneConfig(**bb, max_length=128)), tok,
                     data={"seq_len": 16, "batch_size": 2}),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    def __init__(self, ckpt, *extra):
        self.port = _free_port()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([sys.executable, "-m", "kslm.cli", "serve", "--ckpt_path", str(ckpt), "--port",
                                      str(self.port), *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stderr.read()
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError("the server did not become healthy in 180 s")

    def request(self, method, path, body=None, headers=None):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get(self, path):
        return self.request("GET", path)

    def post(self, obj=None, raw=None, headers=None):
        body = raw if raw is not None else json.dumps(obj, ensure_ascii=False).encode("utf-8")
        return self.request("POST", "/predict", body, headers)

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture(scope="module")
def ner_server(ckpts):
    server = Served(ckpts["ner"], "--max_records", "50", "--max_request_bytes", "20000", "--max_batch_size", "8",
                    "--batch_timeout", "0.05")
    yield server
    server.stop()


def _predicted(tmp_path, ckpt, inputs, name, capsys, *extra):
    """kslm predict's records for `inputs` (a JSON-lines file of them, or a text file of prompts)."""
    path = tmp_path / name
    if name.endswith(".txt"):
        path.write_text("".join(f"{p}\n" for p in inputs), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in inputs), encoding="utf-8")
    out = tmp_path / f"{name}.out.jsonl"
    code, err = run_cli(["predict", "--ckpt_path", str(ckpt), "--data.predict_file", str(path), "--predictions.path",
                         str(out), "--trainer.enable_progress_bar", "false", *extra], capsys)
    assert code == 0, err
    return read_jsonl(out)


@pytest.mark.parametrize("task", ["ner", "re", "lm"])
def test_load_predict_and_serve_give_the_records_kslm_predict_writes(ckpts, ner_server, tmp_path, capsys, task):
    import kslm

    inputs = PROMPTS if task == "lm" else TEXTS
    want = _predicted(tmp_path, ckpts[task], inputs, "in.txt" if task == "lm" else "in.jsonl", capsys)
    assert len(want) == len(inputs) and any(r.get("entities") or r.get("triples") or r.get("generation") for r in want)
    model = kslm.load(ckpts[task])
    assert model.predict(inputs) == want
    assert model.predict(inputs[0]) == want[0] and model.task == task
    server = ner_server if task == "ner" else Served(ckpts[task])
    try:
        status, body = server.post(inputs)
        assert status == 200 and json.loads(body) == want
        # byte for byte, each record as kslm predict writes it
        assert [json.dumps(r, ensure_ascii=False) for r in json.loads(body)] == \
            [json.dumps(r, ensure_ascii=False) for r in want]
        status, body = server.post(inputs[1] if task == "lm" else {"text": inputs[1]})
        assert status == 200 and {**json.loads(body), "line": 2} == want[1]
        info = json.loads(server.get("/info")[1])
        assert info["task"] == task and info["kslm_version"] == kslm.__version__ and len(info["checkpoint_sha256"]) == 64
        assert info["labels"] == model.labels
    finally:
        if server is not ner_server:
            server.stop()


def test_the_api_raises_kslm_errors_naming_the_record(ckpts):
    import kslm

    model = kslm.load(ckpts["ner"])
    with pytest.raises(DataError, match=r"^record 1, field 'text': missing or not a string"):
        model.predict(["ok", {"txt": "x"}])
    with pytest.raises(DataError, match=r"^record 0, field 'text': empty text"):
        model.predict([""])
    assert model.predict([]) == []


BAD = [  # (body bytes, headers, status, words the error names)
    (b'{"text": ', {}, 400, "not valid JSON"),
    (b"\xff\xfe{}", {}, 400, "not UTF-8"),
    (b"", {}, 400, "empty"),
    (b"[" * 5000 + b"]" * 5000, {}, 400, "nested deeper than 100"),
    (b"42", {}, 422, "got int"),
    (b'{"txt": "x"}', {}, 422, "record 0, field 'text'"),
    (b'["ok", {"text": 7}]', {}, 422, "record 1, field 'text'"),
    (b'[{"text": ""}]', {}, 422, "empty text"),
    (json.dumps(["a"] * 51).encode(), {}, 413, "51 records exceed 50"),
    (json.dumps({"text": "长" * 10000}, ensure_ascii=False).encode(), {}, 413, "exceeds 20,000"),
    (b'{"text": "form-encoded by curl -d"}', {"Content-Type": "application/x-www-form-urlencoded"}, 200, None),
]


def test_bad_requests_are_one_line_4xx_and_the_server_keeps_serving(ner_server):
    for body, headers, status, words in BAD:
        got, answer = ner_server.post(raw=body, headers=headers)
        assert got == status, (body[:40], got, answer[:300])
        if words is not None:
            error = json.loads(answer)["error"]
            assert words in error and "\n" not in error and "Traceback" not in error, error
        assert ner_server.post({"text": "张三在北京"})[0] == 200
    assert ner_server.request("GET", "/predict")[0] == 405


def test_a_model_side_refusal_fails_only_its_own_request(ckpts, tmp_path):
    """data.max_text_chars is checked by the model's data module: in a batch with good requests, only the long one is
    refused (422); the others are answered."""
    import kslm

    server = Served(ckpts["ner"], "--max_batch_size", "8", "--batch_timeout", "0.3")
    try:
        results = {}

        def go(i, body):
            results[i] = server.post(body)

        long = {"text": "长" * 100_001}
        threads = [threading.Thread(target=go, args=(i, long if i == 2 else {"text": TEXTS[i]})) for i in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert results[2][0] == 422 and "max_text_chars" in json.loads(results[2][1])["error"]
        model = kslm.load(ckpts["ner"])
        for i in (0, 1, 3):
            assert results[i][0] == 200 and json.loads(results[i][1]) == model.predict(TEXTS[i])
    finally:
        server.stop()


def test_concurrent_clients_each_get_their_own_records(ckpts, ner_server):
    import kslm

    model = kslm.load(ckpts["ner"])
    want = {i: model.predict(TEXTS[i % len(TEXTS)]) for i in range(16)}
    results = {}

    def client(i):
        results[i] = ner_server.post({"text": TEXTS[i % len(TEXTS)]})

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for i in range(16):
        assert results[i][0] == 200 and json.loads(results[i][1]) == want[i]


def test_sigterm_answers_the_requests_in_flight_then_exits_0(ckpts):
    server = Served(ckpts["ner"], "--max_batch_size", "1")
    body = ["张三在北京。" * 10] * 400  # a few seconds of work per request
    results = []

    def go():
        results.append(server.post(body))

    threads = [threading.Thread(target=go) for _ in range(3)]
    [t.start() for t in threads]
    time.sleep(1.0)
    server.proc.send_signal(signal.SIGTERM)
    [t.join() for t in threads]
    try:
        assert server.proc.wait(timeout=120) == 0
    finally:
        server.stop()
    assert [status for status, _ in results] == [200, 200, 200]
    assert all(len(json.loads(answer)) == 400 for _, answer in results)
    assert "kslm: server stopped" in server.proc.stderr.read()


def test_bad_serve_options_are_one_line(ckpts, capsys, tmp_path):
    for args, words in ((["--ckpt_path", str(ckpts["ner"]), "--host", "example.com"], "--host"),
                        (["--ckpt_path", str(ckpts["ner"]), "--port", "80"], "--port"),
                        (["--ckpt_path", str(ckpts["ner"]), "--workers", "0"], "--workers"),
                        (["--ckpt_path", str(tmp_path / "none.ckpt")], "checkpoint not found"),
                        (["--ckpt_path", str(ckpts["ner"]), "--model.temperature", "0.5"], "temperature"),
                        (["--ckpt_path", str(ckpts["ner"]), "--stream"], "streaming is for language models"),
                        ([], "one of the arguments --ckpt_path --config is required")):
        code, err = run_cli(["serve", *args], capsys)
        lines = [line for line in err.splitlines() if line.startswith("kslm: error:")]
        assert code == 2 and len(lines) == 1 and words in lines[0], err


@pytest.mark.parametrize("task", ["ner", "lm"])
def test_an_export_directory_loads_to_the_same_records(ckpts, tmp_path, capsys, task):
    """kslm.load(an export) answers as kslm.load(its checkpoint); a kslm.json that claims a larger head than the
    export holds is one line, before anything of that size is built."""
    import kslm
    from kslm.errors import CheckpointError

    code, err = run_cli(["export", "--ckpt_path", str(ckpts[task]), "--out", str(tmp_path / "exp")], capsys)
    assert code == 0, err
    inputs = PROMPTS if task == "lm" else TEXTS
    assert kslm.load(tmp_path / "exp").predict(inputs) == kslm.load(ckpts[task]).predict(inputs)
    if task == "ner":
        rec = json.loads((tmp_path / "exp" / "kslm.json").read_text(encoding="utf-8"))
        rec["head"]["head_size"] = rec["settings"]["head_size"] = 1 << 20
        (tmp_path / "exp" / "kslm.json").write_text(json.dumps(rec), encoding="utf-8")
        with pytest.raises(CheckpointError, match="do not fit"):
            kslm.load(tmp_path / "exp")


def test_a_language_model_streams_what_predict_returns(ckpts, tmp_path, capsys):
    """Model.stream and `kslm serve --stream`: {"delta": text} as the generation grows, then the very record predict
    returns; the deltas join to its generation, also when byte-level tokens split a character (held back until whole)."""
    import kslm
    from kslm.errors import ConfigError

    model = kslm.load(ckpts["lm"], max_new_tokens=24)
    lengths = []
    for prompt in PROMPTS:
        events = list(model.stream(prompt))
        record = model.predict(prompt)
        deltas = [e["delta"] for e in events[:-1]]
        assert events[-1] == record and all(deltas) and "".join(deltas) == record["generation"]
        lengths.append(len(deltas))
    assert max(lengths) > 1
    bpe = _craft(tmp_path / "bpe.ckpt", LanguageModel(backbone=BackboneConfig(d_model=16, n_layers=1, n_heads=2, qk_dim=8,
                 max_length=128)), train_tokenizer(["张三在北京李四", "Alan Bean"], "bpe", 280, 1), data={"seq_len": 16})
    record, deltas = kslm.load(bpe, max_new_tokens=40).predict("张三"), []
    for event in kslm.load(bpe, max_new_tokens=40).stream("张三"):
        deltas.append(event.get("delta"))
    assert deltas[-1] is None and "".join(deltas[:-1]) == record["generation"]
    assert "\ufffd" in record["generation"] and not any(d.endswith("\ufffd") for d in deltas[:-2])  # (split bytes)
    for bad, words in ((kslm.load(ckpts["ner"]), "streaming is for language models"), (model, "one prompt")):
        with pytest.raises(ConfigError, match=words):
            bad.stream(["张三", "李四"])

    server = Served(ckpts["lm"], "--stream", "--model.max_new_tokens", "24")
    try:
        status, body = server.post(PROMPTS[1])
        assert status == 200 and b"\\u" not in body
        assert [json.loads(line) for line in body.decode("utf-8").splitlines()] == list(model.stream(PROMPTS[1]))
        status, body = server.post(PROMPTS)
        assert status == 422 and "one prompt per request" in json.loads(body)["error"]
        assert server.post({"prompt": 3})[0] == 422 and json.loads(server.get("/info")[1])["stream"] is True
    finally:
        server.stop()


def test_sigterm_finishes_a_stream_in_flight(tmp_path):
    """SIGTERM while a long generation streams: it is streamed to its end (its record the last line), then exit 0."""
    tok = train_tokenizer(PROMPTS, "char", 200, 1)
    lm = LanguageModel(backbone=BackboneConfig(d_model=32, n_layers=2, n_heads=2, qk_dim=8, max_length=2048))
    path = _craft(tmp_path / "long.ckpt", lm, tok, data={"seq_len": 16})
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"]["backbone.embed.weight"][3] = 0.0  # </s> scores 0: greedy decoding never ends the document
    torch.save(ckpt, path)
    server = Served(path, "--stream", "--model.max_new_tokens", "1500")
    try:
        req = urllib.request.Request(f"http://127.0.0.1:{server.port}/predict", data=json.dumps(PROMPTS[0]).encode())
        with urllib.request.urlopen(req, timeout=120) as r:
            first = r.readline()  # the stream has begun (1,500 tokens take seconds): now SIGTERM
            server.proc.send_signal(signal.SIGTERM)
            lines = [json.loads(line) for line in [first, *r.read().splitlines()]]
        assert server.proc.wait(timeout=120) == 0
    finally:
        server.stop()
    assert len(lines[-1]["token_ids"]) == 1500 and len(lines) > 2
    assert "".join(e["delta"] for e in lines[:-1]) == lines[-1]["generation"]
