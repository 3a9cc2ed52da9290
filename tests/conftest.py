import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def kslm_cache(tmp_path_factory):
    """Tokenizers and the embedded corpus are cached per test session, never in the user's ~/.cache."""
    path = tmp_path_factory.mktemp("kslm-cache")
    os.environ["KSLM_CACHE"] = str(path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    return path


@pytest.fixture(autouse=True)
def lightning_log_to_current_stderr():
    """Lightning's log handlers hold the stderr of import time; point them at this test's (captured) stderr."""
    import logging
    import sys

    for name in ("lightning.pytorch", "lightning.fabric"):
        for h in logging.getLogger(name).handlers:
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                h.setStream(sys.stderr)
    yield


def scalars(logdir) -> dict:
    """The last value of every scalar in the TensorBoard events under `logdir`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for events in sorted(Path(logdir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out[tag] = acc.Scalars(tag)[-1].value
    return out


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """~150 kB of English paragraphs (Python's documentation topics): enough for a tokenizer and a few batches."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k].strip() for k in sorted(topics))[:150_000]
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text(text, encoding="utf-8")
    return path


def tiny_args(corpus, tmp, *extra, steps=2, config="configs/lm/transformer.yaml"):
    """CLI arguments for a seconds-long run of a shipped config on the small corpus (run it with the working
    directory in `tmp`: TensorBoard logs go to ./logs)."""
    return [
        "--config", str(REPO / config),
        "--data.data_files", str(corpus), "--data.vocab_size", "400", "--data.seq_len", "32",
        "--data.batch_size", "4", "--data.val_fraction", "0.05",
        "--model.backbone.d_model", "32", "--model.backbone.n_layers", "2", "--model.backbone.n_heads", "2",
        "--model.backbone.qk_dim", "16", "--model.optim.warmup_steps", "0",
        "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(max(steps, 1)),
        "--trainer.limit_val_batches", "2", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--checkpoint.dirpath", str(tmp / "ckpt"), *extra,
    ]


def run_cli(args, capsys=None):
    """Run `kslm …` in this process; returns (exit code, stderr)."""
    from kslm.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    err = capsys.readouterr().err if capsys is not None else ""
    return code, err


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
