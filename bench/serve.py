"""kslm serve under load, on this machine's loopback only: batched vs unbatched server, and the offline ceiling.

    PYTHONPATH=. python bench/serve.py              # ≈ 10 minutes on 2 idle cores → bench/results/serve.json + table
    PYTHONPATH=. python bench/serve.py --quick      # a short smoke run (seconds of load per row)
    PYTHONPATH=. python bench/serve.py --table      # the stored table again
    PYTHONPATH=. python bench/serve.py --stream     # LM streaming only: time to the first text vs the whole answer

Models (untrained: throughput does not depend on the weights): NER with configs/ner/cluener-egp.yaml's shapes and a
char tokenizer of CLUENER's training texts; an LM with configs/lm/gau.yaml's shapes. Requests: one CLUENER sentence
each (NER: the first texts of ../shared/data/cluener2020/train.json, cycled), one short prompt each (LM, greedy,
--lm-new-tokens new tokens). For each server configuration and each client count (1 / 4 / 16 / 64 concurrent
keep-alive clients, asyncio, one process), a bounded number of requests (--requests; the run stops by itself): requests/s,
p50 / p95 / p99 latency, errors, and the server's resident memory (main + HTTP + inference processes) after the first
and the last thousand requests. Offline: kslm.load(…).predict(all texts) in one process (kslm predict's core, without
its start-up) — the ceiling a server can approach.

--stream measures what streaming buys an LM client (bench/results/serve_stream.json): one client, one prompt at a time,
answers of exactly --stream-tokens tokens (</s> never chosen), on a `kslm serve --stream` server (time to the first
line, to the record) and on a plain one (time to the answer).
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import RESULTS, machine_info, print_tables, table_flag  # noqa: E402

from kslm.io import write_json  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
STORED = [RESULTS / "serve.json", RESULTS / "serve_stream.json"]
CLIENTS = (1, 4, 16, 64)


# ------------------------------------------------------------------------------------------------ models
def make_checkpoints(folder: Path) -> dict:
    import lightning
    import torch
    import yaml

    from kslm.data.tokenizer import train_tokenizer
    from kslm.nn import BackboneConfig
    from kslm.tasks.lm import LanguageModel
    from kslm.tasks.ner import EntityExtraction

    texts = cluener_texts(10_000)
    out = {}
    for name, config, build in (("ner", "configs/ner/cluener-egp.yaml", "ner"), ("lm", "configs/lm/gau.yaml", "lm")):
        init = yaml.safe_load((REPO / config).read_text(encoding="utf-8"))["model"]["init_args"]
        tok = train_tokenizer(texts, "char", 8000, 1)
        torch.manual_seed(0)
        if build == "ner":
            task = EntityExtraction(backbone=BackboneConfig(**{**init["backbone"], "dropout": 0.0}), head=init["head"],
                                    head_size=init["head_size"], types=[f"T{i}" for i in range(10)])
            task.connect(tok, task.labels, None, {"max_length": 128, "stride": None, "batch_size": 32})
        else:
            task = LanguageModel(backbone=BackboneConfig(**{**init["backbone"], "dropout": 0.0}))
            task.connect(tok, data_settings={"seq_len": 128, "batch_size": 8})
        task.build(tok)
        ckpt = {"state_dict": task.state_dict(), "pytorch-lightning_version": lightning.__version__, "epoch": 0,
                "global_step": 0}
        task.on_save_checkpoint(ckpt)
        out[name] = folder / f"{name}.ckpt"
        torch.save(ckpt, out[name])
        if build == "ner":
            calibrate(out[name], ckpt, texts[:64])
    return out


def calibrate(path, ckpt, texts, per_record: float = 2.0):
    """An untrained head finds spans everywhere (dozens per sentence: decoding and JSON then dominate the timing);
    shift its type bias so that about `per_record` spans per sentence pass the threshold, as a trained model's do."""
    import torch

    import kslm

    model = kslm.load(path)
    data, scores = model.data, []
    with torch.inference_mode():
        for batch in data.prediction_loader(data.prediction_items(data.records_from(texts), None)):
            logits = model.module(batch["input_ids"], batch["attention_mask"], batch["span_mask"])
            scores.append(logits[torch.isfinite(logits) & (logits > torch.finfo(logits.dtype).min / 2)].flatten())
    scores = torch.cat(scores).sort(descending=True).values
    shift = float(scores[int(per_record * len(texts))]) - model.module.threshold
    ckpt["state_dict"]["head_module.q_dense.bias"] -= shift  # (EGP: every logit moves by the bias channel's shift)
    torch.save(ckpt, path)


