"""AdamW (best of 3 LRs) vs Amos (default ξ), the Amos-AdamW recipe and EG-adapted AdamW (untuned LR), on a small
character LM (Tiny Shakespeare) and on CLUENER NER, through `kslm fit` (issue 5; kexue.fm/archives/9344, 8968).

    PYTHONPATH=. python experiments/optimizers.py [--tasks lm ner] [--lm-steps 120] [--ner-steps 120]
                                                  [--out experiments/results/optimizers.json]
    PYTHONPATH=. python experiments/optimizers.py --table [JSON ...]    # the stored results' tables again, computing nothing

Per run: final validation loss (LM: token cross-entropy; NER: span MCCE, with the span F1 beside it), the first
validation step at which the run reaches the best AdamW's final loss, and the optimiser-state bytes in the final
checkpoint (slots; parameters not counted).
Amos's ξ is its default 1/√(batches per epoch); the Amos-AdamW recipe uses Su's α₀ = 1e-2 ("easy tasks") with
inverse-time D(t) halving over the run; EG-AdamW uses the shipped config's LR (untuned). The AdamW grid
[3e-3, 1e-2, 3e-2] brackets the best LR of a first sweep over [1e-3, 3e-3, 1e-2], whose best was its largest.
Runs share this process (one lightning import) and write TensorBoard logs under a temporary folder; the JSON is
written atomically after every run.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

from _common import RESULTS, kslm_main, save, series, workdir
from _plots import after_step, figure, figures_after_run, plot_flag, plot_stored

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
# the stored sweeps, each a pair of files pooled into one table (the AdamW grid's best is picked per task)
STORED = [[RESULTS / "optimizers_lm.json", RESULTS / "optimizers_ner.json"],
          [RESULTS / "optimizers_lm_first_sweep.json", RESULTS / "optimizers_ner_first_sweep.json"]]

TASKS = {
    "lm": {
        "config": "configs/lm/tinyshakespeare.yaml", "metric": "val/loss", "lower_is_better": True,
        "lrs": [3e-3, 1e-2, 3e-2], "config_lr": 2e-3,  # the shipped config's lr
        "args": ["--data.data_files", str(DATA / "tinyshakespeare" / "input.txt"), "--data.seq_len", "128",
                 "--data.batch_size", "16", "--model.backbone.d_model", "64", "--model.backbone.n_layers", "2",
                 "--model.backbone.n_heads", "4", "--model.optim.warmup_steps", "20", "--trainer.limit_val_batches", "8"],
    },
    "ner": {
        "config": "configs/ner/cluener-egp.yaml", "metric": "val/loss", "lower_is_better": True, "also": "val/f1",
        "lrs": [3e-3, 1e-2, 3e-2], "config_lr": 1e-3,  # the shipped config's lr
        "args": ["--data.train_file", str(DATA / "cluener2020" / "train.json"), "--data.batch_size", "16",
                 "--data.max_length", "64", "--model.backbone.d_model", "64", "--model.backbone.n_layers", "2",
                 "--model.backbone.n_heads", "4", "--model.optim.warmup_steps", "20", "--trainer.limit_val_batches", "8",
                 # the setup these results were measured with, before the shipped config gained its regularisers
                 "--model.backbone.dropout", "0.0", "--model.token_dropout", "0.0", "--model.penalty.kind", "none"],
    },
}


def runs(task):
    spec = TASKS[task]
    out = [(f"adamw lr={lr:g}", ["--model.optim.name", "adamw", "--model.optim.lr", str(lr)]) for lr in spec["lrs"]]
    out.append(("amos (ξ = 1/√N)", ["--model.optim.name", "amos"]))
    out.append(("amos_adamw α₀=1e-2", ["--model.optim.name", "amos_adamw", "--model.optim.lr", "1e-2"]))
    out.append((f"eg_adamw lr={spec['config_lr']:g}",
                ["--model.optim.name", "eg_adamw", "--model.optim.lr", str(spec["config_lr"])]))
    return out


def tensor_bytes(obj) -> int:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for k, v in obj.items() if k != "param_groups")
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def run_one(task, name, extra, steps, workdir):
    import torch

    spec = TASKS[task]
    rundir = Path(workdir) / task / name.replace(" ", "_").replace("/", "_")
    val_every = max(steps // 6, 1)
    args = ["fit", "--config", str(REPO / spec["config"]), *spec["args"], *extra, "--trainer.max_steps", str(steps),
            "--trainer.val_check_interval", str(val_every), "--trainer.check_val_every_n_epoch", "null",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--checkpoint.dirpath", str(rundir / "ckpt"), "--checkpoint.save_last", "true"]
    t0 = time.time()
    kslm_main(args, rundir)
    ckpt = torch.load(rundir / "ckpt" / "last.ckpt", weights_only=True)
    n_params = sum(v.numel() for v in ckpt["state_dict"].values())
    curve = series(rundir / "logs", spec["metric"])
    also = series(rundir / "logs", spec["also"])[-1][1] if "also" in spec else None
    return {"task": task, "run": name, "args": extra, "steps": steps, "curve": curve, "final": curve[-1][1], "also": also,
            "state_bytes": tensor_bytes(ckpt["optimizer_states"][0]), "params": n_params, "seconds": time.time() - t0,
            "train_curve": series(rundir / "logs", "train/loss")}


def summarise(results):
    rows = []
    for task in TASKS:
        rs = [r for r in results if r["task"] == task]
        if not rs:
            continue
        low = TASKS[task]["lower_is_better"]
        adamw = [r for r in rs if r["run"].startswith("adamw")]
        best = min(adamw, key=lambda r: r["final"]) if low else max(adamw, key=lambda r: r["final"])
        for r in rs:
            reached = next((s for s, v in r["curve"] if (v <= best["final"] if low else v >= best["final"])), None)
            rel = (r["final"] - best["final"]) / abs(best["final"])
            rows.append({**{k: r.get(k) for k in ("task", "run", "final", "also", "state_bytes", "steps")},
                         "vs_best_adamw": rel, "steps_to_best_adamw_final": reached,
                         "state_vs_adamw": r["state_bytes"] / best["state_bytes"]})
    return rows


def table(rows) -> str:
    lines = ["| task | run | final val loss | vs best AdamW | steps to best AdamW's final | val F1 | optimiser state | vs AdamW |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        f1 = f"{100 * r['also']:.1f}" if r.get("also") is not None else "–"
        lines.append(f"| {r['task']} | {r['run']} | {r['final']:.4f} | {100 * r['vs_best_adamw']:+.1f} % | "
                     f"{r['steps_to_best_adamw_final'] if r['steps_to_best_adamw_final'] is not None else 'not reached'}"
                     f" / {r['steps']} | {f1} | {r['state_bytes'] / 1024:.0f} KiB | {100 * r['state_vs_adamw']:.0f} % |")
    return "\n".join(lines)


def print_stored_tables(files) -> None:
    """`--table`: one table per sweep, pooling the runs of its files (the files given, or each stored sweep)."""
    sweeps = [[Path(f) for f in files]] if files else [s for s in STORED if all(p.is_file() for p in s)]
    if not sweeps:
        print(f"no stored results ({', '.join(str(p) for s in STORED for p in s)})")
    for i, sweep in enumerate(sweeps):
        results = [r for path in sweep for r in json.loads(path.read_text(encoding="utf-8"))["runs"]]
        print(("\n" if i else "") + " + ".join(p.name for p in sweep) + ":\n")
        print(table(summarise(results)))


def _style(run: str, i: int):
    """AdamW's LRs in shades of blue, the other optimisers each in its own colour."""
    if run.startswith("adamw"):
        return {"color": ("#9ecae1", "#3182bd", "#08519c", "#08306b")[min(i, 3)], "linestyle": "-"}
    colour = {"amos": "C3", "amos_adamw": "C2", "eg_adamw": "C1"}.get(run.split()[0], "C7")
    return {"color": colour, "linestyle": "--"}


