"""`lrs-focus serve`: the ZeroMQ backend (one model per worker, one job at a time per worker).

Binds 127.0.0.1 by default. Any other interface needs `--keys-dir` (CURVE keys with an
allow-list of client keys, made by `lrs-focus keys DIR`) and at least one `--allow-root`.
Rasters are local regular files of the allowed formats (inside the allowed roots when given);
network rasters only with `--allow-remote` (see docs/service.md, "Which rasters a server reads").
Every raster is opened and read in reader processes confined by the kernel (Landlock, seccomp;
`--unconfined` where the kernel lacks Landlock), killed when a job passes `--job-timeout`.
With `--workers N` several engines (e.g. one per GPU, `--device cuda:0,cuda:1`) serve one
endpoint through zmq's proxy device. Stops on Ctrl-C, SIGTERM or a `shutdown` request from
loopback; exits 1 if a worker's loop ever died.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading

from ._answer_server import add_answer_server_args, answer_server_from_args

DEFAULT_MODEL = "ll-13/llava-largeimg-Qwen2-7B"
log = logging.getLogger("lrs_focus.serve")


# ServiceLimits' defaults, repeated here so that `--help` stays import-light (a test compares them)
DEFAULT_MAX_NEW_TOKENS = 512
DEFAULT_MAX_QUESTION_TOKENS = 512
DEFAULT_OPEN_TIMEOUT_S = 30.0
DEFAULT_STALLED_PEER_TIMEOUT_S = 20.0
DEFAULT_JOB_TIMEOUT_S = 600.0
DEFAULT_READERS = 2
DEFAULT_MAX_SOURCE_MEGAPIXELS = 4096.0
MAX_WORKERS = 64
#: Test-only switch: "1" turns the in-process access policy and GDAL's driver/network settings
#: off, so that tests attack the kernel confinement alone. Never set it on a real server.
NO_POLICY_ENV = "LRS_FOCUS_TEST_NO_ACCESS_POLICY"


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="the ZeroMQ backend (--endpoint, --model, --device)")
    p.add_argument("--endpoint", default="tcp://127.0.0.1:5555",
                   help="where to listen (default tcp://127.0.0.1:5555; non-loopback needs --keys-dir and --allow-root)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"checkpoint id or local dir (default {DEFAULT_MODEL}); 'tiny' = random weights, offline")
    p.add_argument("--device", default=None,
                   help="torch device, or a comma list with --workers (default: cuda if available, else cpu)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="weights' dtype (default bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--cache-mb", type=float, default=None,
                   help="tile features kept between questions, per worker: this many MB on the device, as many "
                        "again in host memory for what spills (default 1024; 0 = no cache)")
    p.add_argument("--queue-size", type=int, default=8, help="jobs waiting per worker before 'busy' (default 8)")
    p.add_argument("--workers", type=int, default=1,
                   help="engines behind the endpoint via zmq's proxy device, e.g. one per GPU (default 1)")
    p.add_argument("--keys-dir", default=None,
                   help="CURVE keys made by `lrs-focus keys DIR`: DIR/server.key_secret and the allow-list "
                        "DIR/clients/*.key (required off loopback)")
    p.add_argument("--curve", action="store_true", help="require CURVE even on a loopback endpoint")
    p.add_argument("--allow-root", action="append", default=[], metavar="DIR",
                   help="serve only rasters inside DIR (repeatable; symlinks are resolved first); required "
                        "off loopback. Without it: any local raster file this user can read")
    p.add_argument("--allow-remote", action="store_true",
                   help="also serve network rasters (/vsicurl/https://..., /vsis3/, /vsigs/, /vsiaz/...): the "
                        "server then fetches URLs that clients name")
    p.add_argument("--max-new-tokens-limit", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                   help=f"largest max_new_tokens an ask may request (default {DEFAULT_MAX_NEW_TOKENS})")
    p.add_argument("--max-question-tokens", type=int, default=DEFAULT_MAX_QUESTION_TOKENS,
                   help=f"longest question in tokens of the model's tokenizer (default {DEFAULT_MAX_QUESTION_TOKENS})")
    p.add_argument("--open-timeout", type=float, default=DEFAULT_OPEN_TIMEOUT_S,
                   help="seconds for the access check of a raster where the server itself runs it (default "
                        f"{DEFAULT_OPEN_TIMEOUT_S:g}); serve's raster readers run it themselves, within --job-timeout")
    p.add_argument("--stalled-peer-timeout", type=float, default=DEFAULT_STALLED_PEER_TIMEOUT_S,
                   help="seconds a client may leave replies unread before it is disconnected and its jobs "
                        f"cancelled (default {DEFAULT_STALLED_PEER_TIMEOUT_S:g})")
    p.add_argument("--job-timeout", type=float, default=DEFAULT_JOB_TIMEOUT_S,
                   help=f"seconds a job may run before it ends with job_timeout and its raster reader is killed "
                        f"(default {DEFAULT_JOB_TIMEOUT_S:g})")
    p.add_argument("--readers", type=int, default=DEFAULT_READERS,
                   help=f"raster reader processes (confined by the kernel) shared by the workers (default "
                        f"{DEFAULT_READERS}); a question reads in parallel with the free ones")
    p.add_argument("--max-source-megapixels", type=float, default=DEFAULT_MAX_SOURCE_MEGAPIXELS,
                   help="source pixels one question may decode, in millions, before raster_too_large (default "
                        f"{DEFAULT_MAX_SOURCE_MEGAPIXELS:g})")
    p.add_argument("--unconfined", action="store_true",
                   help="run raster readers without kernel confinement (Landlock) where the kernel lacks it; "
                        "without this option such a kernel is a start-up error")
    add_answer_server_args(p)
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


def _policy_and_limits(args):
    from ..access import AccessPolicy
    from ..errors import BadOptions
    from ..service import ServiceConfigError, ServiceLimits, check_queue_size

    if not 1 <= args.workers <= MAX_WORKERS:
        raise BadOptions(f"--workers must be in 1..{MAX_WORKERS}, not {args.workers}")
    if args.cache_mb is not None and not (math.isfinite(args.cache_mb) and args.cache_mb >= 0):
        raise BadOptions(f"--cache-mb must be a finite number >= 0, not {args.cache_mb!r}")
    check_queue_size(args.queue_size)
    try:
        policy = AccessPolicy(roots=tuple(args.allow_root), allow_remote=args.allow_remote)
        limits = ServiceLimits(max_new_tokens=args.max_new_tokens_limit, max_question_tokens=args.max_question_tokens,
                               open_timeout_s=args.open_timeout, stalled_peer_timeout_s=args.stalled_peer_timeout,
                               job_timeout_s=args.job_timeout, max_source_megapixels=args.max_source_megapixels)
    except ValueError as exc:
        raise ServiceConfigError(str(exc)) from None
    if not 1 <= args.readers <= MAX_WORKERS:
        raise BadOptions(f"--readers must be in 1..{MAX_WORKERS}, not {args.readers}")
    return policy, limits


def _readers(args, policy, limits, no_policy: bool):
    """The reader pool every question of this server reads through; a kernel that cannot confine
    it is a start-up error unless --unconfined says so."""
    from ..readers.confine import landlock_abi
    from ..readers.pool import ReaderPool
    from ..service import ServiceConfigError

    abi = landlock_abi()
    if abi < 1 and not args.unconfined:
        raise ServiceConfigError("this kernel has no Landlock (Linux >= 5.13 with landlock in the LSM list), so "
                                 "raster readers cannot be confined to the allowed roots; run on such a kernel, or "
                                 "start with --unconfined to serve without that protection")
    return ReaderPool(size=args.readers, roots=policy.roots, allow_remote=policy.allow_remote,
                      confine=not args.unconfined, no_policy=no_policy, timeout_s=limits.job_timeout_s,
                      cpu_s=limits.job_timeout_s, parallel=min(args.readers, 4),
                      max_source_pixels=int(limits.max_source_megapixels * 1e6)).start()


def run(args) -> int:
    from ..access import harden_gdal
    from ..engine import Engine
    from ..service import Server, check_endpoint_free, check_security, serve_workers

    policy, limits = _policy_and_limits(args)
    # every refusal before loading a 7B model, not after
    check_security(args.endpoint, args.keys_dir, args.curve, policy.roots, check_roots=True)
    check_endpoint_free(args.endpoint)
    no_policy = os.environ.get(NO_POLICY_ENV) == "1"
    answer_server = answer_server_from_args(args)  # the key file is read once, before any model loads
    if no_policy:
        print(f"lrs-focus serve: {NO_POLICY_ENV}=1: the access policy is OFF (tests only)", file=sys.stderr)
    else:
        removed = harden_gdal(policy)
        log.debug("GDAL drivers unregistered: %s", ", ".join(removed))
    readers = _readers(args, policy, limits, no_policy)
    confinement = readers.describe()
    if not confinement["confined"]:
        print("lrs-focus serve: --unconfined: raster readers are NOT confined by the kernel", file=sys.stderr)
    engines = []
    for device in _devices(args.device, args.workers):
        engine = Engine(args.model, device=device, dtype=args.dtype, cache_mb=args.cache_mb, answer_server=answer_server)
        engine.readers = readers
        info = engine.describe()
        if info.get("random_weights"):
            print(f"lrs-focus serve: model {info.get('model')!r} has RANDOM weights: answers are meaningless "
                  "(use it to test the plumbing)", file=sys.stderr)
        engines.append(engine)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    options = dict(queue_size=args.queue_size, keys_dir=args.keys_dir, force_curve=args.curve,
                   access=None if no_policy else policy, limits=limits)
    if args.workers == 1:
        server = Server(engines[0], args.endpoint, **options).start()
        servers, proxy, endpoint = [server], None, server.endpoint
    else:
        proxy, servers = serve_workers(engines, args.endpoint, **options)
        endpoint = proxy.endpoint
    where = ", ".join(policy.describe()["roots"]) or "any local folder"
    how = (f"readers confined by Landlock ABI {confinement['landlock_abi']}" if confinement["confined"]
           else "readers NOT confined")
    print(f"lrs-focus serve: listening on {endpoint} with {len(servers)} worker(s); rasters from {where}"
          f"{' and the network' if policy.allow_remote else ''}; {how}", file=sys.stderr, flush=True)
    while not stop.is_set() and not any(s.stopped for s in servers):
        stop.wait(0.2)
    for server in servers:
        server.stop()
    if proxy is not None:
        proxy.stop()
    readers.close()
    crashed = [s.crashed for s in servers if s.crashed]
    if crashed:
        print(f"lrs-focus serve: a worker loop died ({crashed[0]})", file=sys.stderr)
        return 1
    print("lrs-focus serve: stopped", file=sys.stderr)
    return 0
