"""The ZeroMQ backend: a ROUTER that queues `ask` jobs and runs them one at a time on an engine.

The rooms (each module's docstring says what it owns and what it may call):

    limits.py    policy and limits: ServiceLimits, ServiceConfigError, socket constants
    security.py  endpoints, CURVE keys and the allow-list, bind (ipc paths in use refused)
    outbox.py    job thread -> loop hand-over; reply encoding that cannot fail
    jobs.py      Job and JobBook: queue, states, cancel, ownership, exactly-once endings
    worker.py    the job thread: admission of the raster, engine.ask, error codes
    handlers.py  one handler per request type; exception -> error code in one place
    server.py    Server: the socket loop (frames in, replies out), lifecycle, shutdown
    proxy.py     ProxyFrontend + serve_workers: several workers behind one endpoint, fairly

A frame's way: server.py receives [identity, frame] -> handlers.Handlers.handle decodes and
validates it and calls the handler of its type -> the reply goes back through server.py. An
`ask` becomes a Job in the JobBook; the JobRunner thread takes it, runs the engine and hands
progress and the terminal message to the outbox, which the loop drains onto the socket.

Why it is shaped this way:
- One model per process (per GPU) and one job at a time: a second concurrent forward pass would
  only fight for the same GPU memory. A bounded queue answers `busy` instead of growing.
- Only the loop thread touches zmq sockets (they are not thread-safe). The job thread hands its
  encoded progress/result frames over the outbox, not a zmq socket, so a job stuck in C code can
  never keep `Context.term()` waiting: shutdown always ends.
- Nothing a peer sends can end the loop: every frame is handled inside a catch-all, replies are
  encoded by a function that cannot fail, and the loop itself survives any one iteration.
- Every accepted job gets exactly one terminal message (`JobBook.finish` is the only way out,
  guarded by the job's state), also when it is cancelled, stuck at shutdown or its peer vanished.
  The terminal is encoded before the job shows as finished and queued in the same step, and the
  loop flushes the outbox before any reply: a `status` saying "finished" never precedes the result.
- Bounded memory per peer: a send high-water mark, ROUTER_MANDATORY with NOBLOCK, and
  TCP_USER_TIMEOUT (ZMQ_TCP_MAXRT). A peer whose queue is full loses that message; one that
  stopped reading is disconnected by the kernel after `stalled_peer_timeout_s`, which frees what
  was queued for it; either way its jobs are cancelled. Nothing ever blocks on a peer.
- Jobs belong to their client: the CURVE public key when CURVE is on, else the ZeroMQ routing
  identity (a peer may choose its own but cannot learn another's). `status` shows a client only
  its own jobs, and a `cancel` or `status` for anyone else's job gets the same answer as for a
  job that never existed. Results carry nothing about other clients (no cache counts).
- Raster paths go through the access policy (access.py) in a helper thread bounded by
  `open_timeout_s` before the engine sees them: a slow or blocking open cannot hold the worker.
- Loopback by default; any other interface needs CURVE keys with an allow-list of client keys
  (zmq.auth) and allowed raster roots. MAXMSGSIZE is set on the ROUTER.
"""

from .handlers import Handlers
from .jobs import Job, JobBook
from .limits import (CLIENTS_DIR, DEFAULT_ENDPOINT, SERVER_SECRET_FILE, ServiceConfigError, ServiceLimits,
                     check_queue_size)
from .outbox import Outbox, encode_reply
from .proxy import ProxyFrontend, serve_workers
from .security import (bind, check_endpoint_free, check_ipc_path, check_security, client_keys, is_loopback_address,
                       is_loopback_endpoint, load_server_keys, secure_socket)
from .server import Server
from .worker import JobRunner, is_out_of_memory, public_result

__all__ = [
    "CLIENTS_DIR", "DEFAULT_ENDPOINT", "SERVER_SECRET_FILE", "Handlers", "Job", "JobBook", "JobRunner", "Outbox",
    "ProxyFrontend", "Server", "ServiceConfigError", "ServiceLimits", "bind", "check_endpoint_free",
    "check_ipc_path", "check_queue_size", "check_security", "client_keys", "encode_reply", "is_loopback_address",
    "is_loopback_endpoint", "is_out_of_memory", "load_server_keys", "public_result", "secure_socket",
    "serve_workers",
]
