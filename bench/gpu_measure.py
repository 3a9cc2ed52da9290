"""The measurements of bench/gpu_base.py: the GEMM peak, timed training steps, the GAU memory sweep with the
dense-vs-linear_memory loss check, and the flex_attention probe. Each measurement runs in try/finally (what it built
is dropped and the CUDA cache emptied before the next), under the budget's alarm (bench/gpu_budget.py); a failure is
recorded in its row, never raised. torch and kslm are imported inside the functions."""

import gc
import statistics
import time

from gpu_budget import BudgetExceeded, error_text

# dense vs linear_memory at one T, same weights and batch, bf16 autocast: the two kernels round differently (math vs
# flash / cuDNN SDPA), by ~1e-3 of the loss and a few 1e-2 of the gradient; a wrong mask or scale moves them further
LOSS_RTOL, GRAD_RTOL = 1e-2, 1e-1


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def cleanup(device, dynamo: bool = False):
    """Free what the last measurement left: compiled code (dynamo=True: torch._dynamo.reset(), which drops the model
    its guards hold), garbage, the CUDA cache. Never raises (a cleanup that fails must not end the run): → the error
    text, or None."""
    try:
        import torch

        if dynamo:
            torch._dynamo.reset()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    except Exception as e:  # noqa: BLE001
        return error_text(e)
    return None


def preload():
    """Import what the measurements import, before any of them runs under the budget's alarm: an alarm inside a first
    import leaves a half-initialised module behind (seen: torch._dynamo, whose reset() then failed). → the modules
    that could not be imported, with why."""
    failed = {}
    for name in ("torch._dynamo", "torch._inductor", "kslm.nn", "transformers.models.llama.modeling_llama",
                 "torch.nn.attention.flex_attention"):
        try:
            __import__(name)
        except Exception as e:  # noqa: BLE001 (recorded; the measurements that need it fail alone)
            failed[name] = error_text(e)
    return failed


