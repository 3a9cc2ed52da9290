"""`kslm serve`: a trained model behind HTTP, on LitServe (Lightning's model server), over the one inference core.

    kslm serve --ckpt_path checkpoints/cluener-egp/last.ckpt            # http://127.0.0.1:8000
    curl -s localhost:8000/predict -d '{"text": "张三在北京"}'            # → the record `kslm predict` writes
    curl -s localhost:8000/predict -d '["张三在北京", {"text": "李四"}]'  # → a list of records
    curl -s localhost:8000/info                                         # task, labels, window, sha256, version

POST /predict takes one record (a JSON object, or a JSON string: the text / prompt) or a JSON array of them, and
answers exactly what `kslm predict` writes for them (kslm.inference: the same checks, windows, batches and decoding;
"line" is the record's 1-based position in the request). Concurrent requests are batched together (LitServe's
dynamic batching: up to --max_batch_size requests, waiting at most --batch_timeout seconds) for extraction tasks;
language models and NBCE answer request by request (generation is per prompt).

A request is untrusted input: KslmRequests (an ASGI middleware in front of LitServe) refuses, before anything reaches
the model, a body over --max_request_bytes (413), one that is not UTF-8 or not JSON or nested over 100 levels (400),
more than --max_records records (413) and a record of the wrong shape (422, naming "record N" and the field, as
kslm.load's errors do). What only the model can find (a text over data.max_text_chars, an NBCE question longer than
the window) is a 422 for that request alone: the others batched with it are answered. Every error is
{"error": "one line"}; the server keeps serving. SIGTERM stops accepting, finishes the requests in flight, then
exits 0 (Ctrl-C stops at once). It binds 127.0.0.1 unless told otherwise (--host 0.0.0.0 exposes it: no authentication).
"""

import json
import logging
import os
import signal
import sys
import threading
import warnings
from typing import List, Optional

import litserve as ls

from kslm.errors import ConfigError, KslmError
from kslm.io import JsonInputError, json_loads

ERROR_KEY = "__kslm_error__"  # an inference worker's per-request error, turned into a 4xx by KslmRequests
HOSTS = ("127.0.0.1", "0.0.0.0", "::")


def _items(body) -> List:
    return body if isinstance(body, list) else [body]


def _error(message: str, status: int = 422) -> dict:
    return {ERROR_KEY: " ".join(str(message).split()), "status": status}


class KslmRequests:
    """ASGI middleware: validates POST bodies of the prediction path before LitServe reads them, and turns a worker's
    per-request error marker into its status with {"error": …}. `task` picks the record checks (the data module's
    `records_from`, the one the inference core applies)."""

    def __init__(self, app, path: str = "/predict", task: str = "ner", max_bytes: int = 16 << 20,
                 max_records: int = 1024, stream: bool = False):
        self.app, self.path, self.max_bytes, self.max_records = app, path, max_bytes, max_records
        self.check, self.stream = _record_check(task), stream

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        body, problem = await self._read(scope, receive)
        if problem is None:
            problem = self._validate(body)
        if problem is not None:
            return await _send_json(send, problem[0], {"error": problem[1]})
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app({**scope, "headers": headers}, replay, _NdjsonSend(send) if self.stream else _ErrorRewriter(send))

    async def _read(self, scope, receive):
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return b"", (413, f"request body of {int(declared):,} bytes exceeds {self.max_bytes:,} "
                              "(kslm serve --max_request_bytes)")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"", (400, "the client closed the request")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return b"", (413, f"request body exceeds {self.max_bytes:,} bytes (kslm serve --max_request_bytes)")
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks), None

    def _validate(self, body: bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return 400, f"the body is not UTF-8 (byte 0x{body[exc.start]:02x} at position {exc.start})"
        if not text.strip():
            return 400, 'the body is empty: POST a JSON record, e.g. {"text": "…"}, or a JSON array of them'
        try:
            data = json_loads(text)
        except JsonInputError as exc:
            return 400, f"the body is not valid JSON: {exc}"
        if not isinstance(data, (dict, list, str)):
            return 422, f"expected a record (a JSON object or string) or a JSON array of them, got {type(data).__name__}"
        items = _items(data)
        if self.stream and isinstance(data, list):
            return 422, "kslm serve --stream answers one prompt per request: POST a JSON string or record, not an array"
        if len(items) > self.max_records:
            return 413, f"{len(items):,} records exceed {self.max_records:,} per request (kslm serve --max_records)"
        try:
            self.check(items)
        except KslmError as exc:
            return 422, " ".join(str(exc).split())
        return None


class _ErrorRewriter:
    """Wraps `send`: a 200 whose JSON body is a worker's error marker goes out as its status and {"error": …}."""

    def __init__(self, send):
        self.send, self.start, self.parts = send, None, []

    async def __call__(self, message):
        if message["type"] == "http.response.start":
            self.start = message
            return
        if message["type"] != "http.response.body" or self.start is None:
            return await self.send(message)
        self.parts.append(message.get("body", b""))
        if message.get("more_body"):
            return
        body, start = b"".join(self.parts), self.start
        if start["status"] == 200 and ERROR_KEY.encode() in body[:64]:
            try:
                marker = json.loads(body)
            except ValueError:
                marker = None
            if isinstance(marker, dict) and ERROR_KEY in marker:
                return await _send_json(self.send, int(marker.get("status", 422)), {"error": marker[ERROR_KEY]})
        await self.send(start)
        await self.send({"type": "http.response.body", "body": body, "more_body": False})


class _NdjsonSend:
    """Wraps `send` for a streamed answer: each chunk goes out as it comes, labelled as JSON lines."""

    def __init__(self, send):
        self.send = send

    async def __call__(self, message):
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"content-type"]
            message = {**message, "headers": [*headers, (b"content-type", b"application/x-ndjson")]}
        await self.send(message)


