"""Chaos tests break workers and services on purpose, then count: every accepted upload must end
with exactly three predictions. Each test records its figures; docs/RELIABILITY.md is written
from them at the end of the session."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import aiohttp
import asyncpg
import pytest

from app.client import upload_bytes
from tests.conftest import REPO
from tests.workers import images_from  # noqa: F401 - re-exported for the chaos tests

FIGURES = REPO / "test-output" / "reliability.json"
RECORDS: list[dict] = []


@pytest.fixture
def record():
    def add(test: str, **figures) -> None:
        RECORDS.append({"test": test, **figures})

    return add


def pytest_sessionfinish(session, exitstatus):
    if not RECORDS:
        return
    FIGURES.parent.mkdir(exist_ok=True)
    FIGURES.write_text(json.dumps(RECORDS, indent=2))
    from tests.chaos.report import write

    write(RECORDS, REPO / "docs" / "RELIABILITY.md")


class Uploader:
    """Uploads images (``concurrency`` at a time) to whichever URL is current, like a client that
    honours Retry-After: an image refused with 503 or a connection error is tried again (up to
    ``patience`` seconds). Counts images sent, accepted (202), and every refusal seen on the way."""

    def __init__(self, images: list[bytes], concurrency: int = 6, patience: float = 90) -> None:
        self.images = images
        self.concurrency = concurrency
        self.patience = patience
        self.accepted: list[str] = []
        self.refused: dict[str, int] = {}
        self.sent = 0

    def _count(self, key: str) -> None:
        self.refused[key] = self.refused.get(key, 0) + 1

    async def run(self, url_of) -> None:
        queue = list(self.images)
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:
            async def one_worker():
                while queue:
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
                            break
                        self._count(f"{status} {body.get('error', {}).get('code')}")
                        if status != 503:
                            break
                        await asyncio.sleep(0.5)

            await asyncio.gather(*(one_worker() for _ in range(self.concurrency)))


async def settle(dsn: str, ids: list[str], timeout: float = 180) -> dict[str, dict[str, int]]:
    """Wait until every id has 3 prediction rows for one model version (or the timeout); return
    rows per image per model version."""
    conn = await asyncpg.connect(dsn)
    uids = [uuid.UUID(i) for i in ids]
    deadline = time.monotonic() + timeout
    try:
        while True:
            rows = await conn.fetch("SELECT image_id::text AS id, model_version, count(*) AS n FROM predictions "
                                    "WHERE image_id = ANY($1::uuid[]) GROUP BY image_id, model_version", uids)
            per: dict[str, dict[str, int]] = {i: {} for i in ids}
            for r in rows:
                per[r["id"]][r["model_version"]] = r["n"]
            if all(3 in v.values() for v in per.values()) or time.monotonic() > deadline:
                return per
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


async def resent_count(settings, ids: list[str]) -> int:
    """How many times the sweeper re-published these images."""
    conn = await asyncpg.connect(settings.postgres_dsn.get_secret_value())
    try:
        return await conn.fetchval("SELECT coalesce(sum(resent_count), 0) FROM images WHERE image_id = ANY($1::uuid[])",
                                   [uuid.UUID(i) for i in ids])
    finally:
        await conn.close()


def figures(uploader: Uploader, per_image: dict[str, dict[str, int]]) -> dict:
    return {
        "sent": uploader.sent,
        "accepted": len(uploader.accepted),
        "refused": dict(uploader.refused),
        "complete_with_3": sum(1 for v in per_image.values() if 3 in v.values()),
        "lost": sum(1 for v in per_image.values() if not v),
        "partial": sum(1 for v in per_image.values() if v and 3 not in v.values()),
        "doubled": sum(1 for v in per_image.values() if any(n > 3 for n in v.values())),
        "versions": sorted({ver for v in per_image.values() for ver in v}),
    }
