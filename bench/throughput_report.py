"""Turning the throughput benchmark's raw runs into its report: pooling the quiet steps over rounds, the targets
(kslm vs Llama ratios) and the markdown table printed and pasted into bench/README.md."""

import statistics


def quiet_steps(runs: list, threshold: float) -> list:
    """Step times, pooled over a model's runs, of the steps during which other processes took ≤ threshold of the
    machine's CPUs."""
    return [t for r in runs if "error" not in r
            for t, b in zip(r["step_times_s"], r["background_cpu_share"], strict=False) if b <= threshold]


def merge_rounds(rounds: list, peak: float, args) -> dict:
    """One model's runs (one per round) → one row. The step time is the median of the quiet steps of all rounds
    (see --quiet-threshold) when there are at least --min-quiet-steps of them, else of all steps (then the row
    is marked contended)."""
    ok = [r for r in rounds if "error" not in r]
    if not ok:
        return {"model": rounds[0]["model"], "error": rounds[0]["error"]}
    per_round = ("step_times_s", "step_cpu_s", "background_cpu_share", "losses", "peak_mem_mib",
                 "rss_before_train_mib", "train_rss_growth_mib", "subprocess_wall_s", "waited_for_quiet_s",
                 "gemm_replay_s", "gemm_replay_background_cpu_share")
    row = {k: v for k, v in ok[0].items() if k not in per_round}
    times = [t for r in ok for t in r["step_times_s"]]
    quiet = quiet_steps(ok, args.quiet_threshold)
    contended = len(quiet) < max(1, args.min_quiet_steps)  # no quiet step at all: report from all steps
    used = times if contended else quiet
    step_s = statistics.median(used)
    tokens = args.batch * args.seq
    row.update(
        rounds=len(ok), timed_steps=len(times), quiet_steps=len(quiet), contended=contended,
        step_s_median=step_s, step_s_min=min(used), step_s_median_all_steps=statistics.median(times),
        tokens_per_s=tokens / step_s, achieved_flops=row["flops_per_step"] / step_s,
        mfu_vs_measured_peak=row["flops_per_step"] / step_s / peak,
        step_times_s=times, background_cpu_share=[b for r in ok for b in r["background_cpu_share"]],
        # process CPU seconds per step, all threads (OpenMP spin-waiting included)
        step_cpu_s=[c for r in ok for c in r["step_cpu_s"]],
        losses_per_round=[r["losses"] for r in ok], peak_mem_mib=max(r["peak_mem_mib"] for r in ok),
        subprocess_wall_s=[r["subprocess_wall_s"] for r in ok],
        waited_for_quiet_s=[r["waited_for_quiet_s"] for r in ok],
    )
    if all("gemm_replay_s" in r for r in ok):  # each step against the rate of its own GEMMs replayed right after it
        pairs = [(t, g) for r in ok for t, b, g, gb in zip(r["step_times_s"], r["background_cpu_share"], r["gemm_replay_s"],
                                                           r["gemm_replay_background_cpu_share"], strict=False)
                 if contended or (b <= args.quiet_threshold and gb <= args.quiet_threshold)]
        if pairs:
            gemm = row["gemm_flops_per_step"]
            row.update(gemm_replay_s=[g for r in ok for g in r["gemm_replay_s"]], paired_pairs=len(pairs),
                       paired_matmul_flops=statistics.median(gemm / g for _, g in pairs),
                       mfu_vs_paired_matmul=statistics.median(row["flops_per_step"] / t / (gemm / g) for t, g in pairs),
                       matmul_share_of_step=statistics.median(g / t for t, g in pairs))
    if "train_rss_growth_mib" in ok[0]:
        row["rss_before_train_mib"] = max(r["rss_before_train_mib"] for r in ok)
        row["train_rss_growth_mib"] = max(r["train_rss_growth_mib"] for r in ok)
    return row


