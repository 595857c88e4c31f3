"""GPU memory for the benchmark tables: what torch allocated, and what the card had in use.

``torch.cuda.max_memory_allocated`` sees one process's tensors only; a Ray actor is another process and the CUDA
context itself is not a tensor, so the benches also sample ``nvidia-smi`` (memory in use on the card, all
processes) from a thread while they run. Both are None on a machine without a GPU.
"""

from __future__ import annotations

import shutil
import subprocess
import threading


def torch_peak_mb() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def _smi_used_mb() -> float | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=5).stdout
        return float(sum(float(x) for x in out.split()))
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


class GpuMemoryPeak:
    """``with GpuMemoryPeak() as m: ...; m.peak_mb`` = highest nvidia-smi reading (MiB) while the block ran."""

    def __init__(self, every_s: float = 0.2):
        self.every_s, self.peak_mb, self.idle_mb = every_s, None, None
        self._stop = threading.Event()
        self._thread = None

    def _sample(self):
        while not self._stop.is_set():
            used = _smi_used_mb()
            if used is not None:
                self.peak_mb = used if self.peak_mb is None else max(self.peak_mb, used)
            self._stop.wait(self.every_s)

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self.idle_mb = _smi_used_mb()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return False
