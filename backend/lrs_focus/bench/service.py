"""`lrs-focus bench service`: what the ZeroMQ layer costs, measured against doing without it.

Cases (one engine, loaded once, serves every case; the server runs in a thread of this process):
- `ping round trip`: p50/p99 of protocol `ping` requests through the service (JSON encode,
  validate, ROUTER dispatch); baseline = a bare DEALER->ROUTER echo of the same bytes on the
  same machine. ratio = ours p50 / baseline p50 (the protocol's latency factor).
- `asks/s, tiny model`: sequential asks on the real Sentinel-2 sample through `Client.ask`
  (the access policy of `serve`, the raster read in confined reader processes as `serve` does,
  accepted, progress stream, result with the GeoJSON) vs `Engine.ask` called in-process (GDAL in
  this process).
  ratio = ours asks/s / baseline asks/s (the share of in-process throughput kept; 1.0 = free).
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

QUESTION = "How many ships are docked at the northern pier?"


def add_arguments(parser) -> None:
    parser.add_argument("--pings", type=int, default=2000, help="ping round trips (default 2000)")
    parser.add_argument("--asks", type=int, default=3, help="timed asks each way (default 3)")
    parser.add_argument("--model", default="tiny", help="engine model (default tiny: random weights, offline)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--raster", default=None, help="raster to ask about (default: the Sentinel-2 sample)")
    parser.add_argument("--mode", default="paper", help="ask mode (default paper)")


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    q = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"p50_ms": round(q[49] * 1000, 4), "p99_ms": round(q[98] * 1000, 4),
            "mean_ms": round(statistics.fmean(ordered) * 1000, 4), "n": len(ordered)}


def _bare_zmq_round_trips(payload: bytes, n: int) -> list[float]:
    """The floor: DEALER -> ROUTER echo thread over loopback TCP, no JSON, no validation."""
    import zmq

    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    endpoint = router.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def echo() -> None:
        while not stop.is_set():
            if router.poll(100):
                router.send_multipart(router.recv_multipart())
        router.close()

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.connect(f"tcp://127.0.0.1:{endpoint}")
    samples = []
    for i in range(n + 50):
        t0 = time.perf_counter()
        dealer.send(payload)
        if not dealer.poll(5000):
            raise TimeoutError("bare zmq echo did not answer")
        dealer.recv()
        if i >= 50:  # warm-up
            samples.append(time.perf_counter() - t0)
    dealer.close()
    stop.set()
    thread.join(5)
    return samples


def _raster_size(path: str) -> str:
    from osgeo import gdal

    ds = gdal.Open(path)
    return f"{ds.RasterXSize}x{ds.RasterYSize}"


def run(args) -> dict[str, Any]:
    from .. import protocol
    from ..access import AccessPolicy
    from ..client import Client
    from ..engine import AskOptions, Engine
    from ..service import Server

    tmp = tempfile.TemporaryDirectory(prefix="lrs-bench-service-")
    raster = args.raster
    if raster is None:
        from ..samples import sentinel2_rgb_vrt

        raster = str(sentinel2_rgb_vrt(Path(tmp.name) / "sentinel2_rgb.vrt"))
    size = _raster_size(raster)
    engine = Engine(args.model, device=args.device)
    info = engine.describe()
    options = {"mode": args.mode}
    from ..readers.pool import ReaderPool

    readers = ReaderPool(size=2, roots=(), confine=True).start()
    server = Server(engine, "tcp://127.0.0.1:*", queue_size=4, access=AccessPolicy()).start()
    try:
        with Client(server.endpoint, timeout_s=600) as client:
            samples = []
            for i in range(args.pings + 50):
                t0 = time.perf_counter()
                client.ping()
                if i >= 50:
                    samples.append(time.perf_counter() - t0)
            ours_ping = _percentiles(samples)
            base_ping = _percentiles(_bare_zmq_round_trips(protocol.encode(protocol.ping()), args.pings))

            engine.ask(raster, QUESTION, AskOptions.from_dict(options))  # warm-up (allocator, caches)
            base_times, ours_times = [], []
            for _ in range(args.asks):  # interleaved, so machine load hits both sides alike
                t0 = time.perf_counter()
                engine.ask(raster, QUESTION, AskOptions.from_dict(options))
                base_times.append(time.perf_counter() - t0)
                engine.readers = readers  # the served side reads as `serve` does; the baseline in-process
                try:
                    t0 = time.perf_counter()
                    result = client.ask(raster, QUESTION, options)
                    ours_times.append(time.perf_counter() - t0)
                finally:
                    engine.readers = None
            base_s, ours_s = statistics.median(base_times), statistics.median(ours_times)
            result_bytes = len(protocol.encode(protocol.result("x", "x", result)))
    finally:
        server.stop()
        readers.close()
        tmp.cleanup()
    weights = "random weights" if info.get("random_weights") else "trained weights"
    return {
        "model": info,
        "cases": [
            {"name": "ping round trip (service vs bare zmq echo)", "ours": ours_ping, "baseline": base_ping,
             "ratio": round(ours_ping["p50_ms"] / base_ping["p50_ms"], 3), "ratio_is": "ours p50 / baseline p50"},
            {"name": f"asks/s {args.model} model ({weights}), {args.mode} mode, {Path(raster).name} {size}",
             "ours": {"asks_per_s": round(1 / ours_s, 4), "median_s": round(ours_s, 4), "asks": args.asks,
                      "result_bytes": result_bytes, "overhead_ms_per_ask": round((ours_s - base_s) * 1000, 2)},
             "baseline": {"asks_per_s": round(1 / base_s, 4), "median_s": round(base_s, 4), "asks": args.asks},
             "ratio": round(base_s / ours_s, 4), "ratio_is": "ours asks/s / baseline asks/s"},
        ],
    }


def format_table(doc: dict[str, Any]) -> str:
    ping, asks = doc["cases"]
    o, b = ping["ours"], ping["baseline"]
    lines = [ping["name"],
             f"  ours      p50 {o['p50_ms']:.3f} ms  p99 {o['p99_ms']:.3f} ms  ({o['n']} pings)",
             f"  baseline  p50 {b['p50_ms']:.3f} ms  p99 {b['p99_ms']:.3f} ms",
             f"  ratio {ping['ratio']:.2f} ({ping['ratio_is']})",
             asks["name"],
             f"  ours      {asks['ours']['asks_per_s']:.3f} asks/s through ZeroMQ "
             f"({asks['ours']['overhead_ms_per_ask']:+.1f} ms per ask, result {asks['ours']['result_bytes']} bytes)",
             f"  baseline  {asks['baseline']['asks_per_s']:.3f} asks/s in-process Engine.ask",
             f"  ratio {asks['ratio']:.3f} ({asks['ratio_is']})"]
    if doc.get("model", {}).get("random_weights"):
        lines.append("model has RANDOM weights: timings are real, answers are not")
    return "\n".join(lines)
