"""`lrs-focus`: one entry point, one module per subcommand under `lrs_focus.commands`.

Each command module defines `register(subparsers)`, which adds its parser and sets
`func=run`; it imports heavy libraries only inside `run`, so `lrs-focus --help` is instant.
Every subcommand that prints results accepts `--json`: one JSON document on stdout, progress and
logs on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__
from .errors import LrsFocusError

COMMANDS = ("pyramid", "sample", "ask", "serve", "health", "keys", "bench", "eval", "score", "train")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lrs-focus",
        description="Ask questions of very large remote-sensing rasters and see where the model looked.",
    )
    parser.add_argument("--version", action="version", version=f"lrs-focus {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"lrs_focus.commands.{name}").register(sub)
    return parser


def _client_error_code(exc: Exception):
    """The code of an error of the shared ZeroMQ client (client.py imports nothing of the package
    but protocol, so its ServiceError is no LrsFocusError); None for any other exception."""
    client = sys.modules.get("lrs_focus.client")
    return exc.code if client is not None and isinstance(exc, client.ServiceError) else None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except LrsFocusError as exc:
        print(f"lrs-focus {args.command}: error [{exc.code}]: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file or folder the user named: a message, not a traceback (-v keeps it)
        logging.getLogger("lrs_focus").debug("traceback", exc_info=True)
        print(f"lrs-focus {args.command}: error [io_error]: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        code = _client_error_code(exc)
        if code is None:
            raise
        print(f"lrs-focus {args.command}: error [{code}]: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
