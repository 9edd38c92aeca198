"""The answer stage on an OpenAI-compatible server (vLLM, SGLang): one streamed chat request.

The focus stage needs the model's attention and stays in transformers; the answer (thumbnail plus
the kept tiles, a prefill of a few thousand tokens, then the generation) is what inference servers
batch well. The request is the message the local path renders through the checkpoint's chat
template: the thumbnail, then each kept tile after its caption, in raster order, then the question,
each image a PNG at the pixel size the local image processor encodes (the thumbnail resized exactly
as that processor resizes it, so the server's processor has nothing left to resize and makes the
same patches). Greedy (temperature 0); the server applies the checkpoint's generation config
(repetition penalty) as `generate` does. A server running the same weights then answers the same
ids: the tests check the prompt ids the server reports against ours, and the answer.

Every image carries a media `uuid` built from the raster's identity (path, sizes, mtimes), the
view's bands, stretch, window and pixel path, the pyramid's geometry, and the tile's level, row and
column, so a server that caches media by id (vLLM's `uuid`) reuses a tile across follow-up questions.

httpx, asynchronously: a cancel must reach a request that is blocked waiting for its first token
(a long prefill on a busy server), and cancelling an asyncio task closes httpx's connection, which
vLLM takes as an abort of the request. The stream is OpenAI's server-sent events; its `data:` lines
are the only thing read from it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from .errors import AnswerServerError, AnswerServerTimeout, AnswerServerUnreachable, BadOptions, Cancelled

DEFAULT_TIMEOUT_S = 300.0  # silence from the server (no byte of the stream) before giving up
CONNECT_TIMEOUT_S = 10.0
POLL_S = 0.1  # how often a cancel flag is read while the request runs
logging.getLogger("httpx").setLevel(logging.WARNING)  # not a log line per request on the CLI's stderr


@dataclass
class AnswerServer:
    """Where answers go: an OpenAI-compatible base URL (ending in /v1), the served model's name
    (None: the only one the server lists), the API key (read once from a file, never shown)."""

    endpoint: str
    model: Optional[str] = None
    api_key: Optional[str] = field(default=None, repr=False)
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        parts = urlsplit(self.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadOptions(f"--answer-endpoint must be an http(s) URL such as http://127.0.0.1:8000/v1, "
                             f"not {self.public_endpoint()!r}")
        self.endpoint = self.endpoint.rstrip("/")
        if not (self.timeout_s > 0 and np.isfinite(self.timeout_s)):
            raise BadOptions(f"--answer-timeout must be a positive number of seconds, not {self.timeout_s!r}")

    @classmethod
    def from_options(cls, endpoint: str | None, model: str | None = None, key_file: str | None = None,
                     timeout_s: float | None = None) -> "AnswerServer | None":
        """From the command-line options; None without an endpoint. The key file is read here, once."""
        if not endpoint:
            if model or key_file:
                raise BadOptions("--answer-model and --answer-api-key-file need --answer-endpoint")
            return None
        key = None
        if key_file:
            try:
                key = Path(key_file).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise BadOptions(f"--answer-api-key-file {key_file}: cannot read it ({type(exc).__name__})") from None
            if not key:
                raise BadOptions(f"--answer-api-key-file {key_file} is empty")
        return cls(endpoint, model, key, DEFAULT_TIMEOUT_S if timeout_s is None else float(timeout_s))

    def public_endpoint(self) -> str:
        """The URL without user, password, query or fragment: what traces and messages show."""
        parts = urlsplit(self.endpoint)
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    def describe(self) -> dict[str, Any]:
        return {"endpoint": self.public_endpoint(), "model": self.model}

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


@dataclass
class RemoteReply:
    text: str
    token_ids: list[int]  # generated ids (vLLM's `return_token_ids`; empty where a server does not send them)
    prompt_token_ids: list[int]  # as the server tokenised the prompt (idem)
    prompt_tokens: int | None  # the server's usage count
    completion_tokens: int | None
    finish_reason: str | None
    seconds: float


# -- the request ---------------------------------------------------------------------------------
def view_digest(view: Any, geometry_fields: Sequence[Any]) -> str:
    """What decides a tile's pixels besides its level, row and column, as a short hex digest."""
    facts = [list(view.identity), list(view.bands), view.stretch, view.window, view.pixels, list(geometry_fields)]
    return hashlib.sha256(json.dumps(facts, default=str).encode("utf-8")).hexdigest()[:32]


def media_uuid(digest: str | None, level: int | str, row: int, col: int) -> str | None:
    return None if digest is None else f"lrs-{digest}-{level}-{int(row)}-{int(col)}"


def png_data_url(image: np.ndarray) -> str:
    """(h, w, 3) uint8 -> a lossless PNG data URL (the server decodes the very pixels)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def resize_like_processor(image: np.ndarray, grid: tuple[int, int, int], processor: Any) -> np.ndarray:
    """The image at its patch grid's pixel size, resized as the local (PIL) image processor resizes
    it: PIL, the processor's resample filter, uint8. Unchanged where it is already that size."""
    from PIL import Image

    patch = int(processor.patch_size)
    height, width = int(grid[1]) * patch, int(grid[2]) * patch
    if image.shape[:2] == (height, width):
        return image
    resample = getattr(processor, "resample", None)
    resample = Image.Resampling.BICUBIC if resample is None else int(resample)
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((width, height), resample=resample))


