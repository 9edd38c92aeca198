"""The installable zip, metadata.txt, LICENSE, the protocol contract and bandit."""

from __future__ import annotations

import ast
import configparser
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
REQUIRED = ("name", "qgisMinimumVersion", "description", "about", "version", "author", "email", "repository")


def _metadata(text: str) -> dict:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str
    parser.read_string(text)
    return dict(parser["general"])


def test_zip_layout(plugin_zip):
    meta = _metadata((REPO / "metadata.txt").read_text(encoding="utf-8"))
    assert plugin_zip.name == f"lrs_focus_plugin-{meta['version']}.zip"
    with zipfile.ZipFile(plugin_zip) as zf:
        names = zf.namelist()
        assert all(n.startswith("lrs_focus_plugin/") for n in names)
        for required in ("__init__.py", "metadata.txt", "LICENSE", "protocol.py", "icon.svg",
                         "algorithms/ask_raster.py"):
            assert f"lrs_focus_plugin/{required}" in names
        assert "def classFactory(iface)" in zf.read("lrs_focus_plugin/__init__.py").decode()
        assert not [n for n in names if n.endswith((".pyc", ".qrc")) or "__pycache__" in n
                    or n.endswith("resources_rc.py") or "/ui_" in n]
        assert zf.read("lrs_focus_plugin/metadata.txt") == (REPO / "metadata.txt").read_bytes()


def test_zip_protocol_is_the_backend_protocol(plugin_zip):
    """Contract: the plugin ships exactly the backend's message shapes."""
    link = REPO / "qgis_plugin" / "protocol.py"
    assert link.is_symlink() and os.readlink(link) == "../backend/lrs_focus/protocol.py"
    with zipfile.ZipFile(plugin_zip) as zf:
        shipped = zf.read("lrs_focus_plugin/protocol.py")
    assert shipped == (REPO / "backend" / "lrs_focus" / "protocol.py").read_bytes()


#: One source for the CLI and the plugin, like protocol.py: file -> (third-party roots it may import,
#: modules of its own package it may import relatively; the plugin ships protocol.py beside it).
SHARED = {
    "heatmap.py": ({"numpy", "osgeo"}, set()),
    "result_files.py": ({"numpy", "osgeo"}, set()),
    "client.py": ({"zmq"}, {"protocol"}),  # the one ZeroMQ client of `lrs-focus` and the plugin
}


@pytest.mark.parametrize("name", sorted(SHARED))
def test_zip_ships_the_backends_shared_modules(plugin_zip, name):
    link = REPO / "qgis_plugin" / name
    assert link.is_symlink() and os.readlink(link) == f"../backend/lrs_focus/{name}"
    with zipfile.ZipFile(plugin_zip) as zf:
        assert zf.read(f"lrs_focus_plugin/{name}") == (REPO / "backend" / "lrs_focus" / name).read_bytes()


