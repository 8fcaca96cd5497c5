"""Thread pools that keep CPU work (decode, ONNX, LightGBM) off the event loop, named so that top,
py-spy and /proc tell their threads apart."""

from __future__ import annotations

import asyncio
import ctypes
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from app.core.errors import ServiceUnavailable

_PR_SET_NAME = 15


def name_os_thread() -> None:
    """A ``ThreadPoolExecutor`` initializer: the thread's Python name at the OS level too, where
    ``/proc/<pid>/task/<tid>/comm``, top and py-spy see it. Threads it starts inherit the name
    (onnxruntime's intra-op threads among them), so the CPU of the backbone's threads (onnx*,
    decode*) can be told apart from the event loop's. Linux only; elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).prctl(_PR_SET_NAME, threading.current_thread().name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


class Pool(ThreadPoolExecutor):
    """A named thread pool whose work is awaited with ``run``."""

    def __init__(self, workers: int, prefix: str) -> None:
        super().__init__(workers, thread_name_prefix=prefix, initializer=name_os_thread)

    async def run(self, fn, *args):
        """``fn(*args)`` on this pool. Faust stops the worker's resources (and their pools) before
        the agents: a batch still running then gets an outage, which the error policy retries until
        the agent is cancelled and the batch goes to the partition's next owner, never a poison
        message."""
        try:
            future = asyncio.get_running_loop().run_in_executor(self, fn, *args)
        except RuntimeError as exc:  # "cannot schedule new futures after shutdown"
            raise ServiceUnavailable("the worker is stopping", code="stopping") from exc
        try:
            return await future
        except asyncio.CancelledError:
            if self._shutdown and not asyncio.current_task().cancelling():  # cancel_futures=True
                raise ServiceUnavailable("the worker is stopping", code="stopping") from None
            raise
