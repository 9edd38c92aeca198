"""`lrs-focus health --endpoint URL`: ask a running server for its health reply.

Exits 2 with `error [timeout]` when nothing answers within --timeout, so scripts can use it as
a readiness probe.
"""

from __future__ import annotations

from ._output import add_json_flag, emit
from ._values import seconds


def register(subparsers) -> None:
    p = subparsers.add_parser("health", help="the server's health reply")
    p.add_argument("--endpoint", default="tcp://127.0.0.1:5555", help="server endpoint (default tcp://127.0.0.1:5555)")
    p.add_argument("--timeout", type=seconds, default=5.0, help="seconds to wait for the reply (default 5)")
    p.add_argument("--server-key", default=None, metavar="FILE",
                   help="the CURVE server's public key (server.key from `lrs-focus keys`)")
    p.add_argument("--client-key", default=None, metavar="FILE",
                   help="with --server-key: this client's certificate (NAME.key_secret from `lrs-focus keys`)")
    add_json_flag(p)
    p.set_defaults(func=run)


def _text(doc: dict) -> str:
    weights = " (RANDOM weights)" if doc.get("random_weights") else ""
    worker = f" worker {doc['worker']}" if doc.get("worker") else ""
    return (f"lrs-focus {doc['version']} (protocol {doc.get('protocol')}) at {doc['endpoint']}{worker}\n"
            f"model   {doc['model']}{weights} on {doc['device']} ({doc.get('dtype', '')})\n"
            f"queue   {doc['queue_length']}/{doc['queue_size']} waiting, {'busy' if doc.get('running') else 'idle'}\n"
            f"uptime  {doc['uptime_s']:.1f} s, round trip {doc['round_trip_ms']:.2f} ms"
            + _confinement(doc.get("confinement")))


def _confinement(conf) -> str:
    """The readers line: how the kernel confines them (servers before issue 20 send nothing)."""
    if not isinstance(conf, dict):
        return ""
    if not conf.get("confined"):
        return f"\nreaders {conf.get('readers')} NOT confined (--unconfined)"
    return (f"\nreaders {conf.get('readers')} confined: Landlock ABI {conf.get('landlock_abi')}, read-only "
            f"{', '.join(conf.get('read_roots') or [])}, TCP {conf.get('tcp')}; seccomp {conf.get('seccomp')}")


def run(args) -> int:
    import time

    from ..client import Client

    with Client(args.endpoint, timeout_s=args.timeout, server_public_key=args.server_key,
                client_key_file=args.client_key) as client:
        t0 = time.perf_counter()
        reply = client.health()
        elapsed = time.perf_counter() - t0
    doc = {k: v for k, v in reply.items() if k not in ("type", "id", "v")}
    doc["endpoint"] = args.endpoint
    doc["round_trip_ms"] = round(elapsed * 1000, 3)
    emit(args, doc, _text)
    return 0
