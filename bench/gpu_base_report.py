"""The markdown tables of bench/gpu_base.py's report (imports nothing heavy: `bench/gpu.py --table` stays fast)."""


def _num(x, fmt="{:,.0f}"):
    return "–" if x is None else fmt.format(x)


def _pct(x):
    return "–" if x is None else f"{100 * x:.1f} %"


def markdown(report: dict) -> str:
    cfg, mm = report["config"], report.get("matmul") or {}
    card = report["machine"].get("gpu") or report["machine"].get("cpu_model")
    lines = [
        f"{card}; {report['started_utc']}; torch {report['machine']['torch']}, "
        f"transformers {report['machine'].get('transformers')}; {'SMOKE (tiny shapes) ' if cfg['smoke'] else ''}"
        f"{'bf16 autocast (fp32 weights)' if cfg['dtype'] == 'bf16' else cfg['dtype']}, fused AdamW where the device "
        f"has it, batch × T = {cfg['tokens_per_step']:,} tokens a step",
        "",
        f"Peaks: datasheet {_num(report.get('datasheet_peak_flops') and report['datasheet_peak_flops'] / 1e12, '{:.0f}')} "
        f"TFLOP/s; measured matmul {_num(mm.get('peak_flops') and mm['peak_flops'] / 1e12, '{:.3g}')} TFLOP/s "
        f"({mm.get('dtype', '–')}, best of {', '.join(str(s) for s in mm.get('sizes', []))}³ GEMMs)",
        "",
        "| model | params | mode | T | batch | step ms | tokens/s | TFLOP/s | MFU datasheet | MFU measured | "
        "peak mem GiB | compile s | ÷ Llama tokens/s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    runs = report.get("runs", [])
    llama = {(r["mode"], r["seq"]): r for r in runs if r["model"] == "llama" and "error" not in r}
    for r in runs:
        if "error" in r:
            lines.append(f"| {r['model']} | | {r['mode']} | {r['seq']} | | {r['error']} | | | | | | | |")
            continue
        ref = llama.get((r["mode"], r["seq"]))
        ratio = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}×" if ref else "–"
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['mode']} | {r['seq']} | {r['batch']} | {r['step_ms']:.1f} | "
            f"{r['tokens_per_s']:,.0f} | {r['flops_per_s'] / 1e12:.3g} | {_pct(r.get('mfu_datasheet'))} | "
            f"{_pct(r.get('mfu_measured'))} | {_num(r.get('peak_mem_gib'), '{:.2f}')} | "
            f"{_num(r.get('compile_s'), '{:.0f}')} | {ratio} |")
    mem = report.get("gau_memory", [])
    if mem:
        lines += ["", "GAU-α-base memory (softmax_plus, batch 1, forward + backward, eager, no optimiser; memory = peak "
                  "above the weights: activations + the constant gradients):", "",
                  "| kernel | T | step ms | memory GiB | memory ÷ T (MiB per token) |", "|---|---:|---:|---:|---:|"]
        for r in mem:
            if "error" in r:
                lines.append(f"| {r['kernel']} | {r['seq']} | {r['error']} | | |")
            else:
                per = r["peak_mem_gib"] * 1024 / r["seq"] if r.get("peak_mem_gib") is not None else None
                lines.append(f"| {r['kernel']} | {r['seq']} | {r['step_ms']:.1f} | {_num(r.get('peak_mem_gib'), '{:.2f}')} | "
                             f"{_num(per, '{:.3f}')} |")
    flex = report.get("flex")
    if flex:
        lines += ["", f"flex_attention at the GAU shape (q/k {flex.get('qk_dim')}, values {flex.get('v_dim')}, "
                      f"T {flex.get('seq')}): {flex.get('result')}"]
    if report.get("skipped"):
        lines += ["", f"Skipped (time budget {cfg['budget_s']:.0f} s): {', '.join(report['skipped'])}"]
    return "\n".join(lines)


__all__ = ["markdown"]
