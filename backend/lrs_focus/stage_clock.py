"""Stage timings that mean what they say on a GPU.

CUDA kernels run asynchronously: `perf_counter` around a vision-tower call measures the launches,
and the kernels' time is billed to whichever later stage first copies to the host. On a CUDA
device the clock waits for the device (`torch.cuda.synchronize`) at every stage edge it reads;
on the CPU it is plain `perf_counter` and synchronises nothing.
"""

from __future__ import annotations

import time
from typing import Any, Callable


def _cuda_synchronize(device: Any) -> None:
    import torch

    torch.cuda.synchronize(device)


def is_cuda(device: Any) -> bool:
    return getattr(device, "type", str(device).split(":")[0]) == "cuda"


#: the device wait at a stage edge (a seam: tests replace it, and `is_cuda`, to see where it is called)
synchronize: Callable[[Any], None] = _cuda_synchronize


class StageClock:
    """`now()` = perf_counter after the device's queued work is done (CUDA), or just perf_counter."""

    def __init__(self, device: Any):
        self.device = device
        self.cuda = is_cuda(device)

    def now(self) -> float:
        if self.cuda:
            synchronize(self.device)
        return time.perf_counter()


def clock_of(model: Any) -> StageClock:
    """The clock for a model's device (the LLaVA model's `.device`, or a Qwen-VL wrapper's)."""
    device = getattr(model, "device", None)
    if device is None and hasattr(model, "hf"):
        device = model.hf.device
    return StageClock(device if device is not None else "cpu")
