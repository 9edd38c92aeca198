"""Start a local backend from the command in the settings, as an argument list.

The command is split with `shlex` and run directly (never through a shell: a setting must not
be able to inject shell syntax), its output goes to a log file in the temp folder, and the
plugin stops only the process it started itself, when QGIS unloads the plugin. Readiness is
not assumed: the ask task health-checks the endpoint with the longer start timeout.
"""

from __future__ import annotations

import os
import shlex
import subprocess  # nosec B404: argument-list Popen of a user-configured local command, no shell
import tempfile
from typing import Optional


class BackendLauncher:
    def __init__(self) -> None:
        self._process: Optional[subprocess.Popen] = None
        self.log_path = os.path.join(tempfile.gettempdir(), "lrs_focus_backend.log")

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
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(  # nosec B603: list argv, shell=False
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, shell=False
            )
        return True

    def exit_code(self) -> Optional[int]:
        return None if self._process is None else self._process.poll()

    def log_tail(self, lines: int = 15) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
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
