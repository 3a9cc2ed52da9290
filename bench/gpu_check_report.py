"""The markdown of bench/gpu_check.py's report: the machine, each phase's status, the throughput / MFU tables, the GAU
memory sweep with its loss check, the `kslm fit` runs with the resume check, and the issue's targets, each met / not
met / not measured. Imports nothing heavy."""

from gpu_base_report import header, memory_table, runs_table

MFU_TARGET, LLAMA_TARGET, GAU_TARGET = 0.40, 1.2, 0.70  # the issue's: Transformer-base MFU at T 1024, ÷ Llama, GAU ÷ T


def _phase(report, name):
    return (report.get("phases", {}).get(name) or {}).get("report") or {}


def _best(runs, model, seq):
    """The row of `model` at T `seq`, compiled if measured, else eager."""
    rows = {r["mode"]: r for r in runs if r["model"] == model and r["seq"] == seq and "tokens_per_s" in r}
    return rows.get("compiled") or rows.get("eager")


def machine_lines(m) -> list:
    if not m:
        return ["Machine: not recorded (see the machine phase)."]
    smi, pk = m.get("nvidia_smi") or {}, m.get("packages") or {}
    missing = [k for k, v in pk.items() if v is None]
    peak = m.get("datasheet_bf16_flops")
    return [f"Machine: **{m.get('gpu') or 'no GPU'}** ({m.get('gpu_memory_gib', '–')} GiB, {m.get('gpu_sms', '–')} SMs, "
            f"capability {m.get('gpu_capability', '–')}), driver {m.get('driver') or '–'}, torch {m['torch']} "
            f"(CUDA {m.get('torch_cuda') or '–'}, cuDNN {m.get('cudnn') or '–'}), Python {m['python']}, "
            f"{m['logical_cpus']} CPUs ({m['cpu_model']}); clocks SM {smi.get('clocks.sm', '–')} of "
            f"{smi.get('clocks.max.sm', '–')}, power limit {smi.get('power.limit', '–')}; datasheet bf16 dense peak "
            f"{f'{peak / 1e12:.1f} TFLOP/s' if peak else 'unknown (no MFU against a datasheet)'}.",
            "", "Packages: " + ", ".join(f"{k} {v}" for k, v in pk.items() if v) +
            (f"; missing: {', '.join(missing)}" if missing else "")]


def fit_lines(fit: dict) -> list:
    if not fit:
        return []
    cfg = fit.get("config", {})
    how = "SMOKE: CPU, tiny, fp32, eager" if cfg.get("smoke") else "bf16-mixed, compiled blocks"
    lines = [f"`kslm fit --config {cfg.get('config')}` ({how}; N = {cfg.get('steps_n')}, "
             f"{cfg.get('tokens_per_step', 0):,} tokens a step):", "",
             "| run | steps | loss first → last (logged means) | val loss | tokens/s | TFLOP/s | MFU datasheet | "
             "Lightning's MFU | first window extra s | wall s | last.ckpt (step, MB, AdamW fused) |",
             "|---|---|---|---|---:|---:|---:|---|---:|---:|---|"]
    for name, r in fit.get("runs", {}).items():
        ck = r.get("checkpoint") or {}
        val = ", ".join(f"{v['loss']:.3f} @ {v['step']}" for v in r.get("val", []))
        steps = f"{r.get('start_step', 0)} → {r['lines'][-1]['step']}" if r.get("lines") else "–"
        loss = f"{r['loss_first']:.3f} → {r['loss_last']:.3f}" if "loss_first" in r else r.get("error", "–")
        mfu = f"{100 * r['mfu_datasheet']:.1f} %" if r.get("mfu_datasheet") else "–"
        extra = f"{max(0.0, r['first_window_extra_s']):.0f}" if r.get("first_window_extra_s") is not None else "–"
        ckpt = f"{ck.get('global_step')}, {ck.get('size_mb')}, {ck.get('adamw_fused')}" if ck else "–"
        lines.append(f"| {name}{' (eager fallback)' if r.get('compile_fallback') else ''} | {steps} | {loss} | {val or '–'} | "
                     f"{r.get('tokens_per_s', 0):,.0f} | {r.get('flops_per_s', 0) / 1e12:.3g} | {mfu} | "
                     f"{r.get('lightning_mfu', '–')} | {extra} | {r.get('wall_s', 0):.0f} | {ckpt} |")
    rc = fit.get("resume_check")
    if rc:
        loss = "–" if rc.get("max_loss_diff") is None else f"{rc['max_loss_diff']:.3g}"
        lines += ["", f"Resume check (resume vs full at step {rc['global_steps'][0]}): **{rc['verdict']}**; weights bitwise "
                      f"{rc['weights_bitwise_equal']}, AdamW state bitwise {rc['optimizer_bitwise_equal']}, max |ΔW| "
                      f"{rc['max_abs_diff']:.3g}, ‖ΔW‖ / ‖W(2N) − W(N)‖ {rc['rel_diff']:.3g} (tolerance {rc['rel_tol']}), "
                      f"max |Δ logged loss| after N {loss} (tolerance {rc['loss_atol']})."]
    return lines


