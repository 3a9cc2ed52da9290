"""Fixtures only. Plain helpers (paths, run_cli, the argument and model builders) are in helpers.py: a test module
imports them with `from helpers import …`, never from this file."""

import logging
import os
import sys

import pytest

# pytest-xdist's workers share the cores: one intra-op thread each, also in the CLI runs they start (the OpenMP
# threads of two processes fighting over 2 cores make every step several times slower than one thread each).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)

from helpers import fit_in, ner_args, re_args, tiny_args  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def kslm_cache(tmp_path_factory):
    """Tokenizers and the embedded corpus are cached per test session, never in the user's ~/.cache."""
    path = tmp_path_factory.mktemp("kslm-cache")
    os.environ["KSLM_CACHE"] = str(path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    return path


def _lightning_logs_to_current_stderr(names):
    for name in names:
        for h in logging.getLogger(name).handlers:
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                h.stream = sys.stderr  # not setStream: it flushes the old (maybe closed) stream


@pytest.fixture(autouse=True)
def lightning_log_to_current_stderr():
    """Lightning's log handlers hold the stderr of import time; point them at this test's (captured) stderr."""
    _lightning_logs_to_current_stderr(("lightning.pytorch", "lightning.fabric"))
    yield


@pytest.fixture
def workdir(tmp_path, monkeypatch, capsys):
    """The test's folder as working directory; Lightning's log handlers write to the captured stderr (set up after
    capsys, so that an error's stderr holds only what this run printed)."""
    _lightning_logs_to_current_stderr([n for n in logging.Logger.manager.loggerDict if n.startswith("lightning")])
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a module of thousands of tiny ops, where threads only add sync overhead (≈2× slower
    on 2 cores). Autouse in tests/nn (its conftest.py); other modules ask for it with
    `pytestmark = pytest.mark.usefixtures("single_thread")`."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory):
    """~150 kB of English paragraphs (Python's documentation topics): enough for a tokenizer and a few batches."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k].strip() for k in sorted(topics))[:150_000]
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory, small_corpus):
    """One tiny checkpoint of each task, fitted once per session ({"lm", "ner", "re"} → last.ckpt); tests only
    read them."""
    lm = tmp_path_factory.mktemp("lm")
    ner = tmp_path_factory.mktemp("ner")
    re_ = tmp_path_factory.mktemp("re")
    return {"lm": fit_in(lm, tiny_args(small_corpus, lm, steps=3, config="configs/lm/gau.yaml")),
            "ner": fit_in(ner, ner_args(ner, steps=20)), "re": fit_in(re_, re_args(re_, steps=60))}
