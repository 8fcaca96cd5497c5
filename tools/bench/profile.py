"""py-spy on a worker during a bench phase: how busy its event-loop thread (the main thread) was
and which frames took that time. py-spy drops idle samples (a thread the OS has neither running
nor ready to run: state R in /proc/<tid>/stat, read by its remoteprocess crate; one waiting in
epoll, say), so the main thread's samples over rate x seconds
is the share of the time the loop was working or waiting for a core."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

RATE = 100  # samples per second

_LINE = re.compile(r"^thread \((?P<tid>\d+)\);?(?P<stack>.*) (?P<count>\d+)$")
_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^():]+)(?::\d+)?\)$")


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def record(pid: int, seconds: float, out: Path) -> subprocess.Popen | None:
    """Start sampling ``pid`` for ``seconds`` (None where py-spy is missing)."""
    exe = py_spy()
    if exe is None:
        return None
    return subprocess.Popen([exe, "record", "-p", str(pid), "-d", str(max(1, int(seconds))), "-r", str(RATE),
                             "-f", "raw", "-o", str(out), "--threads", "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _label(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m["file"]
    for marker in ("site-packages/", "lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
            path = path.split("/", 1)[1] if marker.startswith("lib/") and "/" in path else path
    return f"{m['func']} ({path})"


def summarize(raw: str, main_tid: int, seconds: float, top: int = 12) -> dict:
    """Busy share of the main thread, its top frames by own time and by inclusive time, and the
    busy share of every other thread (the ONNX and decode pools)."""
    own, inclusive, threads = Counter(), Counter(), Counter()
    names: dict[int, str] = {}
    for line in raw.splitlines():
        m = _LINE.match(line.strip())
        if not m:
            continue
        tid, count = int(m["tid"]), int(m["count"])
        threads[tid] += count
        head = m["stack"].split(";", 1)[0]
        if head.startswith(": "):  # py-spy's thread name (the pools' onnx_0, decode_1, predict_0, ...)
            names[tid] = head[2:]
        if tid != main_tid:
            continue
        frames = [_label(f) for f in m["stack"].split(";") if f and not f.startswith(":")]
        if frames:
            own[frames[-1]] += count
            # inclusive time below the loop's dispatch (the frames above it hold every sample)
            loop = [i for i, f in enumerate(frames) if f.startswith(("Handle._run ", "BaseEventLoop._run_once "))]
            for f in set(frames[loop[-1] + 1:] if loop else frames):
                inclusive[f] += count
    total = RATE * seconds
    main = threads.pop(main_tid, 0)
    return {"seconds": seconds, "event_loop_busy": main / total,
            "top_own": [(f, n / total) for f, n in own.most_common(top)],
            "top_inclusive": [(f, n / total) for f, n in inclusive.most_common(top)],
            "other_threads_busy": sorted((n / total for n in threads.values()), reverse=True)[:8],
            "other_threads": [(names.get(t, str(t)), n / total) for t, n in threads.most_common(8)]}
