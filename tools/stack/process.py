"""Start and stop one long-running local process, tracked by a pid file."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass
class ManagedProcess:
    name: str
    pid_file: Path
    log_file: Path

    def pid(self) -> int | None:
        """The pid we started, if that process still runs (a recycled pid is not ours)."""
        try:
            pid, started = self.pid_file.read_text().split()
            proc = psutil.Process(int(pid))
        except (FileNotFoundError, ValueError, psutil.NoSuchProcess):
            return None
        if abs(proc.create_time() - float(started)) > 1.0 or proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.pid

    def record(self, pid: int) -> None:
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(f"{pid} {psutil.Process(pid).create_time()}\n")

    def start(self, argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> int:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,  # survives the CLI; stopped only by `stack down`
            )
        self.record(proc.pid)
        return proc.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> bool:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        proc = psutil.Process(pid)
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        self.pid_file.unlink(missing_ok=True)
        return True

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def wait_until(check, timeout: float, interval: float = 0.5) -> tuple[bool, str]:
    """Call ``check()`` (returns None when healthy, else a reason) until healthy or ``timeout``."""
    deadline = time.monotonic() + timeout
    reason = "not checked"
    while time.monotonic() < deadline:
        reason = check()
        if reason is None:
            return True, "ok"
        time.sleep(interval)
    return False, reason