def _time(fn, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def ids(args, batch, seq, device):
    import torch

    return torch.randint(args.vocab, (batch, seq + 1), generator=torch.Generator().manual_seed(0)).to(device)


def train_steps(model, forward, batch, seq, args, device):
    """→ (timed step seconds, first-step seconds, peak memory GiB or None, losses)."""
    import torch
    from torch.nn import functional as F

    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, **({"fused": True} if device.type == "cuda" else {}))
    x, dtype = ids(args, batch, seq, device), torch.bfloat16 if args.dtype == "bf16" else torch.float32
    cleanup(device)
    times, losses = [], []
    for _ in range(args.warmup + args.steps):
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits = forward(x[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        logits = None
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return times[args.warmup:], times[0], peak, losses


def gemm_rate(n, seconds, device, dtype) -> float:
    """FLOP/s of an n³ product repeated into one output buffer for ≥ `seconds` (no result is kept alive: k products
    cost one output's memory, not k), best of 3 bursts after 3 warm-ups."""
    import torch

    torch.manual_seed(n)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    c = torch.empty(n, n, device=device, dtype=dtype)
    for _ in range(3):
        torch.mm(a, b, out=c)
    iters = max(2, int(seconds / max(1e-5, _time(lambda: torch.mm(a, b, out=c), device))))

    def burst():
        for _ in range(iters):
            torch.mm(a, b, out=c)

    return max(2 * n**3 * iters / _time(burst, device) for _ in range(3))


def matmul_peak(args, device, budget, inject) -> dict:
    """The best bf16 (CPU: fp32) square GEMM rate over the sizes. A size that fails (or that the budget skips or
    stops) is recorded in "failed", and the peak is the best of the others (None if none ran)."""
    import torch

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    per_size, failed = {}, {}
    for n in args.matmul_sizes:
        if reason := budget.refuses("matmul"):
            failed[n] = reason
            continue
        try:
            with budget.bounded("matmul"):
                inject("matmul")
                per_size[n] = gemm_rate(n, args.matmul_seconds, device, dtype)
        except BudgetExceeded:
            failed[n] = "stopped: budget"
        except Exception as e:  # noqa: BLE001 (an OOM, a driver error: recorded, the run goes on)
            failed[n] = error_text(e)
        finally:
            cleanup(device)  # gemm_rate's tensors went with its frame
    return {"dtype": str(dtype).removeprefix("torch."), "sizes": list(args.matmul_sizes), "per_size": per_size,
            "failed": failed, "peak_flops": max(per_size.values()) if per_size else None}


def gau_memory(shape, seq, args, device, budget, inject) -> tuple:
    """GAU-α-base forward + backward at batch 1 (no optimiser), linear_memory then dense on one seeded model: per
    kernel the step time and the memory above the weights (activations kept for the backward, plus the gradients: a
    constant); then the loss and gradient differences. → (rows, check or None)."""
    import torch
    from torch.nn import functional as F

    from kslm.nn import Backbone, BackboneConfig

    rows, found, model = [], {}, None
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    try:
        for kernel in ("linear_memory", "dense"):
            row, t0 = {"kernel": kernel, "seq": seq}, time.perf_counter()
            rows.append(row)
            reason = budget.refuses("memory", 2.0)
            if reason:
                row["skipped"] = reason
                continue
            try:
                with budget.bounded("memory"):
                    inject("gau_memory")
                    x = ids(args, 1, seq, device)
                    if model is None:
                        torch.manual_seed(0)
                        model = Backbone(BackboneConfig(**shape)).to(device).train()
                    model.set_execution(attention_kernel=kernel)
                    times = []
                    for _ in range(3):
                        model.zero_grad(set_to_none=True)
                        cleanup(device)
                        base = torch.cuda.memory_allocated() if device.type == "cuda" else 0
                        sync(device)
                        t1 = time.perf_counter()
                        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                            logits = model.logits(model(x[:, :-1]))
                        loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
                        logits = None
                        loss.backward()
                        sync(device)
                        times.append(time.perf_counter() - t1)
                        row.setdefault("loss", float(loss.detach()))
                    row["step_ms"] = 1e3 * statistics.median(times[1:])
                    row["peak_mem_gib"] = (torch.cuda.max_memory_allocated() - base) / 2**30 if device.type == "cuda" else None
                    grads = [p.grad.detach().float().flatten().cpu() for p in model.parameters() if p.grad is not None]
                    found[kernel] = (row["loss"], torch.cat(grads))
            except BudgetExceeded:
                row["error"] = "stopped: budget"
            except Exception as e:  # noqa: BLE001
                row["error"] = error_text(e)
            finally:
                row["wall_s"] = time.perf_counter() - t0
                cleanup(device)
    finally:
        model = None
        cleanup(device)
    if len(found) < 2:
        return rows, None
    (lin, g_lin), (den, g_den) = found["linear_memory"], found["dense"]
    rel, grad_rel = abs(den - lin) / max(abs(den), 1e-12), float((g_den - g_lin).norm() / g_den.norm().clamp_min(1e-30))
    return rows, {"seq": seq, "loss_linear_memory": lin, "loss_dense": den, "abs_diff": abs(den - lin), "rel_diff": rel,
                  "grad_rel_diff": grad_rel, "loss_rtol": LOSS_RTOL, "grad_rtol": GRAD_RTOL,
                  "agree": rel <= LOSS_RTOL and grad_rel <= GRAD_RTOL}


def flex_probe(shape, args, device, budget, inject) -> dict:
    """One compiled flex_attention forward + backward at the GAU shape (q/k s, values e ≠ s), bf16, causal."""
    import torch

    s, e, T = shape["qk_dim"], shape["expansion"] * shape["d_model"], min(args.seqs)
    out, q = {"qk_dim": s, "v_dim": e, "seq": T}, None
    try:
        with budget.bounded("flex"):
            inject("flex")
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention

            q, k = (torch.randn(4, 1, T, s, device=device, dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
            v = torch.randn(4, 1, T, e, device=device, dtype=torch.bfloat16, requires_grad=True)
            mask = create_block_mask(lambda b, h, i, j: j <= i, None, None, T, T, device=str(device))
            fn = torch.compile(flex_attention)
            compile_s = _time(lambda: fn(q, k, v, block_mask=mask).sum().backward(), device)
            ms = 1e3 * statistics.median(_time(lambda: fn(q, k, v, block_mask=mask).sum().backward(), device) for _ in range(3))
            out["result"] = f"runs: fwd+bwd {ms:.1f} ms (compile {compile_s:.0f} s)"
    except BudgetExceeded:
        out["result"] = out["error"] = "stopped: budget"
    except Exception as e:  # noqa: BLE001
        out["error"] = error_text(e)
        out["result"] = f"fails: {out['error']}"
    finally:
        q = k = v = fn = None  # noqa: F841
        cleanup(device, dynamo=True)
    return out