@pytest.mark.parametrize("name", sorted(SHARED))
def test_shared_modules_need_only_what_qgis_python_has(name):
    """QGIS's Python has the standard library, numpy, GDAL's osgeo and (with python3-zmq) pyzmq;
    nothing else may be imported, and of its own package only the files the plugin ships too."""
    third_party, siblings = SHARED[name]
    allowed = set(sys.stdlib_module_names) | third_party | {"__future__"}
    tree = ast.parse((REPO / "backend" / "lrs_focus" / name).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            names = {node.module} if node.module else {a.name for a in node.names}
            assert node.level == 1 and names <= siblings, f"{name}: relative import of {names}"
            assert all((REPO / "qgis_plugin" / f"{n}.py").exists() for n in names), names
            continue
        elif isinstance(node, ast.ImportFrom):
            roots = [(node.module or "").split(".")[0]]
        else:
            continue
        assert set(roots) <= allowed, f"{name} imports {roots}"
    assert "UseExceptions" not in (REPO / "backend" / "lrs_focus" / name).read_text()  # global GDAL state of QGIS


def test_the_plugin_and_the_cli_import_the_same_client():
    """Contract: `lrs-focus ask/health --endpoint` and the plugin run the same client code."""
    import lrs_focus.client
    from lrs_focus.commands import ask, health  # noqa: F401  (they import lrs_focus.client in run())

    assert Path(lrs_focus.client.__file__).resolve() == (REPO / "qgis_plugin" / "client.py").resolve()
    for command in ("ask.py", "health.py"):
        text = (REPO / "backend" / "lrs_focus" / "commands" / command).read_text(encoding="utf-8")
        assert "from ..client import" in text, command
    for module in ("ask_task.py", "remote.py", "algorithms/ask_raster.py"):
        assert "client import" in (REPO / "qgis_plugin" / module).read_text(encoding="utf-8"), module


def test_plugin_refuses_exactly_the_formats_the_backend_does_not_serve():
    """raster_check.SERVED_DRIVERS is a copy of the backend's access policy (the plugin may not import it)."""
    from lrs_focus.access import DEFAULT_DRIVERS

    tree = ast.parse((REPO / "qgis_plugin" / "raster_check.py").read_text(encoding="utf-8"))
    served = next(node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                  and any(getattr(t, "id", "") == "SERVED_DRIVERS" for t in node.targets))
    assert set(ast.literal_eval(served.args[0])) == set(DEFAULT_DRIVERS)


def test_metadata_fields():
    meta = _metadata((REPO / "metadata.txt").read_text(encoding="utf-8"))
    assert all(meta.get(k, "").strip() for k in REQUIRED)
    assert meta["qgisMinimumVersion"] == "3.22" and meta["qgisMaximumVersion"] == "4.99"
    assert meta["category"] == "Raster" and meta["hasProcessingProvider"] == "yes"
    assert meta["icon"] == "icon.svg" and (REPO / "qgis_plugin" / "icon.svg").is_file()
    assert "supportsQt6" not in meta  # deprecated flag, no longer recognised by plugins.qgis.org


def test_backend_and_plugin_versions_agree():
    """The dock shows the backend's version next to the plugin's: one release, one number."""
    meta = _metadata((REPO / "metadata.txt").read_text(encoding="utf-8"))
    init = (REPO / "backend" / "lrs_focus" / "__init__.py").read_text(encoding="utf-8")
    version = [n.value.value for n in ast.parse(init).body
               if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "__version__"]
    assert version == [meta["version"]]
    assert meta["changelog"].split()[0] == meta["version"]


def test_license_is_gpl2_text():
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert text.lstrip().startswith("GNU GENERAL PUBLIC LICENSE") and "Version 2, June 1991" in text
    assert "TERMS AND CONDITIONS FOR COPYING, DISTRIBUTION AND MODIFICATION" in text
    debian = Path("/usr/share/common-licenses/GPL-2")
    if debian.is_file():
        assert text == debian.read_text(encoding="utf-8")


def test_plugin_code_rules():
    """No torch/backend/direct PyQt imports, no pickle, no exec_(), no shell (AST, not grep)."""
    banned_modules = ("torch", "lrs_focus", "PyQt5", "PyQt6", "pickle", "marshal")
    for path in (REPO / "qgis_plugin").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
            else:
                names = []
            for name in names:
                assert name.split(".")[0] not in banned_modules, f"{path.name} imports {name}"
            if isinstance(node, ast.Attribute):
                assert node.attr not in ("send_pyobj", "recv_pyobj", "exec_"), f"{path.name} uses {node.attr}"
            if isinstance(node, ast.keyword) and node.arg == "shell":
                assert isinstance(node.value, ast.Constant) and node.value.value is False, path.name
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("eval", "exec"), f"{path.name} calls {node.func.id}"


def test_bandit_medium_clean():
    bandit = shutil.which("bandit", path=str(Path(sys.executable).parent)) or shutil.which("bandit")
    if bandit is None:
        pytest.skip("bandit is not installed (pip install -e '.[test]')")
    done = subprocess.run([bandit, "-r", str(REPO / "qgis_plugin"), "-ll", "-q"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