def cluener_texts(n: int) -> list:
    path = SHARED / "cluener2020" / "train.json"
    texts = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            if len(texts) >= n:
                break
    return texts


# ------------------------------------------------------------------------------------------------ server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(ckpt, *extra) -> tuple:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "kslm.cli", "serve", "--ckpt_path", str(ckpt), "--port", str(port),
                             "--timeout", "600", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode()[-2000:])
        try:
            status, _ = asyncio.run(_one(port, "GET", "/health", b""))
            if status == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("server not healthy after 240 s")


def stop(proc) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants (VmRSS from /proc)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except (OSError, StopIteration):
            continue
    return total / 1024


# ------------------------------------------------------------------------------------------------ clients
async def _one(port, method, path, body, reader_writer=None):
    reader, writer = reader_writer or await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
    data = await reader.readexactly(length)
    if reader_writer is None:
        writer.close()
    return status, data


async def load(port, bodies: list, clients: int, on_progress) -> dict:
    """`clients` keep-alive connections share the bodies (each request once): latencies, errors, wall time."""
    queue = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    latencies, errors, done = [], [], [0]

    async def client():
        conn = await asyncio.open_connection("127.0.0.1", port)
        while not queue.empty():
            body = queue.get_nowait()
            t0 = time.perf_counter()
            try:
                status, _ = await _one(port, "POST", "/predict", body, conn)
            except (OSError, asyncio.IncompleteReadError) as exc:
                errors.append(repr(exc))
                conn = await asyncio.open_connection("127.0.0.1", port)
                continue
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                errors.append(status)
            done[0] += 1
            on_progress(done[0])
        conn[1].close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0]] * 99
    return {"requests": len(bodies), "rps": len(latencies) / wall, "p50_ms": q[49] * 1e3, "p95_ms": q[94] * 1e3,
            "p99_ms": q[98] * 1e3, "errors": len(errors), "wall_s": wall}


def run_server(name, ckpt, bodies_for, counts, extra, label) -> list:
    proc, port = start(ckpt, *extra)
    rows, served = [], [0]
    rss = {}

    def progress(n):
        served[0] += 1
        if served[0] == 1000:
            rss["first_1000"] = tree_rss_mib(proc.pid)

    try:
        for clients in CLIENTS:
            row = asyncio.run(load(port, bodies_for(counts[clients]), clients, progress))
            rows.append({"task": name, "server": label, "clients": clients, **row})
            print(f"{name} {label:>10} clients {clients:>2}: {row['rps']:8.1f} req/s  p50 {row['p50_ms']:7.1f} ms  "
                  f"p99 {row['p99_ms']:7.1f} ms  errors {row['errors']}", flush=True)
        rss["last"] = tree_rss_mib(proc.pid)
    finally:
        code = stop(proc)
    for r in rows:
        r.update(rss_first_1000_mib=rss.get("first_1000"), rss_end_mib=rss.get("last"), exit_code=code)
    return rows


