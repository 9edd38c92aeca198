"""Who may reach the service, and where it listens: endpoints, CURVE keys, binding.

Owns the loopback tests, the key loading of the zmq.auth layout, `check_security` (the refusals
of an unsafe configuration), `secure_socket` (CURVE + the allow-list on a socket), `bind` (which
also refuses an `ipc://` path in use or not a socket) and TCP_USER_TIMEOUT for stalled peers.
May call: limits, pyzmq. Knows nothing of jobs or requests.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import stat
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .limits import CLIENTS_DIR, SERVER_SECRET_FILE, ServiceConfigError

log = logging.getLogger("lrs_focus.service")


def is_loopback_endpoint(endpoint: str) -> bool:
    """ipc:// and inproc:// are local by nature; tcp:// only on 127.0.0.0/8, ::1 or localhost."""
    parts = urlsplit(endpoint)
    if parts.scheme in ("ipc", "inproc"):
        return True
    if parts.scheme != "tcp":
        return False
    host = parts.netloc.rsplit(":", 1)[0].strip("[]")
    return is_loopback_address(host)


def is_loopback_address(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", interface names, host names: treat as public


def load_server_keys(keys_dir: str | os.PathLike) -> tuple[bytes, bytes]:
    """(public, secret) from `server.key_secret` (made by `lrs-focus keys` / zmq.auth)."""
    path = Path(keys_dir) / SERVER_SECRET_FILE
    if not path.is_file():
        raise ServiceConfigError(f"no CURVE server key at {path} (make one with `lrs-focus keys {keys_dir}`)")
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ServiceConfigError(f"{path}: not a CURVE certificate ({exc})") from None
    if not secret:
        raise ServiceConfigError(f"{path} holds no secret key")
    if os.name == "posix" and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s is readable by other users: chmod 600 it", path)
    return public, secret


def client_keys(keys_dir: str | os.PathLike) -> list[Path]:
    """The allow-list: public keys in DIR/clients/*.key."""
    folder = Path(keys_dir) / CLIENTS_DIR
    return sorted(folder.glob("*.key")) if folder.is_dir() else []


def check_ipc_path(endpoint: str) -> None:
    """Refuse an `ipc://` path that ZeroMQ would unlink: a live socket (another server's: binding
    would take it over silently) or anything that is not a socket (a regular file would be deleted).
    A stale socket (nobody accepts on it) is left for ZeroMQ to replace. Abstract (`ipc://@name`)
    and wildcard (`ipc://*`) endpoints have no path. The check and the bind are not atomic: it
    guards against mistakes and other users' files, not against a racing process of our own user."""
    parts = urlsplit(endpoint)
    if parts.scheme != "ipc":
        return
    path = endpoint[len("ipc://"):]
    if not path or path == "*" or path.startswith("@"):
        return
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ServiceConfigError(f"cannot listen on {endpoint}: {exc.strerror}") from None
    if not stat.S_ISSOCK(info.st_mode):
        raise ServiceConfigError(f"cannot listen on {endpoint}: {path} exists and is not a socket (ZeroMQ would "
                                 "delete it); remove it or choose another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return  # stale: no one listens there any more
        raise ServiceConfigError(f"cannot listen on {endpoint}: {exc.strerror or exc}") from None
    finally:
        probe.close()
    raise ServiceConfigError(f"cannot listen on {endpoint}: Address already in use (another process "
                             "accepts connections on that socket)")


def bind(sock: "zmq.Socket", endpoint: str) -> None:
    """Bind, or say in words why not (a port in use, a bad address), instead of a zmq traceback."""
    check_ipc_path(endpoint)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        raise ServiceConfigError(f"cannot listen on {endpoint}: {exc.strerror}") from exc


def check_endpoint_free(endpoint: str) -> None:
    """Bind and release `endpoint` once, so that `serve` fails before loading a 7B model, not after."""
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.linger = 0
    try:
        bind(sock, endpoint)
    finally:
        sock.close()


def check_security(endpoint: str, keys_dir: Optional[str], force_curve: bool = False,
                   roots: tuple = (), check_roots: bool = False) -> None:
    """Raises ServiceConfigError unless the configuration is safe for `endpoint`.

    Off loopback: CURVE keys with a non-empty allow-list of client keys (the server's public key
    alone must not be enough to get in) and, when `check_roots`, allowed raster roots.
    """
    public = not is_loopback_endpoint(endpoint)
    if keys_dir is None:
        if force_curve:
            raise ServiceConfigError("CURVE was required but no keys directory was given")
        if public:
            raise ServiceConfigError(
                f"refusing to listen on {endpoint} without CURVE keys: pass --keys-dir (make them with "
                "`lrs-focus keys DIR`, see docs/service.md) or bind 127.0.0.1")
    else:
        load_server_keys(keys_dir)
        if public and not client_keys(keys_dir):
            raise ServiceConfigError(
                f"refusing to listen on {endpoint} without an allow-list of client keys: put the clients' public "
                f"keys in {Path(keys_dir) / CLIENTS_DIR}/*.key (`lrs-focus keys` makes one)")
    if public and check_roots and not roots:
        raise ServiceConfigError(f"refusing to listen on {endpoint} without --allow-root: off loopback the "
                                 "rasters clients may read must be confined to folders")


def abort_stalled_peers(sock: zmq.Socket, timeout_s: float) -> None:
    """TCP_USER_TIMEOUT (ZMQ_TCP_MAXRT; Linux, Windows): the kernel aborts a connection whose
    sent data stays unacknowledged for `timeout_s`, which includes a peer that stopped reading
    (zero window). ZeroMQ then frees everything queued for it and later sends to it fail, which
    cancels its jobs. A client that reads, even slowly, is never affected; its own I/O thread
    drains the socket whatever the application does."""
    try:
        sock.setsockopt(zmq.TCP_MAXRT, max(1, int(timeout_s * 1000)))
    except (zmq.ZMQError, AttributeError):  # pragma: no cover - platform without it
        log.warning("TCP_MAXRT is not supported here: a peer that stops reading keeps its replies queued")


def secure_socket(ctx: zmq.Context, sock: zmq.Socket, endpoint: str, keys_dir: Optional[str],
                  force_curve: bool) -> Optional[ThreadAuthenticator]:
    """Applies CURVE (or refuses a public endpoint without it); returns the authenticator to stop."""
    check_security(endpoint, keys_dir, force_curve)
    if keys_dir is None:
        return None
    public, secret = load_server_keys(keys_dir)
    auth = ThreadAuthenticator(ctx, log=logging.getLogger("lrs_focus.service.auth"))
    auth.start()
    if client_keys(keys_dir):
        auth.configure_curve(domain="*", location=str(Path(keys_dir) / CLIENTS_DIR))
    else:  # loopback only (check_security): any client that knows the server's public key
        log.warning("CURVE without an allow-list of client keys: any client holding server.key may connect")
        auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    return auth
