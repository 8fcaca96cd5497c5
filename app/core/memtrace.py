"""Diagnostics for memory that grows: with ``IMGSTREAM_TRACE_MEMORY_S`` set, the worker logs at
that interval a census of its memory, compared with the first one: resident memory, what the C
allocator holds in use and free (glibc's mallinfo2: native libraries such as RocksDB and
onnxruntime allocate there), the blocks Python's own allocator holds, and the object types whose
count grew most. Cheap enough for a worker under load (tracemalloc is not: measured, a traced
worker at 27 images/s fell behind and its traces alone grew its RSS by 330 MB in two minutes)."""

from __future__ import annotations

import ctypes
import gc
import logging
import sys
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger("imgstream.memtrace")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _mallinfo() -> dict[str, float]:
    """glibc's heap: in use and free inside its arenas, and mmapped blocks (MB); empty elsewhere."""
    libc = _libc()
    try:
        libc.mallinfo2.restype = _MallInfo2
        m = libc.mallinfo2()
    except AttributeError:  # not glibc (or glibc < 2.33)
        return {}
    return {"c_in_use_mb": m.uordblks / 2**20, "c_free_mb": m.fordblks / 2**20, "c_mmapped_mb": m.hblkhd / 2**20}


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def release_free_heap() -> float | None:
    """Hand the C heap's free pages back to the OS (glibc's ``malloc_trim(0)``); returns the MB of
    RSS released, None where the C library is not glibc.

    Why a worker needs it: RocksDB's memtable arenas, onnxruntime's buffers and aiokafka's fetch
    buffers are allocated and freed in chunks of varying size, mostly from the main thread's
    ``brk`` heap. glibc gives that heap back only from its top, so the holes left between live
    chunks stay resident; ``malloc_trim`` returns every free page inside the heap, not only its
    top. Measured in one-hour soaks at half of saturation: without it the worker's RSS grew
    +11.4 % after the warm-up while Python's own blocks stayed flat; with it every minute, +2.4 %."""
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return None
    before = _rss_mb()
    libc.malloc_trim(0)
    return before - _rss_mb()


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Census:
    rss_mb: float
    python_blocks: int
    objects: Counter
    c_heap: dict[str, float] = field(default_factory=dict)

    @classmethod
    def take(cls) -> Census:
        gc.collect()
        return cls(_rss_mb(), sys.getallocatedblocks(), Counter(type(o).__name__ for o in gc.get_objects()),
                   _mallinfo())


class MemoryTrace:
    def __init__(self, top: int = 12) -> None:
        self.top = top
        self.first: Census | None = None

    def tick(self) -> dict:
        now = Census.take()
        if self.first is None:
            self.first = now
            return {}
        grown = (now.objects - self.first.objects).most_common(self.top)
        report = {"rss_mb": now.rss_mb - self.first.rss_mb,
                  "python_blocks": now.python_blocks - self.first.python_blocks,
                  **{k: v - self.first.c_heap.get(k, 0.0) for k, v in now.c_heap.items()},
                  "objects": dict(grown)}
        log.warning("memory since the first census: RSS %+.1f MB, C heap in use %+.1f MB (free in arenas %+.1f MB, "
                    "mmapped %+.1f MB), Python blocks %+d; object types grown most: %s",
                    report["rss_mb"], report.get("c_in_use_mb", float("nan")), report.get("c_free_mb", float("nan")),
                    report.get("c_mmapped_mb", float("nan")), report["python_blocks"],
                    ", ".join(f"{k} +{v}" for k, v in grown) or "none")
        return report
