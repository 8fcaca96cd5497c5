"""Where the CPU goes: CPU seconds per part of the system across a benchmark phase.

Each part is a root process and its descendants (PostgreSQL's backends, a JVM's threads): the
worker under test, each local service of ``imgstream stack`` found by its pid file, and the
benchmark process itself (the load generator). Services run elsewhere (Docker, managed) are not
counted. Divided by the images of the phase this gives CPU milliseconds per image, the number that
bounds throughput on a machine whose cores all of them share.
"""

from __future__ import annotations

import os
import time

import psutil

from app.settings import Settings


def _cpu_seconds(root: int, children: bool = True) -> float:
    try:
        proc = psutil.Process(root)
        procs = [proc, *(proc.children(recursive=True) if children else [])]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def local_service_pids(settings: Settings) -> dict[str, int]:
    from tools.stack.services import SERVICES

    out = {}
    for name, cls in SERVICES.items():
        pid = cls(settings).proc.pid()
        if pid is not None:
            out[name] = pid
    return out


class CpuMeter:
    """``start()`` then ``stop(images)`` -> {part: CPU ms per image}, the share of the cores these
    parts used, and how busy the whole machine was."""

    def __init__(self, parts: dict[str, int]) -> None:
        self.parts = dict(parts)
        self.me = "load generator (bench process)"  # without its children: the workers it started
        self._before: dict[str, float] = {}
        self._wall = 0.0

    def start(self) -> None:
        self._wall = time.perf_counter()
        self._before = self._read()
        self._machine = psutil.cpu_times()

    def _read(self) -> dict[str, float]:
        return {**{k: _cpu_seconds(pid) for k, pid in self.parts.items()}, self.me: _cpu_seconds(os.getpid(), False)}

    def stop(self, images: int) -> dict:
        wall = time.perf_counter() - self._wall
        used = {k: max(0.0, v - self._before[k]) for k, v in self._read().items()}
        total = sum(used.values())
        cores = os.cpu_count() or 1
        return {"ms_per_image": {k: 1000 * v / max(images, 1) for k, v in used.items()},
                "total_ms_per_image": 1000 * total / max(images, 1),
                "utilisation": total / (wall * cores) if wall > 0 else float("nan"),
                "machine_busy": _busy_share(self._machine, psutil.cpu_times()), "cores": cores}


def _busy_share(before, after) -> float:
    """The share of the machine's CPU time not idle between two ``psutil.cpu_times()``: every
    process counted, the kernel's own work too (iowait counts as idle; steal, where a hypervisor
    reports it, as busy: the cores were not ours)."""
    idle = (after.idle - before.idle) + (getattr(after, "iowait", 0.0) - getattr(before, "iowait", 0.0))
    total = sum(after) - sum(before)
    return 1.0 - idle / total if total > 0 else float("nan")
