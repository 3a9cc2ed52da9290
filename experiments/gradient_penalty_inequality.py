"""Input- vs parameter-gradient penalty: the inequality and Su's reading of it (post 9, "输入梯度惩罚与参数梯度惩罚的
一个不等式", kexue.fm/archives/8796; Dherin et al., arXiv 2111.15090).

Claim (Dherin et al.): for an l-layer MLP h_{t+1} = g(W_t h_t + b_t), h_1 = x, and any scalar f of its output,

    ‖∇_x f‖² · Σ_t (1 + ‖h_t‖²) / (‖W_t‖² ‖∇_x h_t‖²)  ≤  ‖∇_θ f‖²        (spectral norms; Frobenius works too)

so a parameter-gradient penalty contains an input-gradient penalty. Su's correction: the paper's argument that
‖W‖ ≈ 0 makes the bracket large is wrong for standard (near-orthogonal) inits; his reading is that in a healthy
network ‖h‖, ‖W‖ and ‖∇_x h‖ stay roughly constant, so the parameter penalty ≈ a rescaled input penalty.

    PYTHONPATH=. OMP_NUM_THREADS=1 python experiments/gradient_penalty_inequality.py [--steps 300]
    PYTHONPATH=. python experiments/gradient_penalty_inequality.py --table    # the stored results' tables again

Part 1 evaluates both sides exactly in float64 (Jacobians by autograd, spectral norms by SVD) on random MLPs:
depths 2–8, widths 16–64, tanh / ReLU / SquarePlus, Xavier init and a 10× smaller init, f = a random linear readout
of the output; it reports the largest LHS/RHS ratio (must be ≤ 1) and the spectral norms ‖W_t‖ at init.
Part 2 trains a kslm Transformer LM (kslm.nn.Backbone, plain AdamW loop, char-level Tiny Shakespeare) and every
--every steps measures, on 8 fixed held-out batches, ‖∂L/∂e‖² (e = the embedding output, what
`--model.penalty.kind input` penalises) and ‖∇_θ L‖² (what `parameter` penalises). If Su's reading holds, the
ratio ‖∇_θ L‖² / ‖∂L/∂e‖² is nearly the same across batches at a step (so one penalty is the other rescaled) and
drifts slowly over training.
"""

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

from _common import RESULTS, print_tables, save, table_flag
from _plots import figure, figures_after_run, log_xticks, plot_flag, plot_stored

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
STORED = [RESULTS / "gradient_penalty_inequality.json"]


def mlp_sides(depth: int, width: int, act: str, scale: float, gen) -> dict:
    """LHS and RHS of the inequality (spectral and Frobenius) for one random MLP and one random input, in float64;
    `gen` is the torch.Generator every draw comes from."""
    import torch

    from kslm.nn.activations import squareplus

    g = {"tanh": torch.tanh, "relu": torch.relu, "squareplus": squareplus}[act]
    dims = [width] * (depth + 1)
    Ws = [(torch.randn(dims[t + 1], dims[t], generator=gen, dtype=torch.float64) * scale * math.sqrt(2 / (dims[t] + dims[t + 1])))
          .requires_grad_() for t in range(depth)]
    bs = [(0.1 * torch.randn(dims[t + 1], generator=gen, dtype=torch.float64)).requires_grad_() for t in range(depth)]
    readout = torch.randn(dims[-1], generator=gen, dtype=torch.float64)
    x = torch.randn(width, generator=gen, dtype=torch.float64).requires_grad_()

    def layers(inp):
        hs = [inp]
        for W, b in zip(Ws, bs, strict=True):
            hs.append(g(W @ hs[-1] + b))
        return hs

    hs = layers(x)
    f = readout @ hs[-1]
    grads = torch.autograd.grad(f, [x, *Ws, *bs])
    gx, gtheta = grads[0], grads[1:]
    jac = torch.autograd.functional.jacobian(lambda inp: torch.cat(layers(inp)[:-1]), x)  # ∇_x h_t for t = 1..l
    jacs = jac.split([h.numel() for h in hs[:-1]])
    rhs = sum(gr.square().sum() for gr in gtheta).item()
    out = {"depth": depth, "width": width, "act": act, "scale": scale, "rhs": rhs,
           "w_spectral": [torch.linalg.matrix_norm(W.detach(), 2).item() for W in Ws]}
    for kind, ord_ in (("spectral", 2), ("frobenius", "fro")):
        bracket = sum((1 + h.detach().square().sum()) / (torch.linalg.matrix_norm(W.detach(), ord_) ** 2
                                                        * torch.linalg.matrix_norm(J, ord_) ** 2)
                      for h, W, J in zip(hs[:-1], Ws, jacs, strict=True))
        out[f"lhs_{kind}"] = (gx.square().sum() * bracket).item()
        out[f"ratio_{kind}"] = out[f"lhs_{kind}"] / rhs
    return out


