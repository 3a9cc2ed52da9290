"""Plain helpers shared by the test modules (`from helpers import …`; tests/ is on sys.path under pytest's default
rootdir-based import mode). Fixtures live in conftest.py, which is never imported by name.

- paths: REPO, SHARED (the real datasets of the slow tests), the sample files under data/samples;
- running the CLI in this process: run_cli, fit_in, and the argument builders for seconds-long runs of the shipped configs:
  tiny_args (LM), ner_args, re_args;
- reading what a run wrote: read_jsonl, scalars (TensorBoard);
- models: tiny_config / tiny_backbone, the one small Backbone builder of the unit tests, ids, matmul_params;
- the import graph of a package (tests/test_imports.py, tests/test_formats.py).
"""

import ast
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SAMPLES = REPO / "data" / "samples"
CLUENER = SAMPLES / "cluener.jsonl"
CMEEE = SAMPLES / "cmeee.json"
CANONICAL = SAMPLES / "re_canonical.jsonl"
DUIE = SAMPLES / "re_duie.jsonl"
RE_CONFIG = REPO / "configs" / "re" / "duie-gplinker.yaml"


# ------------------------------------------------------------------------------------------------ the CLI
def run_cli(args, capsys=None):
    """Run `kslm …` in this process; returns (exit code, stderr). Every plain log handler (Lightning's among them,
    created while an earlier test captured stderr, whose stream pytest has closed since) is pointed at the current
    stderr first."""
    import logging

    from kslm.cli import main

    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for h in getattr(logger, "handlers", []):
            if type(h) is logging.StreamHandler:
                h.stream = sys.stderr
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    err = capsys.readouterr().err if capsys is not None else ""
    return code, err


def fit_in(folder, args):
    """`kslm fit ARGS` in this process with `folder` as working directory (for fixtures, which cannot use
    monkeypatch.chdir); fails on a non-zero exit. Returns folder/ckpt/last.ckpt, where the argument builders below
    put it."""
    import os

    cwd = os.getcwd()
    os.chdir(folder)
    try:
        code, err = run_cli(["fit", *args])
    finally:
        os.chdir(cwd)
    assert code == 0, err
    return Path(folder) / "ckpt" / "last.ckpt"


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


def ner_args(tmp, *extra, data=CLUENER, val=None, steps=2, head="egp", config="configs/ner/cluener-egp.yaml"):
    """CLI arguments for a seconds-long NER fit of a shipped config on a sample file (TensorBoard logs go to ./logs)."""
    return [
        "--config", str(REPO / config),
        # the shipped recipe's regularisers (dropout, token dropout, input gradient penalty) off: the tests overfit
        # tiny samples in a few steps; tests that want them pass them in `extra`, which comes last and wins
        "--model.backbone.dropout", "0.0", "--model.token_dropout", "0.0", "--model.penalty.kind", "none",
        "--data.train_file", str(data), "--data.val_file", str(val or data), "--data.dev_split", "null",
        "--data.batch_size", "4", "--data.max_length", "32",
        "--model.head", head, "--model.head_size", "16",
        "--model.backbone.d_model", "32", "--model.backbone.n_layers", "2", "--model.backbone.n_heads", "2",
        "--model.optim.warmup_steps", "0",
        "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps),
        "--trainer.check_val_every_n_epoch", "null", "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--checkpoint.dirpath", str(tmp / "ckpt"), *extra,
    ]


def re_args(tmp, *extra, data=CANONICAL, val=None, steps=2, fmt="auto"):
    """CLI arguments for a seconds-long GPLinker fit of configs/re/duie-gplinker.yaml on a sample file."""
    return [
        "--config", str(RE_CONFIG),
        "--data.train_file", str(data), "--data.val_file", str(val or data), "--data.format", fmt,
        "--data.skip_unlocatable", "false", "--data.batch_size", "8", "--data.max_length", "32",
        "--model.head_size", "32", "--model.backbone.d_model", "64", "--model.backbone.n_layers", "2",
        "--model.backbone.n_heads", "2", "--model.optim.warmup_steps", "0", "--model.optim.lr", "1e-2",
        "--model.optim.schedule", "constant",
        "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps),
        "--trainer.check_val_every_n_epoch", "null", "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--checkpoint.dirpath", str(tmp / "ckpt"), *extra,
    ]


# ------------------------------------------------------------------------------------------------ outputs
def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


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


# ------------------------------------------------------------------------------------------------ models
TINY_VOCAB = 40
TINY = {"vocab_size": TINY_VOCAB, "d_model": 16, "n_layers": 2}  # every block
TINY_ATTENTION = {"n_heads": 2, "qk_dim": 8}  # transformer and gau blocks only: an rnn backbone keeps the defaults


def tiny_config(block="transformer", mask="causal", **overrides):
    """A BackboneConfig of TINY sizes (and TINY_ATTENTION for attention blocks); `overrides` win."""
    from kslm.nn import BackboneConfig

    sizes = TINY if block == "rnn" else {**TINY, **TINY_ATTENTION}
    return BackboneConfig(**{**sizes, "block": block, "mask": mask, **overrides})


def tiny_backbone(block="transformer", mask="causal", seed=0, *, double=True, train=False, **overrides):
    """A Backbone(tiny_config(block, mask, **overrides)) initialised after torch.manual_seed(seed); float64 unless
    `double=False`, in eval mode unless `train`."""
    import torch

    from kslm.nn import Backbone

    cfg = tiny_config(block, mask, **overrides)
    torch.manual_seed(seed)
    model = Backbone(cfg)
    if double:
        model = model.double()
    return model.train(train)


def ids(B, T, seed=0, vocab=TINY_VOCAB):
    """[B, T] token ids in [0, vocab) from their own generator."""
    import torch

    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def matmul_params(m):
    """Parameters that take part in a matmul per token: every 2-D weight of the residual sub-layers, the output
    layer (d·V, tied or not) and the ortho projection. Norm gains, γ/β and the embedding lookup do not."""
    n = sum(p.numel() for p in m.layers.parameters() if p.dim() == 2)
    n += m.cfg.d_model * m.cfg.vocab_size
    if m.head.ortho is not None:
        n += m.head.ortho.weight.numel()
    return n


def save_untrained(task, path) -> dict:
    """A built task saved as `kslm fit` saves it (weights, payload, Lightning's keys), without training; → the dict."""
    import lightning
    import torch

    ckpt = {"state_dict": task.state_dict(), "pytorch-lightning_version": lightning.__version__, "epoch": 0,
            "global_step": 0}
    task.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return ckpt


# ------------------------------------------------------------------------------------------------ imports
def modules(package_dir: Path) -> dict[str, Path]:
    """Dotted module name → file, for every .py under `package_dir` (a package's __init__.py is the package)."""
    out = {}
    for p in sorted(package_dir.rglob("*.py")):
        parts = p.relative_to(package_dir.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module → the package's modules it imports, at module level or inside functions / classes / conditionals
    (every Import / ImportFrom node of its AST), absolute or relative. `from a.b import c` is an edge to the module
    a.b.c if there is one, else to a.b; an import names the module it names, not the packages above it."""
    mods = modules(package_dir)

    def known(name):
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets |= {known(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: level 1 is this module's package, 2 its parent, …
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] +
                                    ([node.module] if node.module else []))
                else:
                    base = node.module
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in mods else known(base) for a in node.names}
        graph[mod] = targets - {None, mod}
    return graph
