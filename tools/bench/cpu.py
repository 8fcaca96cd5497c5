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

from app.core.settings import Settings


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


# A worker's threads by role, from the OS thread names its pools set (app/core/threads.name_os_thread);
# onnxruntime's intra-op threads inherit their creator's name, and obstore's Rust runtime names its
# own. What is left is mostly Faust's Kafka consumer thread (it runs aiokafka on a loop of its own).
BACKBONE = "backbone (onnx*, decode* threads)"
S3_CLIENT = "S3 client (obstore's tokio-rt-worker threads)"
THREAD_GROUPS = ((BACKBONE, ("onnx", "decode")), ("LightGBM (predict* threads)", ("predict",)), (S3_CLIENT, ("tokio",)))
EVENT_LOOP, OTHER_THREADS = "event loop (main thread)", "other threads"


def _threads(pid: int):
    """(tid, OS thread name, CPU seconds) of each live thread of ``pid`` (Linux /proc; none elsewhere)."""
    tick = os.sysconf("SC_CLK_TCK")
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                comm, _, rest = f.read().partition("(")[2].rpartition(")")
        except OSError:
            continue
        fields = rest.split()
        yield int(tid), comm, (int(fields[11]) + int(fields[12])) / tick  # utime + stime


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of one process's live threads, grouped by role ({} where /proc is missing)."""
    if not os.path.isdir(f"/proc/{pid}/task"):
        return {}
    out = dict.fromkeys([EVENT_LOOP, *(g for g, _ in THREAD_GROUPS), OTHER_THREADS], 0.0)
    for tid, comm, seconds in _threads(pid):
        if tid == pid:
            group = EVENT_LOOP
        else:
            group = next((g for g, prefixes in THREAD_GROUPS if comm.startswith(prefixes)), OTHER_THREADS)
        out[group] += seconds
    return out


def per_image_ms(before: dict[str, float], after: dict[str, float], images: int) -> dict[str, float]:
    """CPU ms per image of each group between two ``thread_cpu`` reads (a thread that ended in
    between is missing from both reads; a group never goes below zero)."""
    return {k: 1000 * max(0.0, after.get(k, 0.0) - v) / max(images, 1) for k, v in before.items()}


def jit_cpu(pid: int) -> float:
    """CPU seconds of a JVM's JIT compiler threads (HotSpot's "C1/C2 CompilerThreadN", cut to 15
    characters by Linux): compiling the service's code, not running it."""
    return sum(seconds for _, comm, seconds in _threads(pid) if "CompilerThre" in comm)


class CpuMeter:
    """``start()`` then ``stop(images)`` -> {part: CPU ms per image}, the share of the cores these
    parts used, how busy the whole machine was, and the worker's CPU by thread role."""

    def __init__(self, parts: dict[str, int], threads_of: str = "worker") -> None:
        self.parts = dict(parts)
        self.me = "load generator (bench process)"  # without its children: the workers it started
        self.threads_of = threads_of
        self._before: dict[str, float] = {}
        self._threads: dict[str, float] = {}
        self._wall = 0.0

    def start(self) -> None:
        self._wall = time.perf_counter()
        self._before = self._read()
        self._machine = psutil.cpu_times()
        self._threads = thread_cpu(self.parts[self.threads_of]) if self.threads_of in self.parts else {}
        self._jit = jit_cpu(self.parts["kafka"]) if "kafka" in self.parts else None

    def _read(self) -> dict[str, float]:
        return {**{k: _cpu_seconds(pid) for k, pid in self.parts.items()}, self.me: _cpu_seconds(os.getpid(), False)}

    def stop(self, images: int) -> dict:
        wall = time.perf_counter() - self._wall
        used = {k: max(0.0, v - self._before[k]) for k, v in self._read().items()}
        total = sum(used.values())
        cores = os.cpu_count() or 1
        threads = {}
        if self._threads:
            threads = per_image_ms(self._threads, thread_cpu(self.parts[self.threads_of]), images)
        jit = {}
        if self._jit is not None:
            jit = {"kafka_jit_ms_per_image": 1000 * max(0.0, jit_cpu(self.parts["kafka"]) - self._jit) / max(images, 1)}
        return {"ms_per_image": {k: 1000 * v / max(images, 1) for k, v in used.items()},
                "threads_ms_per_image": threads, **jit,
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
