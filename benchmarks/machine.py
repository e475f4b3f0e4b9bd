"""What the numbers were measured on, and peak memory readers that can be reset between measurements."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

import torch

from resflex.data.workers import usable_cores


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU model and cores or GPU name, library versions, load average at the start."""
    info: dict[str, Any] = {
        "device": str(device),
        "cpu_model": cpu_model(),
        "cpu_cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "timm": _version("timm"),
        "pytorch_lightning": _version("pytorch-lightning") or _version("lightning"),
        "torchmetrics": _version("torchmetrics"),
        "pillow": _version("pillow"),
    }
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        info["load_average"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu_name=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    return info


class PeakMemory:
    """Peak memory of this process since :meth:`reset`, in MiB.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only, not the caching
    allocator's reserve). CPU: the resident set's high-water mark (``VmHWM``),
    reset by writing ``5`` to ``/proc/self/clear_refs``; :attr:`baseline_mb` is
    the resident set at the reset, so ``peak - baseline`` is what the measured
    steps added. Measure sizes in increasing order on CPU: freed heap is not
    always returned to the OS, so a smaller size measured after a larger one
    would read the larger one's peak.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.baseline_mb = 0.0
        self.resettable = True

    @property
    def kind(self) -> str:
        return "cuda_max_memory_allocated" if self.device.type == "cuda" else "cpu_peak_rss"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_mb = torch.cuda.memory_allocated(self.device) / 2**20
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.resettable = False
        self.baseline_mb = _status_kb("VmRSS") / 1024

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return _status_kb("VmHWM") / 1024


def _status_kb(field: str) -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    import resource

    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