def figures(payload):
    """Per task: the val-loss curve of every optimiser run, and its final val loss against its optimiser state."""
    tasks = [t for t in TASKS if any(r["task"] == t for r in payload["runs"])]
    fig, axes = figure(2, nrows=len(tasks))
    for row, task in enumerate(tasks):
        ax, ax2 = axes[2 * row], axes[2 * row + 1]
        rs = [r for r in payload["runs"] if r["task"] == task]
        n_adamw = 0
        for r in rs:
            style = _style(r["run"], n_adamw)
            n_adamw += r["run"].startswith("adamw")
            if r.get("train_curve"):  # runs made after 2026-11-28
                ax.plot(*after_step(r["train_curve"]), alpha=0.3, linewidth=1, **style)
            ax.plot(*after_step(r["curve"]), marker="o", label=r["run"], **style)
            ax2.scatter([r["state_bytes"] / 1024], [r["final"]], color=style["color"], s=30)
            ax2.annotate(r["run"], (r["state_bytes"] / 1024, r["final"]), fontsize=7, xytext=(4, 2), textcoords="offset points")
        ax.set(xlabel="step", ylabel="val loss", title=f"{task}: val loss ({TASKS[task]['config']})")
        ax.legend(fontsize=7)
        ax2.set(xscale="log", xlabel="optimiser state (KiB, log)", ylabel="final val loss",
                title=f"{task}: loss vs optimiser memory")
        ax2.margins(x=0.3, y=0.1)
    yield "curves", fig


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["lm", "ner"], choices=list(TASKS))
    ap.add_argument("--lm-steps", type=int, default=120)
    ap.add_argument("--ner-steps", type=int, default=120)
    ap.add_argument("--out", default=str(REPO / "experiments" / "results" / "optimizers.json"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--table", nargs="*", metavar="JSON",
                    help="print one table of the runs of these result files, pooled, and exit, computing nothing "
                    "(default: the stored sweeps, " + "; ".join(" + ".join(p.name for p in s) for s in STORED) + ")")
    plot_flag(ap, [p for sweep in STORED for p in sweep])
    a = ap.parse_args()
    if a.table is not None:
        print_stored_tables(a.table)
        return
    if a.plot is not None:
        plot_stored(a.plot, [p for sweep in STORED for p in sweep], figures, a.figures)
        return
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    torch.set_num_threads(a.threads)  # on a shared CPU one thread avoids stalls at every OpenMP barrier
    out = Path(a.out).resolve()
    payload = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "command": " ".join(["python", "experiments/optimizers.py", *sys.argv[1:]]), "runs": []}
    with workdir("kslm-optim-") as work:
        for task in a.tasks:
            steps = a.lm_steps if task == "lm" else a.ner_steps
            for name, extra in runs(task):
                payload["runs"].append(run_one(task, name, extra, steps, work))
                r = payload["runs"][-1]
                print(f"{task} {name}: final {r['final']:.4f} ({r['seconds']:.0f} s)", file=sys.stderr)
                save(out, payload)  # after every run: an interrupted sweep keeps what it measured
    payload["summary"] = summarise(payload["runs"])
    save(out, payload)
    figures_after_run(payload, out, figures, a.figures)
    print(table(payload["summary"]))


if __name__ == "__main__":
    main()
