"""What a reader prints reaches the server's log bounded and escaped, and what a reader may read of
the interpreter's installation (the standard library, not the rest of `sys.base_prefix`)."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from lrs_focus.readers import pool as pool_module
from lrs_focus.readers.confine import landlock_abi
from lrs_focus.readers.pool import ReaderPool, relay_output

from .conftest import small_geotiff

ESC = "\x1b"


def test_relayed_output_is_escaped_cut_and_rate_limited(caplog):
    flood = b"".join(f"Warning 1: {ESC}[31mred{ESC}[0m line {i}\n".encode() for i in range(500))
    endless = b"x" * 5_000_000  # a newline-free flood: read in bounded pieces, logged once, cut
    stream = io.BytesIO(b"\xff\xfe invalid utf-8 \xed\xa0\x80\n" + endless + b"\n" + flood)
    with caplog.at_level(logging.WARNING, logger=pool_module.log.name):
        relay_output(stream, 4242)
    lines = [r.getMessage() for r in caplog.records]
    assert all(m.startswith("reader 4242: ") for m in lines)
    assert len(lines) == pool_module.OUTPUT_LINES_PER_MINUTE + 1  # the rest counted on one line
    assert lines[-1] == f"reader 4242: {500 + 2 - pool_module.OUTPUT_LINES_PER_MINUTE} more lines of output were left out"
    assert not any(ESC in m for m in lines) and any("\\x1b[31mred" in m for m in lines)
    assert "\\xff\\xfe invalid utf-8" in lines[0]
    assert lines[1].endswith(" [cut]") and len(lines[1]) < pool_module.OUTPUT_LINE_CHARS + 40
    assert stream.closed  # read to its end, then closed


@pytest.mark.skipif(landlock_abi() < 1, reason="needs Landlock")
def test_a_readers_gdal_output_goes_to_the_log_escaped_not_to_the_servers_stderr(tmp_path, monkeypatch,
                                                                                 caplog, capfd):
    """A raster's name (or metadata GDAL quotes) may carry a terminal's escape sequences: with
    CPL_DEBUG on, GDAL prints the name of every file it opens. The reader's output must reach the
    server's log as `reader PID: ...` lines, escaped, and nothing of it the server's own stderr."""
    root = tmp_path / "root"
    root.mkdir()
    name = f"e{ESC}]0;pwned{ESC}\\{ESC}[31mred.tif"
    small_geotiff(root / name)
    monkeypatch.setenv("CPL_DEBUG", "ON")
    readers = ReaderPool(size=1, roots=[str(root)], no_policy=True, timeout_s=20).start()
    try:
        with caplog.at_level(logging.WARNING, logger=pool_module.log.name):
            src = readers.open(str(root / name))
            assert src.read_rgb((0, 0, 8, 8), (8, 8)).shape == (8, 8, 3)
            src.close()
            readers.close()  # the reader ends: its output is all relayed
            readers = None
    finally:
        if readers is not None:
            readers.close()
    relayed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("reader ")]
    assert any("GDALOpen" in m and "\\x1b[31mred.tif" in m for m in relayed), relayed[:5]
    assert not any(ESC in m for m in relayed)
    assert ESC not in capfd.readouterr().err


@pytest.mark.skipif(landlock_abi() < 1, reason="needs Landlock")
def test_readers_get_the_standard_library_not_the_rest_of_the_interpreters_prefix(tmp_path):
    """With Debian's Python, sys.base_prefix is /usr: granting it gave readers all of /usr/bin,
    /usr/share, /usr/local. A confined reader still imports stdlib modules (C extensions included)
    it had not loaded, and cannot read the interpreter's own binary or headers."""
    root = tmp_path / "root"
    root.mkdir()
    interpreter = Path(sys.executable).resolve()
    include = Path(sysconfig.get_paths()["include"])
    venv_bin = Path(sys.prefix) / "bin" / "python"  # the venv: its site-packages, not the rest
    outside = [p for p in (interpreter, include / "Python.h", venv_bin) if p.exists()]
    assert outside, "nothing of the interpreter's prefix to test with"
    code = ("import os, sys\n"
            "os.chdir(os.environ['ROOT'])\n"  # a working directory `python -m` would put on sys.path
            "from lrs_focus.readers import confine, child\n"
            "assert os.getcwd() not in child.system_paths(), 'the working directory is not granted'\n"
            "confine.landlock([os.environ['ROOT']], child.system_paths())\n"
            "import decimal, csv, _ctypes, sqlite3\n"  # stdlib .py and lib-dynload .so, imported confined
            "print('imported')\n"
            "for path in sys.argv[1:]:\n"
            "    try: open(path, 'rb').read(4); print('READ', path)\n"
            "    except PermissionError: print('denied')\n")
    done = subprocess.run([sys.executable, "-c", code, *map(str, outside)], capture_output=True, text=True,
                          timeout=60, env={**__import__("os").environ, "ROOT": str(root)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["imported"] + ["denied"] * len(outside)
