"""The LM data path on corpora larger than memory: tokenisation rate into the block cache, and the peak resident
memory of a short training run, at two corpus sizes (bench/make_corpus.py writes the corpora into /tmp).

    python bench/make_corpus.py /tmp/kslm-corpus-100m.txt --mb 100
    python bench/make_corpus.py /tmp/kslm-corpus-1g.txt --mb 1024
    PYTHONPATH=. python bench/data_scale.py /tmp/kslm-corpus-100m.txt /tmp/kslm-corpus-1g.txt --work /tmp/kslm-bench

For each corpus, in child processes (their peak RSS from getrusage): (1) `tokenize`: the tokenizer trained on a
bounded sample (data.tokenizer_sample_mb), then the corpus tokenized with data.num_proc processes into the block
cache (kslm.data.token_cache); (2) `train`: `kslm fit` of a tiny model for --steps steps on the cached blocks (no
validation), whose peak RSS is the number that must not grow with the corpus. The machine's load (`os.getloadavg`)
is recorded with each timing. Results: bench/results/data_scale.json (one record per corpus, replaced by name).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from machine import print_tables, table_flag

REPO = Path(__file__).resolve().parents[1]
DATA = ["--data.vocab_size", "2000", "--data.seq_len", "128", "--data.batch_size", "8"]
TINY = ["--model.backbone.d_model", "64", "--model.backbone.n_layers", "2", "--model.backbone.n_heads", "2",
        "--model.optim.warmup_steps", "0"]


def child_tokenize(corpus: str, cache: str, num_proc: int, sample_mb: float) -> dict:
    from kslm.data.lm import LMDataModule

    dm = LMDataModule(data_files=corpus, vocab_size=2000, seq_len=128, cache_dir=cache, num_proc=num_proc,
                      tokenizer_sample_mb=sample_mb)
    t0 = time.perf_counter()
    raw = dm._raw()  # the text builder's Arrow copy of the corpus (datasets' cache)
    t1 = time.perf_counter()
    dm.load_tokenizer()
    t2 = time.perf_counter()
    blocks = dm._blocks()
    t3 = time.perf_counter()
    return {"load_s": t1 - t0, "tokenizer_s": t2 - t1, "tokenize_s": t3 - t2, "blocks": len(blocks),
            "records": len(raw), "load_after": os.getloadavg()}


def proxy_cache(src_cache: Path, corpus: str, cache: Path, times: int) -> str:
    """A block cache for `corpus` made of the blocks of `src_cache` written `times` times over (no tokenizing):
    training reads a block file of the size the corpus would give. Returns the tokenizer file to train with."""
    import json
    import shutil

    from kslm.data.lm import LMDataModule
    from kslm.data.token_cache import FILE, META, cache_key
    from kslm.io import atomic_dir

    tok = next(src_cache.glob("tokenizer-*.json"))
    src = max(src_cache.glob(f"lm-blocks/*/{META}"), key=lambda p: p.stat().st_mtime).parent  # the latest build
    dm = LMDataModule(data_files=corpus, vocab_size=2000, seq_len=128, cache_dir=str(cache), tokenizer=str(tok))
    folder = cache / "lm-blocks" / cache_key(dm._source_key(), dm.load_tokenizer(), dm.seq_len + 1)
    meta = json.loads((src / META).read_text(encoding="utf-8"))
    with atomic_dir(folder, overwrite=True) as tmp:
        with open(tmp / FILE, "wb") as sink:
            for _ in range(times):
                with open(src / FILE, "rb") as f:
                    shutil.copyfileobj(f, sink, 1 << 24)
        (tmp / META).write_text(json.dumps({**meta, "blocks": meta["blocks"] * times}), encoding="utf-8")
    return str(tok)


def run_child(args, env, cwd=None) -> tuple:
    """(exit code, seconds, peak RSS in MB, stdout, stderr tail) of a child command under `/usr/bin/time -v` (its
    maximum resident set size: the largest process of the command's tree)."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *args], env=env, capture_output=True, text=True, cwd=cwd)
    seconds = time.perf_counter() - t0
    rss = [int(line.split(":")[1]) for line in proc.stderr.splitlines() if "Maximum resident set size" in line]
    return proc.returncode, seconds, (rss[-1] / 1024 if rss else float("nan")), proc.stdout, proc.stderr[-3000:]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpora", nargs="*")
    ap.add_argument("--work", default="/tmp/kslm-bench", help="caches and run folders (outside the repository)")
    ap.add_argument("--num-proc", type=int, default=2)
    ap.add_argument("--sample-mb", type=float, default=16.0, help="data.tokenizer_sample_mb")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "data_scale.json"))
    ap.add_argument("--proxy", nargs=2, metavar=("SRC_CORPUS", "TIMES"),
                    help="do not tokenize the corpora: give each the blocks of SRC_CORPUS (benchmarked before) TIMES over, "
                         "and measure training only")
    ap.add_argument("--child-tokenize", nargs=4, metavar=("CORPUS", "CACHE", "NUM_PROC", "SAMPLE_MB"), help=argparse.SUPPRESS)
    table_flag(ap, [ap.get_default("out")])
    args = ap.parse_args()
    if args.table is not None:
        print_tables(args.table, [args.out], markdown)
        return
    if args.child_tokenize:
        c, cache, n, mb = args.child_tokenize
        print(json.dumps(child_tokenize(c, cache, int(n), float(mb))))
        return
    from kslm.io import write_json

    work = Path(args.work)
    env = {**os.environ, "HF_DATASETS_CACHE": str(work / "hf"), "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    for corpus in args.corpora:
        name, mb = Path(corpus).name, Path(corpus).stat().st_size / 1e6
        cache = work / f"cache-{Path(corpus).stem}"
        load = os.getloadavg()
        extra = []
        if args.proxy:
            src, times = args.proxy
            tok_file = proxy_cache(work / f"cache-{Path(src).stem}", corpus, cache, int(times))
            extra = ["--data.tokenizer", tok_file]
            tok = {"records": None, "blocks": results[Path(src).name]["blocks"] * int(times), "load_s": 0.0,
                   "tokenizer_s": 0.0, "tokenize_s": None, "load_after": os.getloadavg()}
            rss = None
        else:
            code, secs, rss, stdout, err = run_child([sys.executable, __file__, "--child-tokenize", corpus, str(cache),
                                                      str(args.num_proc), str(args.sample_mb)], env)
            if code:
                sys.exit(f"tokenize {corpus} failed:\n{err}")
            tok = json.loads(stdout.strip().splitlines()[-1])
        run_dir = work / f"run-{Path(corpus).stem}"
        run_dir.mkdir(parents=True, exist_ok=True)
        fit = [sys.executable, "-m", "kslm.cli", "fit", "--config", str(REPO / "configs/lm/transformer.yaml"),
               "--data.data_files", corpus, "--data.cache_dir", str(cache), "--data.tokenizer_sample_mb", str(args.sample_mb),
               *DATA, *TINY, *extra,
               "--trainer.max_steps", str(args.steps), "--trainer.limit_val_batches", "0",
               "--trainer.enable_progress_bar", "false", "--checkpoint.dirpath", str(run_dir / "ckpt")]
        code, train_s, train_rss, _, err = run_child(fit, {**env, "OMP_NUM_THREADS": "1"}, cwd=run_dir)
        if code:
            sys.exit(f"kslm fit on {corpus} failed:\n{err}")
        results[name] = {
            "corpus_mb": round(mb, 1), "records": tok["records"], "blocks": tok["blocks"], "num_proc": args.num_proc,
            "tokenizer_sample_mb": args.sample_mb, "load_s": round(tok["load_s"], 1),
            "tokenizer_train_s": round(tok["tokenizer_s"], 1),
            "tokenize_s": tok["tokenize_s"] and round(tok["tokenize_s"], 1),
            "tokenize_mb_per_s": tok["tokenize_s"] and round(mb / tok["tokenize_s"], 2),
            "tokenize_peak_rss_mb": rss and round(rss),
            "blocks_from": f"{args.proxy[0]} x{args.proxy[1]} (not tokenized)" if args.proxy else "tokenized",
            "train_steps": args.steps, "train_s": round(train_s, 1), "train_peak_rss_mb": round(train_rss),
            "loadavg_before": [round(x, 2) for x in load], "loadavg_after": [round(x, 2) for x in tok["load_after"]],
            "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
        print(json.dumps({name: results[name]}))
        write_json(out, results)


def markdown(results: dict) -> str:
    """The results as bench/README.md shows them: one row per corpus."""
    rows = ["| corpus | MB | blocks | tokenize s | MB/s (num_proc) | load (1 min) | peak RSS tokenize MB | "
            "peak RSS 100-step fit MB |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        tok = (f"{r['tokenize_s']}", f"{r['tokenize_mb_per_s']} ({r['num_proc']})") if r.get("tokenize_s") else \
            ("–", r.get("blocks_from", "not tokenized"))
        rows.append(f"| {name} | {r['corpus_mb']} | {r['blocks']:,} | {tok[0]} | {tok[1]} | {r['loadavg_before'][0]} | "
                    f"{r.get('tokenize_peak_rss_mb') or '–'} | {r['train_peak_rss_mb']} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
