"""pyzmq, the plugin's one dependency outside QGIS: is it there, and how to install it on this platform.

The Windows (OSGeo4W) and macOS installers of QGIS do not ship pyzmq. Nothing at plugin load
imports zmq, so the plugin still loads without it; the dock then says what is missing and shows
the exact command for the Python QGIS runs (`sys.executable` is the QGIS program there, not a
Python, so the command is built from where QGIS is installed instead).
"""

from __future__ import annotations

import os
import sys
from typing import Optional


def zmq_problem() -> Optional[str]:
    """None when pyzmq imports; else the import error's text."""
    try:
        import zmq  # noqa: F401  # pyflakes: only whether it imports matters
    except ImportError as exc:  # also a broken binary wheel (DLL load failed)
        return str(exc) or type(exc).__name__
    return None


def install_command(platform: str = sys.platform, qgis_prefix: str = "", debian: Optional[bool] = None) -> str:
    """The shell command that installs pyzmq for the Python of this QGIS."""
    if platform.startswith("win"):
        return "python -m pip install pyzmq"  # run in the OSGeo4W Shell installed with QGIS
    if platform == "darwin":
        # QGIS.app/Contents/MacOS is QGIS's prefix; its Python lives in bin/ next to the program
        prefix = qgis_prefix or "/Applications/QGIS.app/Contents/MacOS"
        return f'"{os.path.join(prefix, "bin", "python3")}" -m pip install --user pyzmq'
    if debian if debian is not None else os.path.exists("/etc/debian_version"):
        return "sudo apt install python3-zmq"
    return f"{sys.executable or 'python3'} -m pip install --user pyzmq"


def where_to_run(platform: str = sys.platform) -> str:
    if platform.startswith("win"):
        return "Open the OSGeo4W Shell (Start menu, in the QGIS folder) and run:"
    if platform == "darwin":
        return "In the Terminal, run:"
    return "In a terminal, run:"


def missing_zmq_text(problem: str, platform: str = sys.platform, qgis_prefix: str = "") -> str:
    """The dock's explanation (plain text; the command on a line of its own)."""
    return (
        "pyzmq is missing from the Python of QGIS, so the plugin cannot talk to the backend "
        f"({problem}).\n{where_to_run(platform)}\n\n"
        f"{install_command(platform, qgis_prefix)}\n\nthen restart QGIS."
    )
