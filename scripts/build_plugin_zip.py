#!/usr/bin/env python3
"""Build the installable QGIS plugin zip: dist/lrs_focus_plugin-<version>.zip.

Runs with any plain python3 (stdlib only). The zip holds one folder, `lrs_focus_plugin/`, with
the package from qgis_plugin/, the top-level metadata.txt (the source of truth) and LICENSE.
Symlinks are stored as the content they point to: qgis_plugin/protocol.py is a link to the
backend's protocol.py in git, and the zip must carry a real copy of it. Entries get a fixed
timestamp, so the same sources give the same zip.

    python3 scripts/build_plugin_zip.py [--out-dir dist]
"""

from __future__ import annotations

import argparse
import configparser
import re
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "qgis_plugin"
PLUGIN_DIR = "lrs_focus_plugin"
REQUIRED = ("name", "qgisMinimumVersion", "description", "about", "version", "author", "email", "repository")
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache"}
SKIP_SUFFIXES = {".pyc", ".pyo", ".orig", ".rej", ".swp", ".qrc"}
FIXED_TIME = (2024, 1, 1, 0, 0, 0)


def read_metadata(path: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # keys are case-sensitive (qgisMinimumVersion)
    parser.read(path, encoding="utf-8")
    meta = dict(parser["general"])
    missing = [k for k in REQUIRED if not meta.get(k, "").strip()]
    if missing:
        raise SystemExit(f"metadata.txt lacks required field(s): {', '.join(missing)}")
    for key in ("description", "about", "changelog"):
        if re.search(r"<[a-zA-Z/][^>]*>", meta.get(key, "")):
            raise SystemExit(f"metadata.txt: no HTML allowed in {key}")
    return meta


def plugin_files(source: Path) -> list[Path]:
    files = []
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if any(part in SKIP_DIRS or part.startswith(".") for part in rel.parts):
            continue
        if path.is_dir() or path.suffix in SKIP_SUFFIXES:
            continue
        if path.name == "resources_rc.py" or re.match(r"ui_.*\.py$", path.name):
            raise SystemExit(f"{rel}: compiled Qt resources/forms must not be shipped")
        files.append(path)
    return files


def _add(zf: zipfile.ZipFile, arcname: str, data: bytes) -> None:
    info = zipfile.ZipInfo(arcname, FIXED_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)


def build(out_dir: Path) -> Path:
    if not re.fullmatch(r"[A-Za-z_-][A-Za-z0-9_-]*", PLUGIN_DIR):
        raise SystemExit(f"invalid plugin folder name {PLUGIN_DIR!r}")
    meta = read_metadata(ROOT / "metadata.txt")
    if not (SOURCE / "__init__.py").read_text(encoding="utf-8").count("def classFactory"):
        raise SystemExit("qgis_plugin/__init__.py must define classFactory(iface)")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{PLUGIN_DIR}-{meta['version']}.zip"
    tmp = target.with_suffix(".zip.part")
    with zipfile.ZipFile(tmp, "w") as zf:
        for path in plugin_files(SOURCE):
            # read_bytes follows symlinks: the zip gets protocol.py's content, not a link
            _add(zf, f"{PLUGIN_DIR}/{path.relative_to(SOURCE).as_posix()}", path.read_bytes())
        _add(zf, f"{PLUGIN_DIR}/metadata.txt", (ROOT / "metadata.txt").read_bytes())
        _add(zf, f"{PLUGIN_DIR}/LICENSE", (ROOT / "LICENSE").read_bytes())
    tmp.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "dist", help="where to write the zip (default dist/)")
    args = parser.parse_args(argv)
    path = build(args.out_dir)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
