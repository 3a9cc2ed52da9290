"""Heat-equation auxiliary objective vs plain masked-LM pretraining vs none, judged by CLUENER EGP dev span F1 (issue 6).

Post: 用热传导方程来指导自监督学习 (kexue.fm/archives/9359), Su's reading of QB-Heat (arXiv 2211.13228): features of
neighbouring positions differ by one shared linear map, so a masked position's features can be predicted from its
visible neighbours (extrapolation from one side, or interpolation of both sides for text) instead of a shared [MASK]
vector. The post proposes this for NLP without experiments; the claim tested here is the implied one: adding the heat
objective (kslm/nn/heat.py, `--model.aux_objective heat`) to MLM pretraining gives a backbone that fine-tunes better.

    PYTHONPATH=. OMP_NUM_THREADS=1 python experiments/heat_objective.py [--pretrain-steps 400] [--finetune-steps 400]
        [--seeds 1 2] [--out experiments/results/heat_objective.json]
    PYTHONPATH=. python experiments/heat_objective.py --table      # the stored results' table again, computing nothing

Setup: configs/ner/cluener-pretrain.yaml shrunk (d 128, 2 layers, 4 heads, seq 64, batch 32) pretrained with (a) MLM
and (b) MLM + heat (interpolate, weight --aux-weight), equal steps; then configs/ner/cluener-egp.yaml shrunk the same
way fine-tuned from each checkpoint (`--model.pretrained`) and (c) from scratch, equal steps, without the shipped
config's regularisers (dropout, token dropout, gradient penalty), all three with the pretraining's char tokenizer.
Dev = the last 1,000 CLUENER training lines (cluener dev split).
Runs share this process (one lightning import); TensorBoard logs go under a temporary folder; the JSON is written
atomically after every run.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from _common import RESULTS, kslm_main, print_tables, save, series, table_flag, workdir
from _plots import after_step, figure, figures_after_run, plot_flag, plot_stored

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
PRETRAIN_FILES = ["cluener2020/test.json", "duie_v1_sample/train_data.json", "duie_v1_sample/dev_data.json",
                  "cmeie/CMeIE_dev.json", "cmeie/CMeIE_test.json", "cmeee/v2/CMeEE-V2_test.json", "chinese_poetry/corpus.txt"]
SHAPE = ["--model.backbone.d_model", "128", "--model.backbone.n_layers", "2", "--model.backbone.n_heads", "4"]
STORED = [RESULTS / "heat_objective.json"]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "10",
         "--trainer.check_val_every_n_epoch", "null"]


def fit(rundir: Path, args) -> float:
    t0 = time.time()
    kslm_main(["fit", *args, *QUIET, "--checkpoint.dirpath", str(rundir / "ckpt"), "--checkpoint.save_last", "true"], rundir)
    return time.time() - t0


def pretrain(work: Path, name: str, extra, steps: int, seed: int) -> dict:
    rundir = work / f"pretrain-{name}"
    files = json.dumps([str(DATA / f) for f in PRETRAIN_FILES])
    args = ["--config", str(REPO / "configs/ner/cluener-pretrain.yaml"), "--data.data_files", files,
            *SHAPE, "--model.optim.warmup_steps", "50", "--model.optim.lr", "2e-3", "--trainer.max_steps", str(steps),
            "--trainer.val_check_interval", str(steps), "--trainer.limit_val_batches", "16", "--seed_everything", str(seed), *extra]
    seconds = fit(rundir, args)
    logs = rundir / "logs"
    aux = series(logs, "train/aux_loss")
    return {"stage": "pretrain", "run": name, "args": extra, "steps": steps, "seconds": seconds,
            "val_mlm_loss": series(logs, "val/loss")[-1][1], "train_aux_loss_first": aux[0][1] if aux else None,
            "train_aux_loss_last": aux[-1][1] if aux else None, "ckpt": str(rundir / "ckpt" / "last.ckpt"),
            "train_curve": series(logs, "train/loss"), "val_curve": series(logs, "val/loss"), "aux_curve": aux,
            "mlm_curve": series(logs, "train/mlm_loss")}  # train/loss is MLM + aux when there is an aux objective


def finetune(work: Path, name: str, ckpt, tokenizer: str, steps: int, seed: int) -> dict:
    rundir = work / f"finetune-{name}-seed{seed}"
    init = ["--model.pretrained", ckpt] if ckpt else ["--data.tokenizer", tokenizer, *SHAPE]
    # the shipped config's regularisers (dropout, token dropout, gradient penalty) off for every run alike
    args = ["--config", str(REPO / "configs/ner/cluener-egp.yaml"), "--data.train_file", str(DATA / "cluener2020/train.json"),
            *init, "--model.backbone.dropout", "0.0", "--model.token_dropout", "0.0", "--model.penalty.kind", "none",
            "--model.optim.warmup_steps", "50", "--model.optim.lr", "2e-3",
            "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(max(steps // 2, 1)),
            "--seed_everything", str(seed)]
    seconds = fit(rundir, args)
    f1 = series(rundir / "logs", "val/f1")
    return {"stage": "finetune", "run": name, "seed": seed, "steps": steps, "seconds": seconds, "f1_curve": f1,
            "f1": f1[-1][1], "val_loss": series(rundir / "logs", "val/loss")[-1][1],
            "val_loss_curve": series(rundir / "logs", "val/loss")}


def table(payload) -> str:
    pre = {r["run"]: r for r in payload["runs"] if r["stage"] == "pretrain"}
    lines = ["| pretraining | val MLM loss | heat loss (first → last) | pretrain s | dev span F1 per seed | mean F1 "
             "| fine-tune s |",
             "|---|---:|---:|---:|---|---:|---:|"]
    for name in ("mlm", "mlm+heat", "none"):
        fts = [r for r in payload["runs"] if r["stage"] == "finetune" and r["run"] == name]
        if not fts:
            continue
        p = pre.get(name, {})
        loss = f"{p['val_mlm_loss']:.3f}" if p else "–"
        heat = f"{p['train_aux_loss_first']:.3f} → {p['train_aux_loss_last']:.3f}" if p.get("train_aux_loss_first") else "–"
        f1s = [100 * r["f1"] for r in fts]
        lines.append(f"| {name} | {loss} | {heat} | {p['seconds']:.0f} |" if p else f"| {name} | {loss} | {heat} | – |")
        lines[-1] += (f" {' / '.join(f'{x:.1f}' for x in f1s)} | {statistics.mean(f1s):.1f} |"
                      f" {statistics.mean(r['seconds'] for r in fts):.0f} |")
    return "\n".join(lines)


RUN_COLOURS = {"mlm": "C0", "mlm+heat": "C3", "none": "C7"}


def figures(payload):
    """Dev span F1 during fine-tuning per pretraining (thin: each seed, markers: their mean); the pretraining curves
    (train MLM loss, heat loss) where the result file has them (runs made after 2026-11-28)."""
    fts = [r for r in payload["runs"] if r["stage"] == "finetune"]
    fig, (ax,) = figure()
    for name, colour in RUN_COLOURS.items():
        rs = [r for r in fts if r["run"] == name]
        if not rs:
            continue
        for r in rs:
            ax.plot(*after_step([(s, 100 * v) for s, v in r["f1_curve"]]), color=colour, alpha=0.35, linewidth=1)
        steps = [s for s, _ in rs[0]["f1_curve"]]
        mean = [statistics.mean(100 * dict(r["f1_curve"])[s] for r in rs) for s in steps]
        ax.plot(*after_step(list(zip(steps, mean, strict=True))), "o-", color=colour,
                label=f"{'no' if name == 'none' else name} pretraining (mean of {len(rs)} seeds)")
    ax.set(xlabel="fine-tuning step", ylabel="CLUENER dev span F1 (%)", title="Fine-tuning after MLM / MLM + heat pretraining")
    ax.legend()
    yield "finetune", fig
    pre = [r for r in payload["runs"] if r["stage"] == "pretrain" and r.get("train_curve")]
    if pre:
        fig, (ax, ax2) = figure(2)
        for r in pre:
            mlm = r.get("mlm_curve") or r["train_curve"]
            ax.plot(*after_step(mlm), color=RUN_COLOURS.get(r["run"]), linewidth=1, label=f"{r['run']}: train")
            ax.plot(*after_step(r["val_curve"]), "o", color=RUN_COLOURS.get(r["run"]), label=f"{r['run']}: val")
            if r.get("aux_curve"):
                ax2.plot(*after_step(r["aux_curve"]), color=RUN_COLOURS.get(r["run"]), label=r["run"])
        ax.set(xlabel="pretraining step", ylabel="MLM loss", title="Pretraining: MLM loss")
        ax.legend()
        ax2.set(yscale="log", xlabel="pretraining step", ylabel="heat loss (MSE)", title="Pretraining: heat objective")
        ax2.legend()
        yield "pretrain", fig


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pretrain-steps", type=int, default=400)
    ap.add_argument("--finetune-steps", type=int, default=400)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="fine-tuning seeds")
    ap.add_argument("--aux-weight", type=float, default=1.0)
    ap.add_argument("--heat-mode", default="interpolate", choices=["interpolate", "extrapolate"])
    ap.add_argument("--out", default=str(REPO / "experiments" / "results" / "heat_objective.json"))
    table_flag(ap, STORED)
    plot_flag(ap, STORED)
    a = ap.parse_args()
    if a.table is not None:
        print_tables(a.table, STORED, table)
        return
    if a.plot is not None:
        plot_stored(a.plot, STORED, figures, a.figures)
        return
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)  # the machine is shared: one thread avoids stalls at every OpenMP barrier
    out = Path(a.out).resolve()
    payload = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "command": " ".join(["python", "experiments/heat_objective.py", *sys.argv[1:]]), "runs": []}
    t0 = time.time()
    heat = ["--model.aux_objective", "heat", "--model.aux_weight", str(a.aux_weight), "--model.heat_mode", a.heat_mode]
    with workdir("kslm-heat-") as tmp:
        work = Path(tmp)
        ckpts = {}
        for name, extra in (("mlm", []), ("mlm+heat", heat)):
            payload["runs"].append(pretrain(work, name.replace("+", "_"), extra, a.pretrain_steps, 1234))
            payload["runs"][-1]["run"] = name
            ckpts[name] = payload["runs"][-1]["ckpt"]
            print(f"pretrain {name}: {payload['runs'][-1]}", file=sys.stderr)
            save(out, payload)
        for seed in a.seeds:
            for name in ("mlm", "mlm+heat", "none"):
                r = finetune(work, name.replace("+", "_"), ckpts.get(name), ckpts["mlm"], a.finetune_steps, seed)
                r["run"] = name
                payload["runs"].append(r)
                print(f"finetune {name} seed {seed}: F1 {100 * r['f1']:.1f} ({r['seconds']:.0f} s)", file=sys.stderr)
                save(out, payload)
    payload["wall_seconds"] = time.time() - t0
    save(out, payload)
    figures_after_run(payload, out, figures, a.figures)
    print(table(payload))


if __name__ == "__main__":
    main()