def part1(seed: int = 0) -> list:
    import torch

    gen = torch.Generator().manual_seed(seed)
    return [mlp_sides(depth, width, act, scale, gen) for depth in (2, 4, 8) for width in (16, 64)
            for act in ("tanh", "relu", "squareplus") for scale in (1.0, 0.1) for _ in range(5)]


def part2(a) -> dict:
    import torch
    from torch.nn import functional as F

    from kslm.data.lm import LMDataModule
    from kslm.nn import Backbone, BackboneConfig

    tok = LMDataModule(data_files=str(DATA), tokenizer_kind="char", vocab_size=512).load_tokenizer()
    text = DATA.read_text(encoding="utf-8")
    cut = int(len(text) * 0.95)
    train_ids = torch.tensor(tok.encode(text[:cut]).ids)
    val_ids = torch.tensor(tok.encode(text[cut:]).ids)
    T, B = 128, 16
    torch.manual_seed(1234)
    model = Backbone(BackboneConfig(vocab_size=tok.get_vocab_size(), d_model=a.d_model, n_layers=a.layers, n_heads=4,
                                    max_length=T, tied_init="swap"))  # as configs/lm/tinyshakespeare.yaml
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.98), weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    val_batches = [torch.stack([val_ids[i:i + T + 1] for i in torch.randint(0, len(val_ids) - T - 1, (B,), generator=gen)])
                   for _ in range(8)]
    captured = []
    model.embed.register_forward_hook(lambda m, i, o: captured.append(o))

    def loss_of(batch):
        captured.clear()
        return F.cross_entropy(model.logits(model(batch[:, :-1])).flatten(0, 1).float(), batch[:, 1:].flatten())

    def measure(step):
        model.eval()
        rows = []
        for batch in val_batches:
            loss = loss_of(batch)
            ge, *gt = torch.autograd.grad(loss, [captured[0], *params])
            rows.append({"loss": loss.item(), "input": ge.double().square().sum().item(),
                         "param": sum(g.double().square().sum().item() for g in gt)})
        model.train()
        ratios = [r["param"] / r["input"] for r in rows]
        return {"step": step, "val_loss": statistics.mean(r["loss"] for r in rows),
                "input_sq": statistics.mean(r["input"] for r in rows), "param_sq": statistics.mean(r["param"] for r in rows),
                "ratio_mean": statistics.mean(ratios), "ratio_cv": statistics.pstdev(ratios) / statistics.mean(ratios),
                "corr_input_param": correlation([r["input"] for r in rows], [r["param"] for r in rows])}

    points = [measure(0)]
    for step in range(1, a.steps + 1):
        starts = torch.randint(0, len(train_ids) - T - 1, (B,), generator=gen)
        lr = a.lr * min(1.0, step / 20)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = loss_of(torch.stack([train_ids[i:i + T + 1] for i in starts]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % a.every == 0:
            points.append(measure(step))
            print(f"step {step}: val {points[-1]['val_loss']:.3f} ratio {points[-1]['ratio_mean']:.3g}", file=sys.stderr)
    return {"d_model": a.d_model, "layers": a.layers, "lr": a.lr, "params": sum(p.numel() for p in params), "points": points}


def correlation(xs, ys) -> float:
    mx, my = statistics.mean(xs), statistics.mean(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    return sxy / math.sqrt(sum((x - mx) ** 2 for x in xs) * sum((y - my) ** 2 for y in ys))


def table(p: dict) -> str:
    out = ["| MLP family | n | max LHS/RHS (spectral) | median | max LHS/RHS (Frobenius) | ‖W_t‖₂ at init (range) |",
           "|---|---:|---:|---:|---:|---|"]
    groups = {}
    for r in p["mlps"]:
        groups.setdefault((r["act"], r["scale"]), []).append(r)
    for (act, scale), rs in groups.items():
        ws = [w for r in rs for w in r["w_spectral"]]
        out.append(f"| {act}, init × {scale:g} | {len(rs)} | {max(r['ratio_spectral'] for r in rs):.3g} | "
                   f"{statistics.median(r['ratio_spectral'] for r in rs):.3g} | {max(r['ratio_frobenius'] for r in rs):.3g} | "
                   f"{min(ws):.2f}–{max(ws):.2f} |")
    if p.get("training"):
        out += ["", "| step | val loss | mean ‖∂L/∂e‖² | mean ‖∇θL‖² | ratio θ/e (mean over 8 batches) | CV of the ratio "
                "across batches | corr(‖∂L/∂e‖², ‖∇θL‖²) across batches |", "|---:|---:|---:|---:|---:|---:|---:|"]
        for q in p["training"]["points"]:
            out.append(f"| {q['step']} | {q['val_loss']:.3f} | {q['input_sq']:.3g} | {q['param_sq']:.3g} | "
                       f"{q['ratio_mean']:.3g} | {q['ratio_cv']:.2f} | {q['corr_input_param']:.2f} |")
    return "\n".join(out)


ACT_COLOURS = {"tanh": "C0", "relu": "C3", "squareplus": "C2"}


def figures(payload):
    """Part 1: LHS against RHS of the inequality for every random MLP (all below LHS = RHS), and LHS/RHS by depth.
    Part 2: the two squared gradient norms and their ratio during the LM's training."""
    mlps = payload["mlps"]
    fig, (ax, ax2) = figure(2)
    for act, colour in ACT_COLOURS.items():
        for scale, marker in ((1.0, "o"), (0.1, "x")):
            rs = [r for r in mlps if r["act"] == act and r["scale"] == scale]
            if rs:
                ax.scatter([r["rhs"] for r in rs], [r["lhs_spectral"] for r in rs], s=12, color=colour, marker=marker,
                           label=f"{act}, init × {scale:g}")
                ax2.scatter([r["depth"] * (1 + 0.06 * (r["width"] > 16)) for r in rs], [r["ratio_spectral"] for r in rs],
                            s=12, color=colour, marker=marker)
    lo, hi = min(r["rhs"] for r in mlps), max(r["rhs"] for r in mlps)
    ax.plot([lo, hi], [lo, hi], "k--", linewidth=1, label="LHS = RHS")
    ax.set(xscale="log", yscale="log", xlabel="RHS  ‖∇θ f‖²", ylabel="LHS  ‖∇ₓf‖²·Σ(1+‖h‖²)/(‖W‖²‖∇ₓh‖²)",
           title=f"The inequality in {len(mlps)} random MLPs (spectral ‖W‖)")
    ax.legend(fontsize=7)
    ax2.axhline(1.0, color="k", linestyle="--", linewidth=1)
    depths = sorted({r["depth"] for r in mlps})
    ax2.set(xscale="log", yscale="log", xlabel="depth (right of each tick: width 64)", ylabel="LHS / RHS",
            title="Ratio by depth (≤ 1 everywhere)")
    log_xticks(ax2, depths)
    yield "inequality", fig
    if payload.get("training"):
        pts = payload["training"]["points"]
        steps = [q["step"] for q in pts]
        fig, (ax, ax2) = figure(2)
        ax.plot(steps, [q["input_sq"] for q in pts], "o-", label="‖∂L/∂e‖² (input penalty)")
        ax.plot(steps, [q["param_sq"] for q in pts], "s-", label="‖∇θL‖² (parameter penalty)")
        ax.set(yscale="log", xlabel="step", ylabel="mean over 8 held-out batches", title="Squared gradient norms, LM training")
        ax.legend()
        ax2.errorbar(steps, [q["ratio_mean"] for q in pts], yerr=[q["ratio_mean"] * q["ratio_cv"] for q in pts], fmt="o-",
                     color="C2", capsize=3, label="‖∇θL‖² / ‖∂L/∂e‖² (± 1 sd across batches)")
        ax2.set(xlabel="step", ylabel="ratio", ylim=(0, None), title="Parameter / input penalty")
        ax2.legend()
        yield "training", fig


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="LM training steps in part 2 (0: skip it)")
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--out", default=str(REPO / "experiments" / "results" / "gradient_penalty_inequality.json"))
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
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    torch.set_num_threads(1)
    t0 = time.time()
    out = Path(a.out).resolve()
    payload = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
               "command": " ".join(["python", "experiments/gradient_penalty_inequality.py", *sys.argv[1:]]),
               "mlps": part1()}
    save(out, payload)
    if a.steps:
        payload["training"] = part2(a)
    payload["wall_seconds"] = time.time() - t0
    save(out, payload)
    figures_after_run(payload, out, figures, a.figures)
    print(table(payload))


if __name__ == "__main__":
    main()
