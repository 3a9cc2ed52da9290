"""The facts of the machine a GPU check ran on (card, driver, CUDA, cuDNN, torch and the versions of the packages the
check needs) and the datasheet bf16 dense peaks, looked up by the device's exact name. torch is imported by facts()
only, so that bench/*.py --table stays fast."""

import importlib.metadata
import os
import platform
import shutil
import subprocess

# torch.cuda.get_device_name() → datasheet bf16 dense (no sparsity) FLOP/s. Exact names only: a card that is not
# listed (an H200 NVL, a new or renamed product) gets no datasheet MFU, never a neighbour's peak; the substring
# "H100" is in the SXM, PCIe and NVL names alike, whose peaks differ by 30 %.
DATASHEET_BF16 = {
    "NVIDIA H100 80GB HBM3": 989.4e12,  # H100 SXM5
    "NVIDIA H100 PCIe": 756e12,
    "NVIDIA H100 NVL": 835e12,
    "NVIDIA H200": 989.4e12,  # H200 SXM
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100 80GB PCIe": 312e12,
    "NVIDIA A100-PCIE-40GB": 312e12,
}

# what the benchmarks import and what `kslm fit` needs (the GPU machines lack some: bench/README.md, "The GPU check")
PACKAGES = ("torch", "triton", "numpy", "lightning", "pytorch-lightning", "torchmetrics", "transformers", "tokenizers",
            "tensorboard", "pyyaml", "jsonargparse", "docstring-parser", "typeshed-client", "datasets", "pyarrow",
            "dill", "multiprocess", "fsspec", "huggingface-hub")
FIT_MODULES = ("lightning", "torchmetrics", "tokenizers", "tensorboard", "yaml", "jsonargparse", "docstring_parser",
               "typeshed_client", "datasets", "dill", "multiprocess")


def datasheet_peak(device_name):
    """The datasheet bf16 dense FLOP/s of a device by its exact name, or None (unknown: no MFU against a datasheet)."""
    return DATASHEET_BF16.get((device_name or "").strip())


def versions(names=PACKAGES) -> dict:
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def missing_modules(names=FIT_MODULES) -> list:
    import importlib.util

    return [n for n in names if importlib.util.find_spec(n) is None]


def nvidia_smi() -> dict:
    """The card as nvidia-smi reports it (driver, memory, clocks, power limit, temperature), or why not."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"error": "nvidia-smi not found"}
    fields = ("name", "driver_version", "memory.total", "clocks.sm", "clocks.max.sm", "clocks.mem", "power.limit",
              "power.draw", "temperature.gpu", "pstate", "compute_mode", "mig.mode.current")
    try:
        proc = subprocess.run([exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": f"{type(e).__name__}: {e}"}
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip()[:300]}
    values = [v.strip() for v in proc.stdout.strip().splitlines()[0].split(",")] if proc.stdout.strip() else []
    return dict(zip(fields, values, strict=False))


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def facts(device_type: str = "cuda") -> dict:
    """Everything a result needs to be read later: host, Python, torch and its CUDA / cuDNN, the card, the driver,
    the package versions, and the datasheet peak that applies (None for a card not in DATASHEET_BF16)."""
    import torch

    info = {"hostname": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
            "cpu_model": cpu_model(), "logical_cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
            "packages": versions()}
    info["transformers"] = info["packages"].get("transformers")
    if device_type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_capability=f"{props.major}.{props.minor}",
                    gpu_sms=props.multi_processor_count, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    gpu_count=torch.cuda.device_count(), nvidia_smi=nvidia_smi())
        info["driver"] = info["nvidia_smi"].get("driver_version")
    info["datasheet_bf16_flops"] = datasheet_peak(info.get("gpu"))
    return info


def main(argv=None):
    """`python bench/gpu_facts.py cuda|cpu FILE`: the facts as JSON into FILE (bench/gpu_check.py runs this in a process
    of its own, bounded in time, so that a driver that hangs cannot hang the check, and the check itself never holds
    a CUDA context)."""
    import sys

    from gpu_budget import Injector, error_text

    from kslm.io import write_json

    device, path = (argv if argv is not None else sys.argv[1:])[:2]
    try:
        Injector()("machine")
        write_json(path, facts(device))
    except Exception as e:  # noqa: BLE001 (one line for the check's report)
        print(error_text(e), file=sys.stderr)
        raise SystemExit(1) from None


__all__ = ["DATASHEET_BF16", "PACKAGES", "FIT_MODULES", "datasheet_peak", "versions", "missing_modules", "nvidia_smi",
           "facts"]


if __name__ == "__main__":
    main()
