"""Narrow, version-guarded fixes of faust-streaming bugs that lose messages; applied once when the
Faust app is built. Each keeps its upstream diff in ``docs/upstream/``.

Recovery's resume-before-seek race (faust-streaming 0.15.3, ``faust/tables/recovery.py``)
-----------------------------------------------------------------------------------------------
``Recovery.on_recovery_completed`` resumes the stream partitions *before* ``perform_seek`` and
calls ``app.flow_control.resume()`` *after* it. On a worker whose fetcher is already running (it
was started to restore a table's changelog), records of the resumed partitions are fetched while
``perform_seek`` makes its one-by-one committed-offset look-ups and seeks; they land in the agents'
channel queues, and ``flow_control.resume()`` then clears those queues (channels are built with
``clear_on_resume=True``). The records are never acked, and nothing rewinds the position past
them: a block of input is skipped without a trace (no gap is recorded because ``perform_seek``
resets the read offsets). Upstream: faust-streaming/faust#216 (this race, no-table path) fixed by
#217; #241 moved ``resume_partitions`` ahead of ``perform_seek`` again; #253 notes the queue
clear; #596 is a related recovery gap. Master still has the ordering.

The fix keeps the stream partitions paused until the seek has finished and the queues have been
cleared, then resumes them: nothing can be fetched into a queue that is about to be cleared.
It refuses to apply to any other faust version than the one it was read in, or to a method whose
source changed, so an upgrade makes someone read the new code instead of patching it blindly.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
from typing import cast

import faust
from faust.tables.recovery import Recovery

log = logging.getLogger("imgstream.faust_patches")

FAUST_VERSION = "0.15.3"
# sha256 of inspect.getsource(Recovery.on_recovery_completed) in faust-streaming 0.15.3
RECOVERY_SOURCE_SHA256 = "6ef567acf072e46da3fccbccc6d662371f634f622c3d510972d5df81f70ae3ac"


class FaustPatchError(RuntimeError):
    """The installed faust-streaming is not the version a patch was written for."""


async def on_recovery_completed(self: Recovery, generation_id: int = 0) -> None:
    """``Recovery.on_recovery_completed`` of faust-streaming 0.15.3 with the stream partitions
    resumed only after ``perform_seek`` and ``flow_control.resume()`` (see the module docstring)."""
    consumer = self.app.consumer
    self.log.info("Restore complete!")
    await self.app.on_rebalance_complete.send()
    self._set_recovery_ended()
    callback_coros = [
        asyncio.ensure_future(
            table.on_recovery_completed(self.actives_for_table[table], self.standbys_for_table[table])
        )
        for table in self.tables.values()
    ]
    if callback_coros:
        await asyncio.wait(callback_coros)
    assignment = consumer.assignment()
    if self.app.consumer_generation_id != generation_id:
        self.log.warning(f"Recovery rebalancing again app id {self.app.consumer_generation_id} param {generation_id}")
        return
    stream_tps = {tp for tp in assignment if not self._is_changelog_tp(tp)}
    if assignment:
        # The stream partitions are still paused here (since the assignment), so no record of
        # theirs is fetched while the committed offsets are looked up and sought.
        self.log.info("Seek stream partitions to committed offsets.")
        await self._wait(consumer.perform_seek(), timeout=self.app.conf.broker_request_timeout)
    self.completed.set()
    self.log.dev("Resume stream partitions")
    # Clears the agents' queues (clear_on_resume): nothing of the stream partitions is in them yet.
    self.app.flow_control.resume()
    consumer.resume_partitions(stream_tps)
    consumer.resume_flow()
    await cast(faust.App, self.app)._fetcher.maybe_start()
    self.tables.on_actives_ready()
    if not self.app.assignor.assigned_standbys():
        self.tables.on_standbys_ready()
    self.app.on_rebalance_end()
    self.log.info("Worker ready")


def source_sha256(fn) -> str:
    return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()


_ORIGINAL = Recovery.on_recovery_completed


def apply(version: str | None = None, original=None) -> None:
    """Install the fix; raise ``FaustPatchError`` on any faust but the one it was read in."""
    version = version or faust.__version__
    original = original or _ORIGINAL
    if version != FAUST_VERSION:
        raise FaustPatchError(
            f"imgstream's fix of Faust's recovery race was written for faust-streaming {FAUST_VERSION}, "
            f"found {version}: read faust/tables/recovery.py (on_recovery_completed) and re-check "
            f"app/faust_patches.py before running this version")
    if source_sha256(original) != RECOVERY_SOURCE_SHA256:
        raise FaustPatchError("Recovery.on_recovery_completed is not the faust-streaming "
                              f"{FAUST_VERSION} source the fix was written against")
    if Recovery.on_recovery_completed is not on_recovery_completed:
        Recovery.on_recovery_completed = on_recovery_completed
        log.debug("patched faust Recovery.on_recovery_completed (seek before resume)")


def restore() -> None:
    """Undo ``apply`` (tests)."""
    Recovery.on_recovery_completed = _ORIGINAL


def widen_seek_window(consumer, delay_s: float) -> None:
    """Test-only hook: hold ``perform_seek`` for ``delay_s`` seconds after its seeks, the window in
    which the unpatched recovery lets records be fetched and then cleared. Installed only when
    IMGSTREAM_TEST_SEEK_DELAY_S is set; makes the race deterministic on a real broker."""
    original = consumer.seek_to_committed

    async def seek_to_committed():
        committed = await original()
        await asyncio.sleep(delay_s)
        return committed

    consumer.seek_to_committed = seek_to_committed