def stream_latency(ckpt: Path, prompts: list, tokens: int) -> dict:
    """Median milliseconds to the first streamed line, to the streamed record, and to a plain server's answer."""
    import http.client

    import torch

    long = ckpt.with_name("lm-long.ckpt")  # </s> scores 0: greedy decoding runs to max_new_tokens every time
    state = torch.load(ckpt, weights_only=True)
    state["state_dict"]["backbone.embed.weight"][3] = 0.0
    torch.save(state, long)
    out = {"tokens": tokens, "prompts": len(prompts)}
    for label, extra in (("stream", ["--stream"]), ("plain", ["--max_batch_size", "1"])):
        proc, port = start(long, "--model.max_new_tokens", str(tokens), *extra)
        first, whole = [], []
        try:
            for i, prompt in enumerate([prompts[0], *prompts]):  # (the first: warm-up)
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
                t0 = time.perf_counter()
                conn.request("POST", "/predict", json.dumps(prompt, ensure_ascii=False).encode())
                resp = conn.getresponse()
                line = resp.readline()
                t1 = time.perf_counter()
                rest = resp.read()
                t2 = time.perf_counter()
                conn.close()
                last = json.loads((line + rest).splitlines()[-1])
                last = last[0] if isinstance(last, list) else last
                assert resp.status == 200 and len(last["token_ids"]) == tokens, last
                if i:
                    first.append(1000 * (t1 - t0))
                    whole.append(1000 * (t2 - t0))
        finally:
            stop(proc)
        if label == "stream":
            out["first_line_ms"], out["stream_record_ms"] = statistics.median(first), statistics.median(whole)
        else:
            out["plain_answer_ms"] = statistics.median(whole)
        print(f"lm {label}: {out}", flush=True)
    return out


