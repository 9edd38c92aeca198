"""Model text made safe to show: no U+FFFD, no control characters, no runs of blank space.

A small or random-weight model can emit broken UTF-8 (decoded as U+FFFD) and control
characters; shown raw they draw as boxes or reorder the text (bidi controls). The GeoPackage
keeps the answer as the backend sent it; the dock, the message bar, the history and the
Processing log show this cleaned form.
"""

from __future__ import annotations

import re
import unicodedata

_SPACES = re.compile(r"[ \t]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def clean_text(text: object) -> str:
    out = []
    for ch in str(text or "").replace("\r\n", "\n").replace("\r", "\n"):
        if ch in "\n\t":
            out.append(ch)
        elif ch == "\ufffd" or unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            out.append(" ")
        else:
            out.append(ch)
    lines = [_SPACES.sub(" ", line).strip() for line in "".join(out).split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()
