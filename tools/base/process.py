"""The one wrapper for the processes the tooling and the tests start: the local stack's services,
the benchmark's workers and peers, the tests' workers; and ``run_checked`` for the short commands
the tooling runs to completion (apt, mvn, go, helm).

A process runs in its own session (its own process group) and writes stdout and stderr to a log
file. With a pid file it outlives the command that started it (the stack's services, stopped by
``imgstream stack down``); the pid file stores the start time too, so a recycled pid is never
taken for ours.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from contextlib import suppress
from pathlib import Path

import psutil

from tools.base.errors import ToolingError


def run_checked(argv: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    """Run a command to completion; a ToolingError with the tail of its output if it fails."""
    proc = subprocess.run(argv, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise ToolingError(f"{what} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc


def go_binary(purpose: str) -> str:
    """The Go toolchain (on PATH or Debian's /usr/local/go); a ToolingError naming ``purpose``."""
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        raise ToolingError(f"Go is needed {purpose}: apt-get install golang")
    return go


class Process:
    def __init__(self, name: str, log_file: Path, pid_file: Path | None = None) -> None:
        self.name, self.log_file, self.pid_file = name, log_file, pid_file
        self.popen: subprocess.Popen | None = None

    def start(self, argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> Process:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            self.popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, cwd=cwd,
                                          start_new_session=True)
        if self.pid_file is not None:
            self.adopt(self.popen.pid)
        return self

    def adopt(self, pid: int) -> None:
        """Track a process started by someone else (a daemon forked by its own launcher)."""
        assert self.pid_file is not None, "only a process with a pid file can be adopted"
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(f"{pid} {psutil.Process(pid).create_time()}\n")

    def pid(self) -> int | None:
        """The pid of our process while it runs, else None."""
        if self.popen is not None:
            return self.popen.pid if self.popen.poll() is None else None
        if self.pid_file is None:
            return None
        try:
            pid, started = self.pid_file.read_text().split()
            proc = psutil.Process(int(pid))
            if abs(proc.create_time() - float(started)) > 1.0 or proc.status() == psutil.STATUS_ZOMBIE:
                return None
        except (FileNotFoundError, ValueError, psutil.NoSuchProcess):
            return None
        return proc.pid

    def exited(self) -> int | None:
        """The exit status once a child started here has exited (None while it runs)."""
        return self.popen.poll() if self.popen is not None else None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0, *, group: bool = True) -> bool:
        """Send ``sig`` (to the whole process group unless ``group`` is false), wait up to
        ``timeout`` seconds, then SIGKILL the group. Returns whether it was running."""
        pid = self.pid()
        if pid is None:
            if self.pid_file is not None:
                self.pid_file.unlink(missing_ok=True)
            return False
        members = _descendants(pid) if group else []
        try:
            os.killpg(pid, sig) if group else os.kill(pid, sig)
            self._wait(pid, timeout)
        except ProcessLookupError:
            pass
        except (subprocess.TimeoutExpired, psutil.TimeoutExpired):
            with suppress(ProcessLookupError, psutil.NoSuchProcess):
                os.killpg(pid, signal.SIGKILL)
            self._wait(pid, 10)
        # the leader is gone; its children got the same signal but may still be exiting (holding a
        # port or a lock file): return only once they are gone too
        for left in _wait_gone(members, timeout):
            with suppress(psutil.NoSuchProcess):
                left.kill()
        _wait_gone(members, 10)
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)
        return True

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def _wait(self, pid: int, timeout: float) -> None:
        if self.popen is not None:
            self.popen.wait(timeout)
        else:
            with suppress(ProcessLookupError, psutil.NoSuchProcess):
                psutil.Process(pid).wait(timeout)

    def peak_rss_mb(self) -> float:
        """The process's peak resident memory (VmHWM) in MB, while it runs."""
        pid = self.pid()
        if pid is not None:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

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


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _running(p: psutil.Process) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for a reaper that may never come)."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to ``timeout`` seconds for ``procs`` to end; returns those still running."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in procs if _running(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)