def targets(report: dict) -> list:
    models = {r["model"]: r for r in report["models"] if "error" not in r}
    ref, out = models.get("kslm-transformer"), []
    if ref is None:
        return out
    for name in ("llama-same-ffn", "llama-equal-params"):
        if name in models:
            other = models[name]
            ratio = ref["tokens_per_s"] / other["tokens_per_s"]
            out.append({"target": f"kslm Transformer ≥ 1.2× the tokens/s of {name}", "measured": f"{ratio:.2f}×",
                        "value": ratio, "met": ratio >= 1.2, "contended": ref["contended"] or other["contended"]})
    cfg, mfu = report["config"], ref["mfu_vs_measured_peak"]
    out.append({"target": f"kslm Transformer ≥ 75 % of the measured matmul peak (d={cfg['d']}, T={cfg['seq']})",
                "measured": f"{100 * mfu:.1f} %", "value": mfu, "met": mfu >= 0.75, "contended": ref["contended"]})
    if "mfu_vs_paired_matmul" in ref:
        paired = ref["mfu_vs_paired_matmul"]
        out.append({"target": f"kslm Transformer ≥ 75 % of the rate its own GEMMs reach, replayed after each step "
                              f"(d={cfg['d']}, T={cfg['seq']})", "measured": f"{100 * paired:.1f} %", "value": paired,
                    "met": paired >= 0.75, "contended": ref["contended"]})
    return out


def markdown(report: dict) -> str:
    mm, cfg = report["matmul"], report["config"]
    peak = mm["peak_flops"]
    lines = [
        (f"Measured matmul peak ({mm['dtype']}, {report['machine']['torch_threads']} threads): "
         f"**{peak / 1e9:.1f} GFLOP/s** (best repeat, max over shapes; before / after the models: "
         f"{mm['peak_flops_before'] / 1e9:.1f} / {mm['peak_flops_after'] / 1e9:.1f})"),
        "",
        "| GEMM | M×K×N | best GFLOP/s |",
        "|---|---|---:|",
    ]
    for r in mm["shapes"]:
        lines.append(f"| {r['label']} | {r['M']}×{r['K']}×{r['N']} | {r['best_flops'] / 1e9:.1f} |")
    ref = next((r for r in report["models"] if r["model"] == "kslm-transformer" and "error" not in r), None)
    mem_hdr = "peak RSS MiB (+training)" if cfg["device"] == "cpu" else "peak alloc MiB"
    lines += [
        "",
        (f"d={cfg['d']}, layers={cfg['layers']} (GAU: {2 * cfg['layers']}), heads={cfg['heads']}, "
         f"d_ff={cfg['d_ff']}, T={cfg['seq']}, batch={cfg['batch']}, vocab={cfg['vocab']}; "
         f"each model run: a fresh process, {cfg['warmup']} warmup step(s), then timed steps until {cfg['steps']} "
         f"were quiet (other processes ≤ {100 * cfg['quiet_threshold']:.0f} % of the CPUs); step time = median of "
         f"the quiet steps pooled over ≥ {cfg['rounds']} runs"),
        "",
        ("| model | FFN | params (non-emb.) | step s median (min) | tokens/s | GFLOP/step | GFLOP/s | "
         f"MFU vs measured peak | MFU vs its GEMMs replayed (their GFLOP/s) | kslm-T ÷ this | {mem_hdr} | "
         "quiet / timed steps |"),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["models"]:
        if "error" in r:
            lines.append(f"| {r['model']} | failed: {r['error']} | | | | | | | | | | |")
            continue
        ratio = f"{ref['tokens_per_s'] / r['tokens_per_s']:.2f}×" if ref else "–"
        mem = f"{r['peak_mem_mib']:.0f}"
        paired = (f"{100 * r['mfu_vs_paired_matmul']:.1f} % ({r['paired_matmul_flops'] / 1e9:.0f})"
                  if "mfu_vs_paired_matmul" in r else "–")
        if "train_rss_growth_mib" in r:
            mem += f" (+{r['train_rss_growth_mib']:.0f})"
        lines.append(
            f"| {r['model']} | {r['ffn']} | {r['params'] / 1e6:.2f}M ({r['params_non_embedding'] / 1e6:.2f}M) | "
            f"{r['step_s_median']:.3g} ({r['step_s_min']:.3g}) | {r['tokens_per_s']:.0f} | "
            f"{r['flops_per_step'] / 1e9:.1f} | {r['achieved_flops'] / 1e9:.1f} | "
            f"{100 * r['mfu_vs_measured_peak']:.1f} % | {paired} | {ratio} | {mem} | {r['quiet_steps']} / {r['timed_steps']}"
            f"{' (contended: all steps used)' if r['contended'] else ''} |")
    if report.get("targets"):
        lines += ["", "Targets:"]
        for t in report["targets"]:
            verdict = "inconclusive (too few quiet steps)" if t["contended"] else "met" if t["met"] else "NOT met"
            lines.append(f"- {t['target']}: {t['measured']} → **{verdict}**")
    return "\n".join(lines)


__all__ = ["quiet_steps", "merge_rounds", "targets", "markdown"]
