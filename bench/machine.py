"""Machine facts and measurement helpers shared by the benchmarks: resident memory, machine-wide CPU load (to tell
quiet timing windows from contended ones on a shared machine), device sync, a machine description for the result
JSON, and `--table`: the tables of stored results, printed again. Result files are written with kslm.io.write_json
(atomic). Nothing here imports torch at import time, so `bench/*.py --table` starts in well under a second."""

import os
import platform
import resource
import time
from pathlib import Path

from kslm.io import print_tables, table_flag  # noqa: F401  (the scripts' --table helpers, re-exported)

RESULTS = Path(__file__).resolve().parent / "results"


def vm_rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_busy_s() -> float:
    """Machine-wide busy CPU seconds so far (all CPUs, /proc/stat: everything but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def wait_for_quiet(max_wait_s: float, threshold: float = 0.15, window_s: float = 1.0) -> float:
    """Wait (at most max_wait_s) for a window of window_s in which the machine's CPUs are busy < threshold of the
    time (everything counted: nothing of ours runs meanwhile). → seconds waited."""
    t0 = time.perf_counter()
    while True:
        busy0 = cpu_busy_s()
        time.sleep(window_s)
        share = (cpu_busy_s() - busy0) / (window_s * os.cpu_count())
        waited = time.perf_counter() - t0
        if share < threshold or waited >= max_wait_s:
            return waited


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def machine_info(args) -> dict:
    import torch

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "hostname": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "cpu_model": cpu, "logical_cpus": os.cpu_count(),
        "torch_threads": args.threads or torch.get_num_threads(),
        "mkl": torch.backends.mkl.is_available(), "mkldnn": torch.backends.mkldnn.is_available(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    if args.device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


__all__ = ["vm_rss_kib", "cpu_busy_s", "own_cpu_s", "wait_for_quiet", "sync", "machine_info", "RESULTS", "table_flag",
           "print_tables"]
