"""`lrs-focus bench pyramid`: lazy DIP reads vs loading the whole raster as float32.

Workload per raster size (the first steps of an `ask`): open, the thumbnail, every base-level
tile, and N random finest-level tiles (default 80, the Qwen2 N_max).

- ours, `gdal` path: `RasterSource` + `ImagePyramid` (GDAL windowed resampled reads), with the
  raster's overviews and with them ignored (GDAL open option OVERVIEW_LEVEL=NONE);
- ours, `exact` path: `ExactPyramid`, the released preprocessing computed lazily (bilinear without
  antialiasing from the full-resolution rows and columns each output pixel needs; overviews are
  never used, so the two cases differ only by what GDAL opens);
- baseline: what the released code does first: read the whole image, convert it to float32 and
  normalise it with the CLIP mean/std, then resize the thumbnail and base level from it with
  torch bilinear interpolation and crop the tiles. It is a lower bound of the released code's
  memory: the released code also materialises every intermediate level.

Each measurement runs in a fresh child process, so `peak_mb` (the child's VmHWM) is honest
and includes the interpreter and its libraries (`import_mb` says how much of it that is).
The synthetic rasters (tiled 3-band DEFLATE GeoTIFF + external .ovr) are cached in --cache-dir.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_SIZES = "5000x5000,27328x20000"
QUICK_SIZES = "1500x1200,3000x2000"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _default_cache() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "lrs-focus", "bench")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default=None,
                        help=f"comma-separated WIDTHxHEIGHT list (default {DEFAULT_SIZES})")
    parser.add_argument("--quick", action="store_true", help=f"small sizes ({QUICK_SIZES}), 20 tiles")
    parser.add_argument("--tiles", type=int, default=None, help="random finest-level tiles (default 80)")
    parser.add_argument("--cache-dir", default=_default_cache(), help="where the synthetic rasters are kept")
    parser.add_argument("--no-baseline", action="store_true", help="skip the whole-image baseline")
    parser.add_argument("--paths", default="gdal,exact", help="pixel paths measured (default gdal,exact)")
    parser.add_argument("--seed", type=int, default=0)


def _log(msg: str) -> None:
    print(f"bench pyramid: {msg}", file=sys.stderr, flush=True)


def ensure_raster(cache_dir: Path, width: int, height: int) -> Path:
    """The cached synthetic raster (with an external .ovr) for one size, built once."""
    from ..samples import add_external_overviews, write_synthetic_raster

    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"synthetic_{width}x{height}_rgb8.tif"
    ovr = Path(str(path) + ".ovr")
    if not path.exists():
        _log(f"writing {path} (once; cached)")
        t0 = time.perf_counter()
        write_synthetic_raster(path, width, height, bands=3, dtype="Byte", tile=256, compress="DEFLATE")
        _log(f"  written in {time.perf_counter() - t0:.1f} s")
    if not ovr.exists():
        _log(f"building overviews {ovr}")
        t0 = time.perf_counter()
        add_external_overviews(path)
        _log(f"  built in {time.perf_counter() - t0:.1f} s")
    return path


def _child(kind: str, raster: str, tiles: int, overviews: bool, seed: int, pixels: str = "gdal") -> dict:
    """Run one measurement in a fresh interpreter; return its JSON report."""
    cmd = [sys.executable, "-m", "lrs_focus.bench.pyramid", kind, raster, str(tiles),
           "1" if overviews else "0", str(seed), pixels]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        return {"error": f"child exited {proc.returncode}: {' | '.join(tail)}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(args) -> dict:
    from ..samples import parse_sizes

    sizes = parse_sizes(args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES))
    tiles = args.tiles if args.tiles is not None else (20 if args.quick else 80)
    if tiles < 1:
        from ..errors import BadOptions

        raise BadOptions(f"--tiles must be >= 1, not {tiles}")
    cache = Path(args.cache_dir)
    cases = []
    for w, h in sizes:
        path = ensure_raster(cache, w, h)
        baseline = None
        if not args.no_baseline:
            _log(f"{w}x{h}: baseline (whole image as float32)")
            baseline = _child("baseline", str(path), tiles, True, args.seed)
        for pixels in [p.strip() for p in args.paths.split(",") if p.strip()]:
            for overviews in (True, False):
                _log(f"{w}x{h}: ours, {pixels} pixels ({'with' if overviews else 'without'} overviews)")
                ours = _child("ours", str(path), tiles, overviews, args.seed, pixels)
                case = {
                    "name": f"{w}x{h} {pixels} {'overviews' if overviews else 'no-overviews'}",
                    "pixels": pixels,
                    "size": [h, w],
                    "overviews": overviews,
                    "tiles": tiles,
                    "ours": ours,
                    "baseline": baseline,
                    "ratio": None,
                }
                if baseline and "peak_mb" in baseline and "peak_mb" in ours:
                    case["ratio"] = round(baseline["peak_mb"] / ours["peak_mb"], 2)  # x less memory
                    case["time_ratio"] = round(baseline["seconds"] / ours["seconds"], 2)  # x faster
                cases.append(case)
    return {
        "benchmark": "pyramid",
        "workload": f"open + thumbnail + all base-level tiles + {tiles} random finest-level tiles",
        "ratio_means": "baseline peak_mb / ours peak_mb (time_ratio: baseline seconds / ours seconds)",
        "cases": cases,
    }


def format_table(doc: dict) -> str:
    lines = [doc.get("workload", ""),
             f"{'case':<34} {'ours MB':>9} {'ours s':>8} {'base MB':>9} {'base s':>8} {'mem x':>7} {'time x':>7}"]
    for c in doc["cases"]:
        o, b = c["ours"], c["baseline"] or {}

        def cell(d, key, fmt):
            return format(d[key], fmt) if key in d else ("err" if "error" in d else "-")

        lines.append(
            f"{c['name']:<34} {cell(o, 'peak_mb', '9.0f')} {cell(o, 'seconds', '8.2f')} "
            f"{cell(b, 'peak_mb', '9.0f')} {cell(b, 'seconds', '8.2f')} "
            f"{(format(c['ratio'], '7.1f') if c['ratio'] else '-'):>7} "
            f"{(format(c.get('time_ratio'), '7.1f') if c.get('time_ratio') else '-'):>7}"
        )
        for d in (o, b):
            if "error" in d:
                lines.append(f"  error: {d['error']}")
    return "\n".join(lines)


# -- child processes ---------------------------------------------------------------------------
def _peak_mb() -> float:
    """This process's peak resident memory in MB.

    VmHWM belongs to the process's own address space; ru_maxrss is not used on Linux because it
    keeps the parent's high-water mark across fork + exec.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _random_tiles(grid: tuple[int, int], n: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    picks = rng.sample(range(grid[0] * grid[1]), min(n, grid[0] * grid[1]))
    return [(i // grid[1], i % grid[1]) for i in picks]


def _measure_ours(raster: str, n_tiles: int, overviews: bool, seed: int, pixels: str = "gdal") -> dict:
    from ..exact_pixels import ExactPyramid
    from ..pyramid import ImagePyramid
    from ..raster import RasterSource

    import_mb = _peak_mb()
    t0 = time.perf_counter()
    src = RasterSource.open(raster, open_options=None if overviews else ["OVERVIEW_LEVEL=NONE"])
    pyr = ExactPyramid(src) if pixels == "exact" else ImagePyramid(src)
    geo = pyr.geometry
    pyr.thumbnail()
    t_thumb = time.perf_counter()
    base = geo.levels[0]
    pyr.tiles(base, [(r, c) for r in range(base.grid[0]) for c in range(base.grid[1])])
    t_base = time.perf_counter()
    fine = geo.levels[-1]
    pyr.tiles(fine, _random_tiles(fine.grid, n_tiles, seed))
    t_end = time.perf_counter()
    return {
        "peak_mb": round(_peak_mb(), 1),
        "seconds": round(t_end - t0, 3),
        "import_mb": round(import_mb, 1),
        "open_and_thumbnail_s": round(t_thumb - t0, 3),
        "base_level_s": round(t_base - t_thumb, 3),
        "finest_tiles_s": round(t_end - t_base, 3),
        "overviews_seen": len(src.overview_sizes),
        "gdal_reads": pyr.reads,
    }


def _measure_baseline(raster: str, n_tiles: int, seed: int) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from osgeo import gdal

    from ..pyramid import PyramidGeometry

    gdal.UseExceptions()
    import_mb = _peak_mb()
    t0 = time.perf_counter()
    ds = gdal.Open(raster)
    whole = ds.ReadAsArray(band_list=[1, 2, 3])  # (3, H, W) uint8, the whole image
    t_read = time.perf_counter()
    image = torch.from_numpy(whole).float().div_(255.0)  # float32 copy, as ToTensor does
    del whole
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    image.sub_(mean).div_(std)
    t_norm = time.perf_counter()
    geo = PyramidGeometry(image.shape[1], image.shape[2])
    batch = image.unsqueeze(0)
    thumb = F.interpolate(batch, size=geo.thumbnail_size, mode="bilinear", align_corners=False)
    base = F.interpolate(batch, size=geo.levels[0].resized, mode="bilinear", align_corners=False)
    fine = geo.levels[-1]
    crops = []
    for r, c in _random_tiles(fine.grid, n_tiles, seed):
        x0, y0, x1, y1 = geo.tile_window(fine, r, c)
        ch, cw = geo.tile_content(fine, r, c)
        crops.append(F.interpolate(batch[:, :, y0:y1, x0:x1], size=(ch, cw), mode="bilinear", align_corners=False))
    t_end = time.perf_counter()
    assert thumb.numel() and base.numel() and len(crops) == min(n_tiles, fine.grid[0] * fine.grid[1])
    return {
        "peak_mb": round(_peak_mb(), 1),
        "seconds": round(t_end - t0, 3),
        "import_mb": round(import_mb, 1),
        "read_s": round(t_read - t0, 3),
        "normalise_s": round(t_norm - t_read, 3),
        "levels_and_tiles_s": round(t_end - t_norm, 3),
        "float32_gb": round(image.numel() * 4 / 1e9, 2),
        "dtype": str(np.float32.__name__),
    }


def _child_main(argv: list[str]) -> int:
    kind, raster, n_tiles, overviews, seed, pixels = argv
    if kind == "ours":
        doc = _measure_ours(raster, int(n_tiles), overviews == "1", int(seed), pixels)
    elif kind == "baseline":
        doc = _measure_baseline(raster, int(n_tiles), int(seed))
    else:
        raise SystemExit(f"unknown measurement {kind!r}")
    print(json.dumps(doc), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
