"""The `--json` convention shared by every subcommand."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Callable


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float (NaN, Infinity: not JSON) as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def to_json(document: Any) -> str:
    """Strict JSON text: never NaN or Infinity (they become null); a string that UTF-8 cannot carry
    (a surrogate-escaped file name) makes the whole text ASCII with \\u escapes."""
    try:
        text = json.dumps(document, ensure_ascii=False, allow_nan=False)
    except ValueError:
        text = json.dumps(json_safe(document), ensure_ascii=False, allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(json_safe(document), ensure_ascii=True, allow_nan=False)
    return text


def emit(args: argparse.Namespace, document: dict[str, Any], text: Callable[[dict[str, Any]], str]) -> None:
    """Print `document` as JSON under --json, else the human-readable `text(document)`."""
    if getattr(args, "json", False):
        sys.stdout.write(to_json(document) + "\n")
    else:
        out = text(document).rstrip("\n") + "\n"
        sys.stdout.write(out.encode("utf-8", "backslashreplace").decode("utf-8"))
    sys.stdout.flush()
