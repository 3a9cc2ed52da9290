"""The markdown tables of bench/gpu_base.py's report (imports nothing heavy: `bench/gpu_base.py --table` stays fast)."""


def _num(x, fmt="{:,.0f}"):
    return "–" if x is None else fmt.format(x)


def _pct(x):
    return "–" if x is None else f"{100 * x:.1f} %"


def header(report: dict) -> list:
    cfg, mm, m = report["config"], report.get("matmul") or {}, report["machine"]
    card = m.get("gpu") or m.get("cpu_model")
    failed = "; ".join(f"{n}³ {e}" for n, e in (mm.get("failed") or {}).items())
    peak = report.get("datasheet_peak_flops")
    return [
        f"{card}; {report['started_utc']}; torch {m['torch']}, transformers {m.get('transformers')}; "
        f"{'SMOKE (tiny shapes) ' if cfg['smoke'] else ''}"
        f"{'bf16 autocast (fp32 weights)' if cfg['dtype'] == 'bf16' else cfg['dtype']}, fused AdamW where the device "
        f"has it, batch × T = {cfg['tokens_per_step']:,} tokens a step, models seeded (torch.manual_seed(0))",
        "",
        f"Peaks: datasheet {_num(peak and peak / 1e12, '{:.1f}')} TFLOP/s"
        f"{'' if peak else ' (device not in bench/gpu_facts.py DATASHEET_BF16: no MFU against a datasheet)'}; "
        f"measured matmul {_num(mm.get('peak_flops') and mm['peak_flops'] / 1e12, '{:.3g}')} TFLOP/s "
        f"({mm.get('dtype', '–')}, best of {', '.join(str(s) for s in mm.get('sizes', []))}³ GEMMs"
        f"{'; failed: ' + failed if failed else ''}{'; from ' + mm['from'] if mm.get('from') else ''})",
    ]


def runs_table(runs: list) -> list:
    lines = ["| model | params | mode | T | batch | step ms | tokens/s | TFLOP/s | MFU datasheet | MFU measured | "
             "peak mem GiB | compile s | ÷ Llama tokens/s |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    llama = {(r["mode"], r["seq"]): r for r in runs if r["model"] == "llama" and "tokens_per_s" in r}
    for r in runs:
        if "tokens_per_s" not in r:
            lines.append(f"| {r['model']} | | {r['mode']} | {r['seq']} | | {r.get('error') or r.get('skipped')} | | | | | | | |")
            continue
        ref = llama.get((r["mode"], r["seq"]))
        ratio = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}×" if ref else "–"
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['mode']} | {r['seq']} | {r['batch']} | {r['step_ms']:.1f} | "
            f"{r['tokens_per_s']:,.0f} | {r['flops_per_s'] / 1e12:.3g} | {_pct(r.get('mfu_datasheet'))} | "
            f"{_pct(r.get('mfu_measured'))} | {_num(r.get('peak_mem_gib'), '{:.2f}')} | "
            f"{_num(r.get('compile_s'), '{:.0f}')} | {ratio} |")
    return lines


def memory_table(mem: list, checks: list) -> list:
    lines = ["GAU-α-base memory (softmax_plus, batch 1, forward + backward, eager, no optimiser; memory = peak above the "
             "weights: activations + the constant gradients; one seeded model and batch for both kernels):", "",
             "| kernel | T | step ms | memory GiB | memory ÷ T (MiB per token) | loss |", "|---|---:|---:|---:|---:|---:|"]
    for r in mem:
        if "step_ms" not in r:
            lines.append(f"| {r['kernel']} | {r['seq']} | {r.get('error') or r.get('skipped')} | | | |")
            continue
        per = r["peak_mem_gib"] * 1024 / r["seq"] if r.get("peak_mem_gib") is not None else None
        lines.append(f"| {r['kernel']} | {r['seq']} | {r['step_ms']:.1f} | {_num(r.get('peak_mem_gib'), '{:.2f}')} | "
                     f"{_num(per, '{:.3f}')} | {r['loss']:.5f} |")
    if checks:
        lines += ["", "dense vs linear_memory (same weights and batch): |Δ loss| / loss and ‖Δ grad‖ / ‖grad‖, tolerances "
                  f"{checks[0]['loss_rtol']:g} and {checks[0]['grad_rtol']:g}:", "",
                  "| T | loss linear_memory | loss dense | rel. diff | grad rel. diff | agree |", "|---:|---:|---:|---:|---:|---|"]
        lines += [f"| {c['seq']} | {c['loss_linear_memory']:.5f} | {c['loss_dense']:.5f} | {c['rel_diff']:.2e} | "
                  f"{c['grad_rel_diff']:.2e} | {'yes' if c['agree'] else '**no**'} |" for c in checks]
    return lines


def markdown(report: dict) -> str:
    lines = header(report) + [""] + runs_table(report.get("runs", []))
    if report.get("gau_memory"):
        lines += [""] + memory_table(report["gau_memory"], report.get("gau_loss_check", []))
    flex = report.get("flex")
    if flex:
        lines += ["", f"flex_attention at the GAU shape (q/k {flex.get('qk_dim')}, values {flex.get('v_dim')}, "
                      f"T {flex.get('seq')}): {flex.get('result')}"]
    if report.get("errors"):
        lines += ["", "Errors (recorded; the run went on): " + "; ".join(
            f"{e['phase']} / {e['what']}: {e['error']}" for e in report["errors"])]
    if report.get("skipped"):
        lines += ["", f"Not measured (time budget {report['config']['budget_s']:.0f} s): {'; '.join(report['skipped'])}"]
    if not report.get("complete", True):
        lines += ["", "**Incomplete**: the run ended before its last measurement (killed, or still running)."]
    return "\n".join(lines)


__all__ = ["markdown", "header", "runs_table", "memory_table"]