async def _send_json(send, status: int, payload: dict):
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _record_check(task: str):
    """The record checks of the task's data module (static: no tokenizer needed), as the inference core runs them."""
    if task == "lm":
        from kslm.data.lm import LMDataModule as cls
    elif task == "nbce":
        from kslm.data.nbce import NBCEDataModule as cls
    else:
        from kslm.data.extraction import ExtractionDataModule as cls
    return cls.records_from


class KslmAPI(ls.LitAPI):
    """The LitAPI: each inference worker loads the model once (kslm.load) and answers batches of requests."""

    def __init__(self, path, options: dict, task: str, max_batch_size: int = 1, batch_timeout: float = 0.0, **kwargs):
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, **kwargs)
        self.path, self.options, self.task, self.batching = str(path), dict(options), task, max_batch_size > 1

    def setup(self, device):
        from kslm.inference import load

        self.model = load(self.path, device, **self.options)

    def decode_request(self, request):
        return request  # (checked by KslmRequests before it got here)

    def batch(self, inputs):
        return list(inputs)

    def predict(self, bodies):
        return self.answer(bodies) if self.batching else self.answer([bodies])[0]

    def unbatch(self, output):
        return output

    def encode_response(self, output):
        return output

    def answer(self, bodies) -> list:
        """Per request: its records (a record for a single one) or an error marker. Extraction requests are predicted
        together, each one's "line" its position in its own request; generation goes request by request (its seeds
        follow the prompt's position, as in kslm predict)."""
        lists = [_items(b) for b in bodies]
        if self.task in ("ner", "re") and len(bodies) > 1:
            try:
                flat = self.model.predict_records([x for items in lists for x in items])
            except KslmError:
                flat = None  # one request's records are refused: answer each request on its own
            if flat is not None:
                out, at = [], 0
                for body, items in zip(bodies, lists, strict=True):
                    recs = [{**r, "line": i + 1} for i, r in enumerate(flat[at:at + len(items)])]
                    at += len(items)
                    out.append(recs if isinstance(body, list) else recs[0])
                return out
        out = []
        for body, items in zip(bodies, lists, strict=True):
            try:
                recs = self.model.predict_records(items)
                out.append(recs if isinstance(body, list) else recs[0])
            except KslmError as exc:
                out.append(_error(str(exc)))
        return out


class KslmStreamAPI(KslmAPI):
    """`kslm serve --stream` (language models): one prompt per request, answered as Model.stream's events, each sent
    as one JSON line as soon as it exists ({"delta": text} …, then the record). A refusal the model finds is a last
    {"error": …} line (the status, 200, went out with the first line)."""

    def __init__(self, path, options: dict, task: str, batch_timeout: float = 0.0):
        super().__init__(path, options, task, 1, batch_timeout, stream=True)

    def predict(self, body):
        try:
            yield from self.model.stream(body)
        except KslmError as exc:
            yield {"error": " ".join(str(exc).split())}

    def encode_response(self, output):
        for event in output:  # one JSON line each, characters as kslm predict writes them (not \u escapes)
            yield json.dumps(event, ensure_ascii=False) + "\n"


