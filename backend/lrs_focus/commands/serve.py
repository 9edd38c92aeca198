"""`lrs-focus serve`: the ZeroMQ backend (one model per worker, one job at a time per worker).

Binds 127.0.0.1 by default; any other interface needs `--keys-dir` with CURVE keys made by
`zmq.auth.create_certificates(DIR, "server")` (clients then need `server.key`). With
`--workers N` several engines (e.g. one per GPU, `--device cuda:0,cuda:1`) serve one endpoint
through zmq's proxy device. Stops on Ctrl-C, SIGTERM or a `shutdown` request from loopback.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

DEFAULT_MODEL = "ll-13/llava-largeimg-Qwen2-7B"
log = logging.getLogger("lrs_focus.serve")


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="the ZeroMQ backend (--endpoint, --model, --device)")
    p.add_argument("--endpoint", default="tcp://127.0.0.1:5555",
                   help="where to listen (default tcp://127.0.0.1:5555; non-loopback needs --keys-dir)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"checkpoint id or local dir (default {DEFAULT_MODEL}); 'tiny' = random weights, offline")
    p.add_argument("--device", default=None,
                   help="torch device, or a comma list with --workers (default: cuda if available, else cpu)")
    p.add_argument("--queue-size", type=int, default=8, help="jobs waiting per worker before 'busy' (default 8)")
    p.add_argument("--workers", type=int, default=1,
                   help="engines behind the endpoint via zmq's proxy device, e.g. one per GPU (default 1)")
    p.add_argument("--keys-dir", default=None,
                   help="CURVE keys: DIR/server.key_secret, and optionally DIR/clients/*.key as an allow-list")
    p.add_argument("--curve", action="store_true", help="require CURVE even on a loopback endpoint")
    p.set_defaults(func=run)


def _devices(spec: str | None, workers: int) -> list[str | None]:
    if spec and "," in spec:
        devices = [d.strip() for d in spec.split(",") if d.strip()]
        if len(devices) != workers:
            from ..errors import BadOptions

            raise BadOptions(f"--device lists {len(devices)} devices for --workers {workers}")
        return devices
    if spec is None and workers > 1:
        import torch

        if torch.cuda.is_available() and torch.cuda.device_count() >= workers:
            return [f"cuda:{i}" for i in range(workers)]
    return [spec] * workers


def run(args) -> int:
    from ..engine import Engine
    from ..errors import BadOptions
    from ..service import Server, check_security, serve_workers

    if args.workers < 1:
        raise BadOptions(f"--workers must be >= 1, not {args.workers}")
    check_security(args.endpoint, args.keys_dir, args.curve)  # before loading a 7B model, not after
    engines = []
    for device in _devices(args.device, args.workers):
        engine = Engine(args.model, device=device)
        info = engine.describe()
        if info.get("random_weights"):
            print(f"lrs-focus serve: model {info.get('model')!r} has RANDOM weights: answers are meaningless "
                  "(use it to test the plumbing)", file=sys.stderr)
        engines.append(engine)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if args.workers == 1:
        server = Server(engines[0], args.endpoint, queue_size=args.queue_size, keys_dir=args.keys_dir,
                        force_curve=args.curve).start()
        servers, proxy, endpoint = [server], None, server.endpoint
    else:
        proxy, servers = serve_workers(engines, args.endpoint, queue_size=args.queue_size,
                                       keys_dir=args.keys_dir, force_curve=args.curve)
        endpoint = proxy.endpoint
    print(f"lrs-focus serve: listening on {endpoint} with {len(servers)} worker(s)", file=sys.stderr, flush=True)
    while not stop.is_set() and not any(s.stopped for s in servers):
        stop.wait(0.2)
    for server in servers:
        server.stop()
    if proxy is not None:
        proxy.stop()
    print("lrs-focus serve: stopped", file=sys.stderr)
    return 0