def chat_content(images: Sequence[tuple[str | None, np.ndarray, str | None]], question: str) -> list[dict[str, Any]]:
    """[caption?, image]... then the question: the order `QwenVLFocusModel.build_prompt` renders."""
    content: list[dict[str, Any]] = []
    for caption, pixels, uuid in images:
        if caption:
            content.append({"type": "text", "text": caption})
        part: dict[str, Any] = {"type": "image_url", "image_url": {"url": png_data_url(pixels)}}
        if uuid:
            part["uuid"] = uuid
        content.append(part)
    content.append({"type": "text", "text": question})
    return content


def chat_request(model: str, content: list[dict[str, Any]], max_new_tokens: int) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": int(max_new_tokens),
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
            "return_token_ids": True}  # vLLM: the ids, to compare with the local path's


# -- the exchange --------------------------------------------------------------------------------
def _server_message(status: int, body: bytes) -> str:
    """The server's own words from an error body (OpenAI's {"error": {"message"}}, vLLM's and SGLang's
    {"message"}, or the text)."""
    text = body.decode("utf-8", "replace").strip()
    try:
        doc = json.loads(text)
    except ValueError:
        return f"HTTP {status}: {text[:500]}"
    err = doc.get("error", doc) if isinstance(doc, dict) else doc
    message = err.get("message", err) if isinstance(err, dict) else err
    return f"HTTP {status}: {message}"


def _transport_error(server: AnswerServer, exc: Exception) -> Exception:
    import httpx

    where = server.public_endpoint()
    if isinstance(exc, httpx.ConnectTimeout):
        return AnswerServerUnreachable(f"answer server {where}: no connection within {CONNECT_TIMEOUT_S:g} s")
    if isinstance(exc, httpx.ConnectError):
        return AnswerServerUnreachable(f"answer server {where} is unreachable: {exc}")
    if isinstance(exc, httpx.TimeoutException):
        return AnswerServerTimeout(f"answer server {where} sent nothing for {server.timeout_s:g} s "
                                   f"({type(exc).__name__}); raise --answer-timeout for long prefills on a busy server")
    return AnswerServerError(f"answer server {where}: the connection failed mid-answer ({type(exc).__name__}: {exc})")


async def _models(client: Any, server: AnswerServer) -> list[str]:
    resp = await client.get(f"{server.endpoint}/models", headers=server.headers())
    if resp.status_code != 200:
        raise AnswerServerError(f"answer server {server.public_endpoint()}: listing models failed: "
                                f"{_server_message(resp.status_code, resp.content)}")
    return [str(m.get("id")) for m in resp.json().get("data", [])]


async def _stream_chat(client: Any, server: AnswerServer, body: dict[str, Any]) -> RemoteReply:
    t0 = time.perf_counter()
    text: list[str] = []
    ids: list[int] = []
    prompt_ids: list[int] = []
    usage: dict[str, Any] = {}
    finish = None
    async with client.stream("POST", f"{server.endpoint}/chat/completions", json=body,
                             headers=server.headers()) as resp:
        if resp.status_code != 200:
            raise AnswerServerError(f"answer server {server.public_endpoint()} refused the answer: "
                                    f"{_server_message(resp.status_code, await resp.aread())}")
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:  # an error after the stream began (vLLM sends it as an event)
                raise AnswerServerError(f"answer server {server.public_endpoint()} failed mid-answer: "
                                        f"{_server_message(200, json.dumps(chunk).encode())}")
            prompt_ids += chunk.get("prompt_token_ids") or []
            for choice in chunk.get("choices") or []:
                text.append((choice.get("delta") or {}).get("content") or "")
                ids += choice.get("token_ids") or []
                finish = choice.get("finish_reason") or finish
            usage = chunk.get("usage") or usage
    return RemoteReply("".join(text).strip(), ids, prompt_ids, usage.get("prompt_tokens"),
                       usage.get("completion_tokens"), finish, time.perf_counter() - t0)


async def _answer(server: AnswerServer, content: list[dict[str, Any]], max_new_tokens: int,
                  should_stop: Callable[[], bool] | None) -> RemoteReply:
    import httpx

    timeout = httpx.Timeout(server.timeout_s, connect=CONNECT_TIMEOUT_S)
    async with httpx.AsyncClient(timeout=timeout) as client:  # HTTP(S)_PROXY, NO_PROXY, SSL_CERT_FILE apply

        async def exchange() -> RemoteReply:
            if server.model is None:
                models = await _models(client, server)
                if len(models) != 1:
                    raise BadOptions(f"answer server {server.public_endpoint()} serves {len(models)} models "
                                     f"({', '.join(models) or 'none'}): name one with --answer-model")
                server.model = models[0]
            return await _stream_chat(client, server, chat_request(server.model, content, max_new_tokens))

        task = asyncio.ensure_future(exchange())
        while True:
            done, _ = await asyncio.wait({task}, timeout=POLL_S)
            if done:
                try:
                    return task.result()
                except httpx.HTTPError as exc:
                    raise _transport_error(server, exc) from None
                except (ValueError, KeyError, TypeError, AttributeError) as exc:  # not the OpenAI format
                    raise AnswerServerError(f"answer server {server.public_endpoint()} sent a reply that is not "
                                            f"an OpenAI chat completion stream ({type(exc).__name__}: {exc})") from None
            if should_stop is not None and should_stop():
                task.cancel()  # closes the connection: the server aborts the request
                await asyncio.gather(task, return_exceptions=True)
                raise Cancelled("cancelled during the remote answer")


def answer_remote(server: AnswerServer, content: list[dict[str, Any]], max_new_tokens: int,
                  should_stop: Callable[[], bool] | None = None) -> RemoteReply:
    """One chat completion, streamed; a cancel (`should_stop`) is honoured within POLL_S."""
    return asyncio.run(_answer(server, content, max_new_tokens, should_stop))
