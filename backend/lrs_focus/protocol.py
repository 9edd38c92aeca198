"""ZeroMQ message shapes of the lrs-focus service: the single source of truth for both sides.

Stdlib only, on purpose: the QGIS plugin ships a byte-identical copy of this file and runs it
in QGIS's own Python, which has neither torch nor the backend package. Nothing here touches a
socket; this module only builds, encodes, decodes and validates messages.

Wire format. A client (DEALER) sends ONE frame: a UTF-8 JSON object. The server (ROUTER) sees
``[identity, frame]`` and answers with ``[identity, frame]``, so the client receives one frame
per reply. Every message, in both directions, carries the envelope

    {"v": PROTOCOL_VERSION, "type": <message type>, "id": <request id chosen by the client>}

Replies copy the request's ``id`` (``null`` when the request was too broken to have one), so a
client can match replies to requests; every reply about a job also carries ``job_id``.
JSON only: never pickle, never eval. Unknown or malformed input gets an ``error`` reply.

Requests (client -> server)       Replies (server -> client)
  ping                              pong
  health                            health
  status   [job_id]                 status
  ask      raster question options  accepted, then progress*, then ONE terminal:
                                    result | error (code "cancelled" when cancelled)
  cancel   job_id                   cancelling
  shutdown                          bye | error (code "forbidden" unless from loopback)
Any request may instead get ``error`` (bad_json, bad_request, unsupported_version, busy...).
docs/protocol.md lists every field.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from typing import Any, Dict, Optional

PROTOCOL_VERSION = 1

#: The server refuses (drops the connection of) any frame larger than this (zmq.MAXMSGSIZE).
MAX_MESSAGE_BYTES = 1 << 20
#: Clients accept replies up to this size: a result carries one GeoJSON feature per traced tile,
#: which is several MB for a 27k-pixel raster, far above what any request needs.
MAX_REPLY_BYTES = 256 << 20
MAX_ID_CHARS = 128
MAX_PATH_CHARS = 4096
MAX_QUESTION_CHARS = 8192

REQUEST_TYPES = ("ping", "health", "status", "ask", "cancel", "shutdown")
REPLY_TYPES = ("pong", "health", "status", "accepted", "progress", "result", "error", "cancelling", "bye")
#: Replies after which no further message about the same job (or request) will come.
TERMINAL_TYPES = ("result", "error")

STAGES = ("open", "pyramid", "encode", "focus", "generate", "done")
JOB_STATES = ("queued", "running", "finished", "unknown", "other_worker")

# -- error codes ------------------------------------------------------------------------------
# Protocol-level codes. Engine failures pass through with the stable code of the backend's
# `errors.LrsFocusError` subclass (raster_not_found, not_a_raster, bad_options, model_error,
# cancelled, ...): clients must treat unknown codes as plain errors.
BAD_JSON = "bad_json"  # the frame is not a UTF-8 JSON object
BAD_FRAMES = "bad_frames"  # not exactly one frame after the identity
BAD_REQUEST = "bad_request"  # JSON, but a field is missing, of the wrong type or too long
UNSUPPORTED_VERSION = "unsupported_version"
UNKNOWN_TYPE = "unknown_type"
BUSY = "busy"  # the job queue is full: try again later
UNKNOWN_JOB = "unknown_job"
FORBIDDEN = "forbidden"  # e.g. shutdown from a non-loopback peer
CANCELLED = "cancelled"
OUT_OF_MEMORY = "out_of_memory"
INTERNAL = "internal"
TIMEOUT = "timeout"  # client side only: no reply within the timeout
SHUTTING_DOWN = "shutting_down"  # the server stopped before the job could finish
JOB_TIMEOUT = "job_timeout"  # the job ran past the server's --job-timeout (its raster reader was killed)
ERROR_CODES = (
    BAD_JSON, BAD_FRAMES, BAD_REQUEST, UNSUPPORTED_VERSION, UNKNOWN_TYPE, BUSY, UNKNOWN_JOB,
    FORBIDDEN, CANCELLED, OUT_OF_MEMORY, INTERNAL, TIMEOUT, SHUTTING_DOWN, JOB_TIMEOUT,
)

#: Options an `ask` may carry, with the JSON types each accepts (None = JSON null).
ASK_OPTION_TYPES: Dict[str, tuple] = {
    "mode": (str,),
    "alpha": (int, float),
    "n_max": (int, type(None)),
    "bands": (list, type(None)),
    "max_levels": (int, type(None)),
    "max_new_tokens": (int,),
    "score_reduce": (str,),
    "window": (list, type(None)),  # [x0, y0, x1, y1] pixel window of the raster (end exclusive)
    "stretch": (list, type(None)),  # [[low, high], ...] per band: the display stretch to 8 bits
    "max_length": (int, type(None)),  # override the model's sequence limit (text is never cut)
    "pixels": (str, type(None)),  # "exact" (released preprocessing) | "gdal" (GDAL resampling, overviews)
    "focus": (str, type(None)),  # "rfm" (LLaVA) | "attention" | "relative" (Qwen2.5-VL / Qwen3-VL)
    "focus_layer": (int, type(None)),  # Qwen-VL: the layer whose attention focuses (None: the model's preset)
    "focus_heads": (list, type(None)),  # Qwen-VL: heads averaged (None: all)
    "answer_input": (str,),  # Qwen-VL: "tiles" (kept tiles whole) | "tokens" (their kept tokens only)
}


class ProtocolError(ValueError):
    """A message that does not follow this protocol; `code` is the error code to answer with."""

    def __init__(self, code: str, message: str, request_id: Optional[str] = None):
        super().__init__(message)
        self.code = code
        self.request_id = request_id


# -- encoding ---------------------------------------------------------------------------------
def new_id() -> str:
    return uuid.uuid4().hex


def encode(message: Dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON; NaN/Infinity are not JSON, so they are refused (ValueError) rather than sent.

    A string with a lone surrogate (which UTF-8 cannot carry) does not make encoding fail: the
    message is then sent as ASCII JSON, where it travels as a \\uXXXX escape.
    """
    text = json.dumps(message, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(message, separators=(",", ":"), allow_nan=False, ensure_ascii=True).encode("ascii")


def decode(frame: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> Dict[str, Any]:
    """Bytes -> JSON object, or ProtocolError(bad_json). Never raises anything else.

    `max_bytes` is the request limit by default; clients pass MAX_REPLY_BYTES for replies.
    """
    if len(frame) > max_bytes:
        raise ProtocolError(BAD_JSON, f"message of {len(frame)} bytes exceeds {max_bytes}")
    try:
        text = bytes(frame).decode("utf-8")
        data = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
        raise ProtocolError(BAD_JSON, f"not a UTF-8 JSON document: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise ProtocolError(BAD_JSON, f"a message must be a JSON object, not {type(data).__name__}")
    if _has_lone_surrogate(data):
        raise ProtocolError(BAD_JSON, "a string holds a lone UTF-16 surrogate escape (not Unicode text)")
    return data


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_SURROGATE = re.compile("[\ud800-\udfff]")


def _has_lone_surrogate(data: Any) -> bool:
    """True if any key or string holds a surrogate: JSON's \\ud800 escapes decode to them, and
    they cannot be encoded again (RFC 8259 section 8.2: such strings are not interoperable)."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


# -- builders ---------------------------------------------------------------------------------
def _message(kind: str, request_id: Optional[str], **fields: Any) -> Dict[str, Any]:
    msg: Dict[str, Any] = {"v": PROTOCOL_VERSION, "type": kind, "id": request_id}
    msg.update(fields)
    return msg


def ping(request_id: Optional[str] = None) -> Dict[str, Any]:
    return _message("ping", request_id or new_id())


def health(request_id: Optional[str] = None) -> Dict[str, Any]:
    return _message("health", request_id or new_id())


def status(job_id: Optional[str] = None, request_id: Optional[str] = None) -> Dict[str, Any]:
    msg = _message("status", request_id or new_id())
    if job_id is not None:
        msg["job_id"] = job_id
    return msg


def ask(raster: str, question: str, options: Optional[Dict[str, Any]] = None,
        request_id: Optional[str] = None) -> Dict[str, Any]:
    return _message("ask", request_id or new_id(), raster=raster, question=question, options=dict(options or {}))


def cancel(job_id: str, request_id: Optional[str] = None) -> Dict[str, Any]:
    return _message("cancel", request_id or new_id(), job_id=job_id)


def shutdown(request_id: Optional[str] = None) -> Dict[str, Any]:
    return _message("shutdown", request_id or new_id())


def pong(request_id: Optional[str], server_time: float) -> Dict[str, Any]:
    return _message("pong", request_id, server_time=server_time)


def health_reply(request_id: Optional[str], *, version: str, model: str, device: str, dtype: str,
                 random_weights: bool, queue_length: int, queue_size: int, running: bool,
                 uptime_s: float, worker: str = "", **extra: Any) -> Dict[str, Any]:
    return _message("health", request_id, protocol=PROTOCOL_VERSION, version=version, model=model,
                    device=device, dtype=dtype, random_weights=random_weights, queue_length=queue_length,
                    queue_size=queue_size, running=running, uptime_s=uptime_s, worker=worker, **extra)


def status_reply(request_id: Optional[str], *, running: Optional[Dict[str, Any]], queued: list,
                 queue_size: int, jobs_done: int, job: Optional[Dict[str, Any]] = None,
                 worker: str = "") -> Dict[str, Any]:
    msg = _message("status", request_id, running=running, queued=queued, queue_size=queue_size,
                   jobs_done=jobs_done, worker=worker)
    if job is not None:
        msg["job"] = job
    return msg


def accepted(request_id: Optional[str], job_id: str, position: int) -> Dict[str, Any]:
    return _message("accepted", request_id, job_id=job_id, position=position)


def progress(request_id: Optional[str], job_id: str, stage: str, level: Optional[int],
             fraction: float, message: str = "", overall: Optional[float] = None) -> Dict[str, Any]:
    """`fraction`: of the stage; `overall`: of the job (0..1, monotone), omitted when unknown."""
    extra = {} if overall is None else {"overall": float(overall)}
    return _message("progress", request_id, job_id=job_id, stage=stage, level=level,
                    fraction=float(fraction), message=message, **extra)


def result(request_id: Optional[str], job_id: str, document: Dict[str, Any]) -> Dict[str, Any]:
    """`document` is the engine's ask result (answer, trace, features, timings, counts, ...)."""
    return _message("result", request_id, job_id=job_id, result=document)


def error(request_id: Optional[str], code: str, message: str, job_id: Optional[str] = None) -> Dict[str, Any]:
    msg = _message("error", request_id, code=code, message=message)
    if job_id is not None:
        msg["job_id"] = job_id
    return msg


def cancelling(request_id: Optional[str], job_id: str, state: str) -> Dict[str, Any]:
    """Acknowledges a cancel; the job itself still ends with exactly one terminal message."""
    return _message("cancelling", request_id, job_id=job_id, state=state)


def bye(request_id: Optional[str]) -> Dict[str, Any]:
    return _message("bye", request_id)


# -- validators -------------------------------------------------------------------------------
def _field(msg: Dict[str, Any], name: str, types: tuple, rid: Optional[str], *, max_chars: int = 0,
           required: bool = True) -> Any:
    if name not in msg:
        if required:
            raise ProtocolError(BAD_REQUEST, f"missing field {name!r}", rid)
        return None
    value = msg[name]
    if isinstance(value, bool) and bool not in types:  # bool is an int in Python, not in the protocol
        raise ProtocolError(BAD_REQUEST, f"field {name!r} must not be a boolean", rid)
    if not isinstance(value, types):
        wanted = "/".join("null" if t is type(None) else t.__name__ for t in types)
        raise ProtocolError(BAD_REQUEST, f"field {name!r} must be {wanted}, not {type(value).__name__}", rid)
    if max_chars and isinstance(value, str) and len(value) > max_chars:
        raise ProtocolError(BAD_REQUEST, f"field {name!r} is longer than {max_chars} characters", rid)
    if isinstance(value, float) and not math.isfinite(value):
        raise ProtocolError(BAD_REQUEST, f"field {name!r} must be finite", rid)
    if float in types and isinstance(value, int) and not _is_finite(value):
        raise ProtocolError(BAD_REQUEST, f"field {name!r} is too large for a number", rid)
    return value


def _envelope(msg: Dict[str, Any], allowed: tuple) -> Optional[str]:
    """Checks v/type/id; returns the request id. The id is read first so errors can carry it."""
    rid = msg.get("id")
    if not (isinstance(rid, str) and 0 < len(rid) <= MAX_ID_CHARS):
        rid = None
        if "id" in msg and msg["id"] is not None:
            raise ProtocolError(BAD_REQUEST, f"field 'id' must be a string of 1..{MAX_ID_CHARS} characters")
    if msg.get("v") != PROTOCOL_VERSION or isinstance(msg.get("v"), bool):
        raise ProtocolError(UNSUPPORTED_VERSION,
                            f"protocol version {msg.get('v')!r} is not supported (this side speaks {PROTOCOL_VERSION})",
                            rid)
    kind = msg.get("type")
    if not isinstance(kind, str) or kind not in allowed:
        shown = kind if isinstance(kind, str) and len(kind) <= 40 else type(kind).__name__
        raise ProtocolError(UNKNOWN_TYPE, f"unknown message type {shown!r}; expected one of {', '.join(allowed)}", rid)
    return rid


def validate_ask_options(options: Any, rid: Optional[str] = None) -> Dict[str, Any]:
    """Type checks only (known names, JSON types); value ranges are the engine's job."""
    if not isinstance(options, dict):
        raise ProtocolError(BAD_REQUEST, f"field 'options' must be an object, not {type(options).__name__}", rid)
    unknown = sorted(k if len(k) <= 40 else k[:40] + "..." for k in options if k not in ASK_OPTION_TYPES)
    if unknown:
        raise ProtocolError(BAD_REQUEST, f"unknown option(s): {', '.join(unknown)}", rid)
    for name in options:
        _field(options, name, ASK_OPTION_TYPES[name], rid, max_chars=64)
    bands = options.get("bands")
    if bands is not None and not (len(bands) <= 16 and all(isinstance(b, int) and not isinstance(b, bool) for b in bands)):
        raise ProtocolError(BAD_REQUEST, "option 'bands' must be a short list of integers", rid)
    window = options.get("window")
    if window is not None and not (len(window) == 4 and all(_is_number(v) for v in window)):
        raise ProtocolError(BAD_REQUEST, "option 'window' must be [x0, y0, x1, y1], four finite numbers", rid)
    stretch = options.get("stretch")
    if stretch is not None and not (
        len(stretch) <= 16
        and all(isinstance(p, list) and len(p) == 2 and all(_is_number(v) for v in p) for p in stretch)
    ):
        raise ProtocolError(BAD_REQUEST, "option 'stretch' must be a short list of [low, high] number pairs", rid)
    return options


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and _is_finite(value)


def _is_finite(value: Any) -> bool:
    """math.isfinite, except that a JSON integer too large for a float (1e400 written out) is not
    finite instead of raising OverflowError (which would answer `internal`)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def validate_request(msg: Dict[str, Any]) -> Dict[str, Any]:
    """Raises ProtocolError unless `msg` is a well-formed request; returns it unchanged."""
    rid = _envelope(msg, REQUEST_TYPES)
    if rid is None:
        raise ProtocolError(BAD_REQUEST, "a request needs an 'id' string")
    kind = msg["type"]
    if kind == "ask":
        _field(msg, "raster", (str,), rid, max_chars=MAX_PATH_CHARS)
        _field(msg, "question", (str,), rid, max_chars=MAX_QUESTION_CHARS)
        if not msg["raster"] or not msg["question"].strip():
            raise ProtocolError(BAD_REQUEST, "'raster' and 'question' must not be empty", rid)
        validate_ask_options(msg.get("options", {}), rid)
    elif kind == "cancel":
        _field(msg, "job_id", (str,), rid, max_chars=MAX_ID_CHARS)
    elif kind == "status":
        _field(msg, "job_id", (str,), rid, max_chars=MAX_ID_CHARS, required=False)
    return msg


_REPLY_FIELDS: Dict[str, tuple] = {
    "pong": (("server_time", (int, float)),),
    "health": (("version", (str,)), ("model", (str,)), ("device", (str,)), ("queue_length", (int,)),
               ("queue_size", (int,)), ("uptime_s", (int, float))),
    "status": (("queued", (list,)), ("queue_size", (int,)), ("jobs_done", (int,))),
    "accepted": (("job_id", (str,)), ("position", (int,))),
    "progress": (("job_id", (str,)), ("stage", (str,)), ("level", (int, type(None))), ("fraction", (int, float))),
    "result": (("job_id", (str,)), ("result", (dict,))),
    "error": (("code", (str,)), ("message", (str,))),
    "cancelling": (("job_id", (str,)), ("state", (str,))),
    "bye": (),
}


def validate_reply(msg: Dict[str, Any]) -> Dict[str, Any]:
    """Raises ProtocolError unless `msg` is a well-formed reply (used by clients and tests)."""
    rid = _envelope(msg, REPLY_TYPES)
    for name, types in _REPLY_FIELDS[msg["type"]]:
        _field(msg, name, types, rid)
    if msg["type"] == "progress":  # optional: servers before `overall` do not send it
        _field(msg, "overall", (int, float), rid, required=False)
    return msg


def is_terminal(msg: Dict[str, Any]) -> bool:
    """True for the one message that ends a job (result, or error carrying the job's id)."""
    return msg.get("type") in TERMINAL_TYPES