def serve(source: str, options: Optional[dict] = None, *, host: str = "127.0.0.1", port: int = 8000,
          max_batch_size: int = 16, batch_timeout: float = 0.005, workers: int = 1, device: str = "cpu",
          max_request_bytes: int = 16 << 20, max_records: int = 1024, timeout: float = 120, stream: bool = False) -> None:
    """Serve `source` (a kslm checkpoint, a `kslm export` directory or an NBCE config; `options`: the model's run-time
    options) until SIGTERM or Ctrl-C. `kslm serve` (kslm.cli.verbs) checks the command line and calls this. The model
    is loaded once here (a bad checkpoint is one line before any server starts), then LitServe's workers load their
    own copy. `stream` (language models): POST /predict answers one prompt as JSON lines, Model.stream's events."""
    from kslm.inference import load

    options = dict(options or {})
    if host not in HOSTS:
        raise ConfigError(f"kslm serve: --host {host}: one of {', '.join(HOSTS)} (field '--host')")
    info = load(source, "cpu", **options).info()  # validates the checkpoint and options; freed before serving
    if stream and info["task"] != "lm":
        raise ConfigError(f"kslm serve --stream: streaming is for language models; {source} is a {info['task']} "
                          "model (leave --stream out)")
    from fastapi.responses import JSONResponse

    with warnings.catch_warnings():  # (LitServe's note on batch/unbatch without batching: kslm's are the identity)
        warnings.filterwarnings("ignore", message="The LitServer has both batch and unbatch")
        api = (KslmStreamAPI(source, options, info["task"], batch_timeout) if stream else
               KslmAPI(source, options, info["task"], max_batch_size, batch_timeout))
    accelerator = "cuda" if str(device).startswith("cuda") else "cpu"
    server = Server(api, accelerator=accelerator, devices=1, workers_per_device=workers, timeout=timeout,
                    info_path="/litserve/info", disable_openapi_url=True,
                    middlewares=[(KslmRequests, {"path": "/predict", "task": info["task"],
                                                 "max_bytes": max_request_bytes, "max_records": max_records,
                                                 "stream": stream})])
    info.update(max_batch_size=1 if stream else max_batch_size, batch_timeout=batch_timeout, workers=workers,
                max_request_bytes=max_request_bytes, max_records=max_records, stream=stream)
    server.app.add_api_route("/info", lambda: JSONResponse(info), methods=["GET"])
    print(f"kslm: serving {info['task']} from {source} on http://{host}:{port} (POST /predict, GET /health, "
          f"GET /info); SIGTERM stops it after the requests in flight, Ctrl-C at once", file=sys.stderr, flush=True)
    try:
        server.run(host=host, port=port, generate_client_file=False, log_level="warning")
    except (EOFError, OSError):  # LitServe's manager process stopped by the same signal: LitServe has shut down
        if not getattr(server, "_draining", False):
            raise
    print("kslm: server stopped", file=sys.stderr)


class Server(ls.LitServer):
    """LitServer whose SIGTERM drains: the HTTP processes stop accepting and finish the requests in flight (the
    inference workers still answering them), and only then does LitServe shut the workers down. Ctrl-C is LitServe's
    own immediate shutdown."""

    def _start_server(self, *args, **kwargs):
        self._http = super()._start_server(*args, **kwargs)
        signal.signal(signal.SIGTERM, self._drain)  # (Ctrl-C: LitServe's own KeyboardInterrupt shutdown)
        return self._http

    def _drain(self, signum, frame):
        if getattr(self, "_draining", False):
            return
        self._draining = True
        threading.Thread(target=self._stop_http, daemon=True).start()

    def _stop_http(self):
        for worker in self._http.values():
            if getattr(worker, "pid", None):
                os.kill(worker.pid, signal.SIGTERM)  # uvicorn: no new connections, in-flight ones finish
        for worker in list(self._http.values()):
            worker.join(timeout=self.uvicorn_graceful_timeout)
        # LitServe's shutdown (or its worker monitor, seeing the HTTP processes gone) may already be iterating the
        # dict: leave it as it is, and keep its "already not alive" warnings about the processes stopped here quiet
        logging.getLogger("litserve.server").setLevel(logging.ERROR)
        try:
            self._shutdown_event.set()
        except (OSError, EOFError):  # the event's manager process got the signal too (`kill -TERM -PGID`): gone
            pass


__all__ = ["serve", "KslmRequests", "KslmAPI", "KslmStreamAPI", "Server", "ERROR_KEY", "HOSTS"]
