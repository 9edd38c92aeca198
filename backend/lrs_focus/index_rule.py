"""ATen's float32 rule for a bilinear source index, and whether this machine's torch rounds it once
(FMA) or twice.

ATen's CPU kernels built for AVX2/AVX512 contract scale * (dst + 0.5) - 0.5 into a fused
multiply-add; a build without FMA rounds twice. The exact pixel path must follow whichever the
installed torch does, so torch itself is asked (one probe). Importing torch costs ~220 MB and ~3 s,
which a process that only reads pixels (the `bench pyramid` child, a CLI without a model) need not
pay: there the answer comes from a cache file written by a probe in a child process, keyed by the
torch version, the CPU and ATEN_CPU_CAPABILITY (what decides the kernel torch dispatches to). A
process that has torch loaded always asks it directly.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
import sys

import numpy as np

PROBE = (20000, 13664)  # one index in 20,000 -> 13,664 tells the two rules apart


def probe_torch() -> bool:
    """Ask torch: does F.interpolate match the fused index rule on a 0/1 ramp?"""
    import torch
    import torch.nn.functional as F

    n_in, n_out = PROBE
    values = (np.arange(n_in) % 2).astype(np.float32)  # output = lambda or 1 - lambda: an index error shows
    probe = torch.from_numpy(values).view(1, 1, n_in, 1)
    ref = F.interpolate(probe, size=(n_out, 1), mode="bilinear")[0, 0, :, 0].numpy()
    i0, i1, lam = source_index(n_in, n_out, 0, n_out, fused=True)
    fused = values[i0] * (np.float32(1.0) - lam) + values[i1] * lam
    return bool(np.abs(fused - ref).max() < 1e-5)


def source_index(in_size: int, out_size: int, start: int, stop: int,
                 fused: bool | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i0, i1, lambda1) of output pixels [start, stop) along one axis, ATen's float32 rule.

    Same size: a plain copy (ATen's special case). Otherwise src = scale * (dst + 0.5) - 0.5 in
    float32 (fused or not, as this torch build does it), clamped at 0; i0 = floor(src) (at most
    in_size - 1), i1 = i0 + 1 unless at the edge.
    """
    dst = np.arange(start, stop, dtype=np.int64)
    if in_size == out_size:
        return dst, dst, np.zeros(dst.size, dtype=np.float32)
    scale = np.float32(in_size) / np.float32(out_size)
    half = dst.astype(np.float32) + np.float32(0.5)
    if torch_fuses_index() if fused is None else fused:
        # exact product and difference in float64 (24-bit operands), one rounding to float32
        src = (np.float64(scale) * half.astype(np.float64) - 0.5).astype(np.float32)
    else:
        src = scale * half - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    lam = np.clip(src - i0.astype(np.float32), np.float32(0.0), np.float32(1.0)).astype(np.float32)
    i1 = i0 + (i0 < in_size - 1)
    return i0, i1, lam


def _key() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = "none"
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    parts = [torch_version, sys.executable, platform.machine(), flags, os.environ.get("ATEN_CPU_CAPABILITY", "")]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def cache_path() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "lrs-focus", "index_rule.json")


@functools.lru_cache(maxsize=1)
def torch_fuses_index() -> bool:
    """Whether this torch build computes the bilinear source index with one rounding (FMA)."""
    if "torch" in sys.modules:
        return probe_torch()
    key, path = _key(), cache_path()
    try:
        with open(path) as f:
            doc = json.load(f)
        if doc.get("key") == key and isinstance(doc.get("fused"), bool):
            return doc["fused"]
    except (OSError, ValueError, AttributeError):
        pass
    code = "from lrs_focus.index_rule import probe_torch; print(int(probe_torch()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)))
    if out.returncode != 0 or not out.stdout.strip():
        tail = " | ".join(out.stderr.strip().splitlines()[-2:])
        raise RuntimeError(f"the exact pixel path needs torch's bilinear index rule; probing torch failed: {tail}")
    fused = out.stdout.strip().splitlines()[-1] == "1"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"key": key, "fused": fused}, f)
        os.replace(tmp, path)
    except OSError:
        pass  # read-only home: the probe runs again next time
    return fused
