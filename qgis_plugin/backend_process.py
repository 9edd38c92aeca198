"""Start a local backend from the command in the settings, as an argument list.

The command is split with `shlex` and run directly (never through a shell: a setting must not
be able to inject shell syntax), its output goes to a log file in a private per-user folder
(`private_log_dir`: 0700, owned by the user; never a fixed name in the shared temp folder, and
the log is opened without following a symlink), and the plugin stops only the process it
started itself, when QGIS unloads the plugin. Readiness is not assumed: the ask task
health-checks the endpoint with the longer start timeout.
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess  # nosec B404: argument-list Popen of a user-configured local command, no shell
from typing import Optional

LOG_NAME = "backend.log"


def private_log_dir() -> str:
    """The user's own cache folder for the plugin ($XDG_CACHE_HOME or ~/.cache, %LOCALAPPDATA%)."""
    if os.name == "nt":
        base = os.environ.get("LOCALAPPDATA") or os.path.join(os.path.expanduser("~"), "AppData", "Local")
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lrs_focus")


def _ensure_private_dir(folder: str) -> None:
    """Creates `folder` 0700; refuses one that is a symlink or that another user owns."""
    os.makedirs(folder, mode=0o700, exist_ok=True)
    info = os.lstat(folder)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise OSError(f"{folder} is not a plain folder (a symlink?): refusing to write the backend log there")
    if os.name == "posix":
        if info.st_uid != os.getuid():
            raise OSError(f"{folder} belongs to another user: refusing to write the backend log there")
        if info.st_mode & 0o077:
            os.chmod(folder, 0o700)


def _open_private(path: str, flags: int):
    """os.open that never follows a symlink at `path` (O_NOFOLLOW) and creates files 0600."""
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o600)


class BackendLauncher:
    def __init__(self, log_dir: Optional[str] = None) -> None:
        self._process: Optional[subprocess.Popen] = None
        self.log_dir = log_dir or private_log_dir()
        self.log_path = os.path.join(self.log_dir, LOG_NAME)

    @staticmethod
    def split(command: str) -> list[str]:
        args = shlex.split(command, posix=os.name != "nt")
        if not args:
            raise ValueError("the backend start command is empty")
        return args

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, command: str) -> bool:
        """Start the command unless our backend already runs; True when a process was started."""
        if self.running():
            return False
        args = self.split(command)
        _ensure_private_dir(self.log_dir)
        with os.fdopen(_open_private(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "ab") as log:
            self._process = subprocess.Popen(  # nosec B603: list argv, shell=False
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, shell=False
            )
        return True

    def exit_code(self) -> Optional[int]:
        return None if self._process is None else self._process.poll()

    def log_tail(self, lines: int = 15) -> str:
        try:
            with os.fdopen(_open_private(self.log_path, os.O_RDONLY), encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 5.0) -> None:
        if not self.running():
            return
        self._process.terminate()
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout)
        self._process = None
