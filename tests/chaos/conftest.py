"""Chaos tests break workers and services on purpose, with the sweeper off, then count: every
accepted upload must end with its three predictions, none with two answers. Each test records its
figures in test-output/reliability.json (and test-output/RELIABILITY.md);
``python -m tests.chaos.report`` turns a full run's figures into docs/RELIABILITY.md."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter

import aiohttp
import asyncpg
import pytest

from app.http.client import upload_bytes
from tests.conftest import REPO
from tests.topics import descriptor_messages_per_image, input_events_per_image
from tests.workers import images_from  # noqa: F401 - the chaos tests' image maker

OUTPUT = REPO / "test-output"
RECORDS: list[dict] = []


@pytest.fixture
def record():
    def add(test: str, **figures) -> None:
        RECORDS.append({"test": test, **figures})

    return add


def pytest_sessionfinish(session, exitstatus):
    if not RECORDS:
        return
    from tests.chaos.report import write

    OUTPUT.mkdir(exist_ok=True)
    (OUTPUT / "reliability.json").write_text(json.dumps(RECORDS, indent=2))
    write(RECORDS, OUTPUT / "RELIABILITY.md")


class Uploader:
    """Uploads images (``concurrency`` at a time) to whichever URL ``url_of()`` gives, like a client
    that honours Retry-After: an image refused with 503 or a connection error is tried again (up
    to ``patience`` seconds), on the URL current at that moment. Counts images sent, accepted (202,
    with the time), and every refusal seen on the way. ``pace`` seconds between two uploads of one
    client make a continuous load."""

    def __init__(self, images: list[bytes], concurrency: int = 6, patience: float = 120, pace: float = 0.0) -> None:
        self.images = images
        self.concurrency = concurrency
        self.patience = patience
        self.pace = pace
        self.accepted: list[str] = []
        self.accepted_at: list[float] = []
        self.refused: dict[str, int] = {}
        self.sent = 0
        self._pause_at: int | None = None
        self._going = asyncio.Event()
        self._going.set()

    def pause_at(self, accepted: int | None) -> None:
        """Hold every client once ``accepted`` images were accepted (None: never), until ``resume``:
        a test can change the system between two parts of one stream, whatever the machine's speed."""
        self._pause_at = accepted

    def resume(self) -> None:
        self._going.set()

    async def paused(self, task: asyncio.Task) -> None:
        while self._going.is_set() and not task.done():
            await asyncio.sleep(0.05)

    def _count(self, key: str) -> None:
        self.refused[key] = self.refused.get(key, 0) + 1

    def accepted_between(self, start: float, end: float) -> int:
        return sum(1 for t in self.accepted_at if start <= t <= end)

    async def run(self, url_of) -> None:
        queue = list(self.images)
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:
            async def one_client():
                while queue:
                    if self._pause_at is not None and len(self.accepted) >= self._pause_at:
                        self._going.clear()
                    await self._going.wait()
                    if not queue:
                        break
                    data = queue.pop()
                    self.sent += 1
                    give_up = loop.time() + self.patience
                    while loop.time() < give_up:
                        try:
                            status, body = await upload_bytes(s, url_of(), data)
                        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                            self._count(type(exc).__name__)
                            await asyncio.sleep(0.5)
                            continue
                        if status == 202:
                            self.accepted.append(body["image_id"])
                            self.accepted_at.append(time.time())
                            break
                        self._count(f"{status} {body.get('error', {}).get('code')}")
                        if status != 503:
                            break
                        await asyncio.sleep(0.5)
                    if self.pace:
                        await asyncio.sleep(self.pace)

            await asyncio.gather(*(one_client() for _ in range(self.concurrency)))


async def until_accepted(uploader: Uploader, task: asyncio.Task, n: int) -> None:
    while len(uploader.accepted) < n and not task.done():
        await asyncio.sleep(0.05)


async def settle(dsn: str, ids: list[str], timeout: float = 180) -> None:
    """Wait until every id has its three predictions for one model version, or the timeout."""
    conn = await asyncpg.connect(dsn)
    uids = [uuid.UUID(i) for i in ids]
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            done = await conn.fetchval(
                "SELECT count(*) FROM (SELECT image_id FROM predictions WHERE image_id = ANY($1::uuid[]) "
                "GROUP BY image_id, model_version HAVING count(*) >= 3) d", uids)
            if done >= len(set(ids)):
                return
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


async def measure(settings, env: dict[str, str], uploader: Uploader, timeout: float = 180) -> dict:
    """The figures of one chaos run, after waiting (up to ``timeout``) for every accepted image.

    - complete / lost: accepted images with / without the three predictions of one bundle.
    - doubled: accepted images answered by more than one bundle (two answers to one upload); the
      primary key makes a second row of one (image, classifier, bundle) impossible, so that is the
      double that can happen, and this counts it.
    - worst_latency_s: the longest time from an upload to its last prediction.
    - re-runs (redeliveries, allowed and counted): descriptor messages per image beyond one on the
      features topic (extractor), and classifier executions per (image, classifier) beyond one
      (``predictions.attempts``); input events beyond one per image (the sweeper's re-sends, 0
      with it off).
    """
    dsn = settings.postgres_dsn.get_secret_value()
    ids = list(dict.fromkeys(uploader.accepted))
    await settle(dsn, ids, timeout)
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            """SELECT p.image_id::text AS id, p.model_version, p.classifier, p.attempts,
                      extract(epoch FROM p.created_at - i.uploaded_at) AS latency
               FROM predictions p JOIN images i USING (image_id) WHERE p.image_id = ANY($1::uuid[])""",
            [uuid.UUID(i) for i in ids])
    finally:
        await conn.close()
    per_version: dict[str, Counter] = {i: Counter() for i in ids}
    latency: dict[str, float] = {}
    reruns: Counter = Counter()
    for r in rows:
        per_version[r["id"]][r["model_version"]] += 1
        latency[r["id"]] = max(latency.get(r["id"], 0.0), float(r["latency"] or 0))
        reruns[r["classifier"]] += r["attempts"] - 1
    descriptors = await descriptor_messages_per_image(settings, env["IMGSTREAM_FEATURES_TOPIC"])
    inputs = await input_events_per_image(settings, env["IMGSTREAM_INPUT_TOPIC"])
    complete = [i for i, v in per_version.items() if any(n >= 3 for n in v.values())]
    return {
        "sent": uploader.sent,
        "accepted": len(ids),
        "refused": dict(uploader.refused),
        "complete": len(complete),
        "lost": len(ids) - len(complete),
        "doubled": sum(1 for v in per_version.values() if len(v) > 1),
        "worst_latency_s": round(max(latency.values(), default=0.0), 2),
        "extractor_reruns": sum(max(0, descriptors[i] - 1) for i in ids),
        "classifier_reruns": {k: reruns[k] for k in ("fast", "balanced", "accurate")},
        "input_resends": sum(max(0, inputs[i] - 1) for i in ids),
        "versions": sorted({ver for v in per_version.values() for ver in v}),
    }


def assert_none_lost_or_doubled(fig: dict) -> None:
    assert fig["accepted"] > 0
    assert (fig["lost"], fig["doubled"], fig["input_resends"]) == (0, 0, 0), fig
    assert fig["complete"] == fig["accepted"]


def alive(workers) -> str:
    """The URL of a running worker (uploads fail over to the next one, like behind a load balancer)."""
    for w in workers:
        if w.pid is not None:
            return w.url
    return workers[0].url
