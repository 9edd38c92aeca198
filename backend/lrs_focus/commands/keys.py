"""`lrs-focus keys DIR`: CURVE certificates for a server and its allowed clients.

Writes (with zmq.auth.create_certificates; secrets 0600, folders 0700):

    DIR/server.key            the server's public key: give it to every client
    DIR/server.key_secret     the server's secret: stays with `serve --keys-dir DIR`
    DIR/clients/NAME.key      allow-list: the public key of each client the server admits
    DIR/NAME.key_secret       a client's certificate: give it (and server.key) to that client

Run it again with `--client NAME` to admit another client; the server key is kept. Existing
keys are never overwritten without `--force`. The server reads the allow-list at start-up.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from ._output import add_json_flag, emit

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def register(subparsers) -> None:
    p = subparsers.add_parser("keys", help="CURVE server and client certificates for `serve --keys-dir`")
    p.add_argument("dir", help="folder for the certificates (created if missing)")
    p.add_argument("--client", action="append", default=[], metavar="NAME",
                   help="a client to admit (repeatable; default: one named 'client' when the server key is new)")
    p.add_argument("--force", action="store_true", help="replace existing keys of the same names")
    add_json_flag(p)
    p.set_defaults(func=run)


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.name == "posix":
        os.chmod(path, 0o700)


def _certificate(folder: Path, name: str, force: bool) -> tuple[Path, Path]:
    """(public, secret) files of a new certificate NAME in `folder`."""
    import zmq.auth

    from ..errors import BadOptions

    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    if (public.exists() or secret.exists()) and not force:
        raise BadOptions(f"{secret} already exists (use --force to replace it)")
    for path in (public, secret):
        if path.is_symlink():
            path.unlink()
    umask = os.umask(0o077) if os.name == "posix" else None  # the secret is never readable by others
    try:
        made_public, made_secret = zmq.auth.create_certificates(str(folder), name)
    finally:
        if umask is not None:
            os.umask(umask)
    if os.name == "posix":
        os.chmod(made_public, 0o644)
        os.chmod(made_secret, 0o600)
    return Path(made_public), Path(made_secret)


def run(args) -> int:
    from ..errors import BadOptions
    from ..service import CLIENTS_DIR, SERVER_SECRET_FILE

    folder = Path(args.dir)
    names = list(args.client)
    bad = [n for n in names if not _NAME.match(n) or n == "server"]
    if bad:
        raise BadOptions(f"client names must be letters, digits, '.', '_' or '-' (and not 'server'): {bad}")
    _private_dir(folder)
    _private_dir(folder / CLIENTS_DIR)
    doc = {"dir": str(folder), "server": {}, "clients": []}
    server_secret = folder / SERVER_SECRET_FILE
    if not server_secret.exists() or args.force:
        public, secret = _certificate(folder, "server", args.force)
        doc["server"] = {"public": str(public), "secret": str(secret), "new": True}
        names = names or ["client"]
    else:
        doc["server"] = {"public": str(folder / "server.key"), "secret": str(server_secret), "new": False}
    for name in names:
        public, secret = _certificate(folder, name, args.force)
        allowed = folder / CLIENTS_DIR / public.name
        if allowed.is_symlink():
            allowed.unlink()
        shutil.copyfile(public, allowed)
        doc["clients"].append({"name": name, "public": str(allowed), "secret": str(secret)})
    emit(args, doc, _text)
    return 0


def _text(doc: dict) -> str:
    server = doc["server"]
    lines = [f"server key {'written' if server['new'] else 'kept'}: {server['secret']} "
             f"(stays on the server: lrs-focus serve --keys-dir {doc['dir']})"]
    for client in doc["clients"]:
        lines.append(f"client {client['name']!r} admitted ({client['public']}); give it {server['public']} and "
                     f"{client['secret']}: --server-key {server['public']} --client-key {client['secret']}")
    if not doc["clients"]:
        lines.append("no client added (use --client NAME)")
    return "\n".join(lines)