def targets(report) -> list:
    b1, fit = _phase(report, "base_1024"), _phase(report, "fit")
    runs, seq = b1.get("runs", []), (b1.get("config") or {}).get("seqs", [1024])[0]
    t, g, ll = (_best(runs, m, seq) for m in ("kslm-transformer", "kslm-gau", "llama"))
    rows = []

    def add(what, value, ok):
        rows.append(f"| {what} | {value} | {'not measured' if ok is None else 'met' if ok else '**not met**'} |")

    mfu = t and t.get("mfu_datasheet")
    add(f"kslm Transformer-base ≥ {MFU_TARGET:.0%} bf16 MFU (datasheet) at T {seq}",
        f"{100 * mfu:.1f} % ({t['mode']})" if mfu else "–", None if mfu is None else mfu >= MFU_TARGET)
    same = [r for r in runs if r["model"] == "llama" and t and r["mode"] == t["mode"] and r["seq"] == seq and "tokens_per_s" in r]
    ratio = t["tokens_per_s"] / same[0]["tokens_per_s"] if t and same else None
    add(f"≥ {LLAMA_TARGET}× Llama's tokens/s at equal parameters (same mode, T {seq})",
        f"{ratio:.2f}× ({t['mode']})" if ratio else "–", None if ratio is None else ratio >= LLAMA_TARGET)
    gt = g and t and g["mode"] == t["mode"] and g["tokens_per_s"] / t["tokens_per_s"]
    add(f"GAU-α-base ≥ {GAU_TARGET:.0%} of the Transformer's tokens/s (same mode, T {seq})",
        f"{100 * gt:.0f} % ({g['mode']})" if gt else "–", None if not gt else gt >= GAU_TARGET)
    mem = [r for r in b1.get("gau_memory", []) if r["kernel"] == "linear_memory" and r.get("peak_mem_gib") is not None]
    if len(mem) >= 3:  # memory = a + b·T is linear: each doubling of T adds twice the previous increment (4× if T²)
        inc = [(mem[i + 1]["peak_mem_gib"] - mem[i]["peak_mem_gib"]) for i in range(len(mem) - 1)]
        growth = max(inc[i + 1] / inc[i] for i in range(len(inc) - 1)) if min(inc) > 0 else None
        add("GAU memory linear in T (linear_memory: increment ratio per doubling of T, 2 if linear, 4 if quadratic)",
            f"{growth:.2f}" if growth else "–", None if growth is None else growth <= 2.5)
    else:
        add("GAU memory linear in T (linear_memory)", "–", None)
    checks = b1.get("gau_loss_check", [])
    add("dense and linear_memory agree (loss, gradients)", ", ".join(f"T {c['seq']}: {c['rel_diff']:.1e} / {c['grad_rel_diff']:.1e}"
                                                                     for c in checks) or "–",
        None if not checks else all(c["agree"] for c in checks))
    pairs = {}
    for r in runs:
        if "losses" in r:
            pairs.setdefault(r["model"], {})[r["mode"]] = r["losses"][0]
    diffs = {m: abs(v["compiled"] - v["eager"]) / abs(v["eager"]) for m, v in pairs.items() if len(v) == 2}
    add("compiled = eager first-step loss (seeded models; rel. diff ≤ 1e-2)",
        ", ".join(f"{m} {d:.1e}" for m, d in diffs.items()) or "–", None if not diffs else max(diffs.values()) <= 1e-2)
    full = (fit.get("runs") or {}).get("full") or {}
    add("`kslm fit`: the loss falls", f"{full['loss_first']:.3f} → {full['loss_last']:.3f}" if "loss_first" in full else "–",
        full.get("loss_falls"))
    add("`kslm fit`: last.ckpt written", f"step {full['checkpoint']['global_step']}" if full.get("checkpoint") else "–",
        bool(full.get("checkpoint")) if full else None)
    rc = fit.get("resume_check")
    add("`kslm fit`: the resume continues exactly (bitwise, or within the stated tolerance)",
        f"{rc['verdict']} (rel. {rc['rel_diff']:.2g})" if rc else "–", None if not rc else rc["verdict"] != "differs")
    return ["| target | measured | verdict |", "|---|---|---|", *rows]


def problems(report) -> list:
    out = []
    for name, ph in report.get("phases", {}).items():
        if ph.get("status") != "ok":
            out.append(f"- phase {name}: {ph.get('status')}")
        r = ph.get("report") or {}
        out += [f"- {name} / {e['phase']} / {e['what']}: {e['error']}" for e in r.get("errors", [])]
        out += [f"- {name}: {s}" for s in r.get("skipped", [])]
    return out


def markdown(report: dict) -> str:
    m = report.get("machine") or _phase(report, "base_1024").get("machine") or _phase(report, "base_2048").get("machine") or {}
    lines = [f"GPU check{' (SMOKE: CPU dry run)' if report.get('smoke') else ''}: {m.get('gpu') or m.get('cpu_model', '?')}, "
             f"{report['started_utc']}, {report.get('wall_s', 0):.0f} s of a {report['budget_s']:.0f} s budget"
             f"{'' if report.get('complete') else ' (**incomplete**: still running, or killed)'}; `{report['command']}`",
             "", *machine_lines(m), "", "| phase | status | seconds |", "|---|---|---:|"]
    lines += [f"| {k} | {v.get('status')} | {v.get('wall_s', 0):.0f} |" for k, v in report.get("phases", {}).items()]
    for name in ("base_1024", "base_2048"):
        b = _phase(report, name)
        if b:
            lines += ["", f"### {name}", "", *header(b)[2:], "", *runs_table(b.get("runs", []))]
            if b.get("gau_memory"):
                lines += ["", *memory_table(b["gau_memory"], b.get("gau_loss_check", []))]
            if b.get("flex"):
                lines += ["", f"flex_attention at the GAU shape: {b['flex'].get('result')}"]
        if name == "base_1024" and _phase(report, "fit"):
            lines += ["", "### kslm fit", "", *fit_lines(_phase(report, "fit"))]
    lines += ["", "### Targets", "", *targets(report)]
    trouble = problems(report)
    if trouble:
        lines += ["", "### Errors and skipped measurements (each recorded; the run went on)", "", *trouble]
    return "\n".join(lines)


__all__ = ["markdown", "targets"]
