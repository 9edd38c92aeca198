"""The `--json` convention shared by every subcommand."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def emit(args: argparse.Namespace, document: dict[str, Any], text: Callable[[dict[str, Any]], str]) -> None:
    """Print `document` as JSON under --json, else the human-readable `text(document)`."""
    if getattr(args, "json", False):
        json.dump(document, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(text(document).rstrip("\n") + "\n")
    sys.stdout.flush()
