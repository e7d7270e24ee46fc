"""The process the benchmark runs in: its resident memory, the machine's description, progress bars."""

from __future__ import annotations

import os
import platform
import resource
import sys
from typing import Any, Dict

import numpy as np


def rss_mb() -> float:
    """Resident memory of this process now (MiB; Linux /proc, else the peak)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident memory of this process (MiB, ``getrusage`` maxrss)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(peak) / (1024.0 if sys.platform != "darwin" else 1024.0**2)


def machine_info(threads: int) -> Dict[str, Any]:
    """CPU count, torch threads (and ``threads``, the number asked for), library versions, platform and load."""
    import torch

    info = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_threads_asked": threads,
        "torch_version": torch.__version__,
        "cuda_available": bool(torch.cuda.is_available()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
    }
    try:
        import open3d

        info["open3d"] = open3d.__version__
    except ImportError:
        pass
    try:
        info["load_average_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


class Progress:
    """tqdm bars when enabled, else nothing (log lines carry the rates)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def bar(self, **kw):
        """A tqdm bar (``kw`` passed on), disabled unless progress bars are on."""
        from tqdm import tqdm

        return tqdm(disable=not self.enabled, dynamic_ncols=True, leave=False, **kw)
