"""Interpreter exit waits for obstore's runtime threads to leave Python (obstore 0.12 on CPython
before 3.14).

obstore completes each awaited call on a thread of its tokio runtime (pyo3-async-runtimes'
``set_result``): holding the GIL, that thread calls the event loop's ``call_soon_threadsafe``,
whose self-pipe write releases the GIL and then takes it back. The callback is queued before the
write, so the awaiting coroutine can resume at once, and a short-lived process (``imgstream models
train`` publishes its bundle as its last step) can reach ``Py_FinalizeEx`` and set the
interpreter's finalizing flag while that thread still waits for the GIL. Under CPU contention
(LightGBM's and OpenBLAS's threads spinning after training) it may not be scheduled for tens of
milliseconds. CPython before 3.14 ends a thread that takes the GIL during finalization with
``pthread_exit``; its forced unwind cannot pass the runtime thread's Rust frames, so the process
aborts (SIGABRT: exit status -6, or 134 from a shell) after all its work is done, with nothing on
stderr. A core of such an abort shows the runtime thread in ``take_gil`` under ``sock_send``
under ``pyo3_async_runtimes::generic::set_result`` and the main thread in the finalizing
collection.

``install()`` registers an ``atexit`` hook, which runs before the flag is set. The hook waits,
releasing the GIL, until no thread that ``threading`` did not start is running Python code:
such a thread is a native callback in flight, and once it has left Python it holds the GIL until
it lets go for good. A call still in flight at exit (never awaited) is not covered: that needs
the runtime itself to stop, which obstore has no API for. ``docs/upstream/README.md`` has the
fix that belongs in pyo3-async-runtimes.
"""

from __future__ import annotations

import atexit
import sys
import threading
import time

import obstore

# Read in obstore 0.12.1; CPython 3.14 parks such a thread instead of exiting it.
OBSTORE_SERIES = "0.12."
TIMEOUT_S = 5.0

_installed = False


def applies(obstore_version: str = obstore.__version__, python: tuple[int, int] = sys.version_info[:2]) -> bool:
    return obstore_version.startswith(OBSTORE_SERIES) and python < (3, 14)


def install() -> None:
    """Register the exit hook once (a no-op on versions it was not written for)."""
    global _installed
    if not _installed and applies():
        atexit.register(wait_for_foreign_threads)
        _installed = True


def foreign_threads_in_python() -> list[int]:
    """Idents of threads running Python code that ``threading`` did not start."""
    ours = {t.ident for t in threading.enumerate() if not isinstance(t, threading._DummyThread)}
    return [ident for ident in sys._current_frames() if ident not in ours]


def wait_for_foreign_threads(timeout_s: float = TIMEOUT_S) -> list[int]:
    """Wait (GIL released) until no foreign thread runs Python code; the ones left at the timeout."""
    deadline = time.monotonic() + timeout_s
    while (busy := foreign_threads_in_python()) and time.monotonic() < deadline:
        time.sleep(0.001)
    return busy