def offline(ckpt, texts, **options) -> dict:
    import kslm

    model = kslm.load(ckpt, **options)
    model.predict(texts[:8])  # (warm-up)
    t0 = time.perf_counter()
    model.predict(texts)
    wall = time.perf_counter() - t0
    return {"records": len(texts), "rps": len(texts) / wall, "wall_s": wall}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a short smoke run")
    ap.add_argument("--requests", type=int, default=2500, help="NER requests per client count (batched server)")
    ap.add_argument("--lm-requests", type=int, default=64, help="LM requests per client count")
    ap.add_argument("--lm-new-tokens", type=int, default=16)
    ap.add_argument("--stream", action="store_true", help="only the LM streaming measurement")
    ap.add_argument("--stream-tokens", type=int, default=128)
    ap.add_argument("--stream-prompts", type=int, default=10)
    ap.add_argument("--out", default=None, help="the JSON to write (default: bench/results/serve.json, "
                                                  "or serve_stream.json with --stream)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    table_flag(ap, STORED)
    args = ap.parse_args()
    if args.table is not None:
        return print_tables(args.table, STORED, markdown)
    if args.quick:
        args.requests, args.lm_requests = 200, 8
    import tempfile

    texts = cluener_texts(args.requests)
    report = {"machine": machine_info(args), "date": time.strftime("%Y-%m-%d"), "args": vars(args), "rows": []}
    if args.stream:
        args.out = args.out or str(STORED[1])
        with tempfile.TemporaryDirectory() as tmp:
            ckpts = make_checkpoints(Path(tmp))
            report["stream"] = stream_latency(ckpts["lm"], [t[:8] for t in texts[: args.stream_prompts]],
                                              args.stream_tokens)
        write_json(args.out, report)
        return print(markdown(report))
    args.out = args.out or str(STORED[0])
    with tempfile.TemporaryDirectory() as tmp:
        ckpts = make_checkpoints(Path(tmp))
        report["offline"] = {"ner": offline(ckpts["ner"], texts)}
        print(f"ner offline: {report['offline']['ner']['rps']:.1f} records/s", flush=True)
        ner_bodies = [json.dumps({"text": t}, ensure_ascii=False).encode() for t in texts]
        unbatched = {c: max(c * 4, args.requests // 4) for c in CLIENTS}  # (4× fewer: it is the slow one)
        for label, extra, counts in (("batched", ["--max_batch_size", "32", "--batch_timeout", "0.01"],
                                      dict.fromkeys(CLIENTS, args.requests)),
                                     ("unbatched", ["--max_batch_size", "1"], unbatched)):
            report["rows"] += run_server("ner", ckpts["ner"], lambda n: ner_bodies[:n], counts, extra, label)
            write_json(args.out, report)
        prompts = [t[:8] for t in texts[: args.lm_requests]]
        lm_opts = ["--model.max_new_tokens", str(args.lm_new_tokens)]
        report["offline"]["lm"] = offline(ckpts["lm"], prompts, max_new_tokens=args.lm_new_tokens)
        lm_bodies = [json.dumps(p, ensure_ascii=False).encode() for p in prompts]
        report["rows"] += run_server("lm", ckpts["lm"], lambda n: lm_bodies[:n], dict.fromkeys(CLIENTS, args.lm_requests),
                                     lm_opts, "per-request")
    write_json(args.out, report)
    print(markdown(report))


def markdown(report) -> str:
    s = report.get("stream")
    if s:
        return (f"Measured {report['date']} on {report['machine']['cpu_model']} ({report['machine']['logical_cpus']} "
                f"logical CPUs), loopback, one client: an LM with configs/lm/gau.yaml's shapes answering {s['tokens']} "
                f"tokens, median of {s['prompts']} prompts.\n\n| server | first text ms | whole answer ms |\n|---|---:|---:|\n"
                f"| kslm serve --stream | {s['first_line_ms']:,.1f} | {s['stream_record_ms']:,.1f} |\n"
                f"| kslm serve | – | {s['plain_answer_ms']:,.1f} |")
    rows = report["rows"]
    lines = [f"Measured {report['date']} on {report['machine']['cpu_model']} ({report['machine']['logical_cpus']} "
             f"logical CPUs), loopback, one inference worker.", "",
             "| task | server | clients | requests | req/s | p50 ms | p95 ms | p99 ms | errors | RSS first 1k / end MiB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        rss = f"{r['rss_first_1000_mib']:.0f} / {r['rss_end_mib']:.0f}" if r.get("rss_first_1000_mib") else \
            f"– / {r['rss_end_mib']:.0f}" if r.get("rss_end_mib") else "–"
        lines.append(f"| {r['task']} | {r['server']} | {r['clients']} | {r['requests']:,} | {r['rps']:,.1f} | "
                     f"{r['p50_ms']:,.1f} | {r['p95_ms']:,.1f} | {r['p99_ms']:,.1f} | {r['errors']} | {rss} |")
    off = report.get("offline", {})
    for task, o in off.items():
        lines.append(f"\nOffline ({task}, kslm.load(…).predict over {o['records']:,} records in one call): "
                     f"{o['rps']:,.1f} records/s.")
    quiet = report.get("offline_quiet")
    if quiet:  # the offline ceiling measured again with nothing else running (the run's own row was contended)
        lines.append(f"\nOffline again, alone ({quiet.get('note', '')}): ner {quiet['ner']['rps']:,.1f} records/s, "
                     f"lm {quiet['lm']['rps']:,.1f} records/s.")
        off = {k: v for k, v in quiet.items() if isinstance(v, dict)}
    by = {(r["task"], r["server"], r["clients"]): r for r in rows}
    b, u = by.get(("ner", "batched", 16)), by.get(("ner", "unbatched", 16))
    if b and u and "ner" in off:
        best = max(r["rps"] for r in rows if r["task"] == "ner" and r["server"] == "batched")
        total = sum(r["requests"] for r in rows)
        lines.append(f"\nNER at 16 clients: batched {b['rps'] / u['rps']:.2f}× unbatched (target ≥ 3×); best batched "
                     f"{best / off['ner']['rps']:.0%} of offline (target ≥ 70 %); {sum(r['errors'] for r in rows)} "
                     f"errors in {total:,} requests.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
