"""Load generators against an upload endpoint: closed loop (saturation) and open loop (Poisson
arrivals at a fixed rate), plus latency read back from PostgreSQL's own timestamps."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass, field

import aiohttp
import asyncpg
import numpy as np


@dataclass
class LoadResult:
    sent: int = 0
    accepted: int = 0
    ids: list[str] = field(default_factory=list)
    seconds: float = 0.0
    client_latency_s: list[float] = field(default_factory=list)
    responses: list[dict] = field(default_factory=list)


async def _post(session, url: str, data: bytes, res: LoadResult) -> None:
    """Send one upload; record it in ``res`` if it was accepted."""
    t = time.perf_counter()
    async with session.post(url, data=data, headers={"Content-Type": "image/jpeg"}) as r:
        body = await r.json(content_type=None)
        status = r.status
    if status in (200, 202):
        res.accepted += 1
        res.ids.append(body.get("image_id", ""))
        res.client_latency_s.append(time.perf_counter() - t)
        res.responses.append(body)


async def closed_loop(url: str, images: list[bytes], concurrency: int) -> LoadResult:
    """Send every image with ``concurrency`` in flight; returns accepted ids and wall time."""
    res = LoadResult()
    queue = list(enumerate(images))
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        async def worker():
            while queue:
                _, data = queue.pop()
                res.sent += 1
                await _post(s, url, data, res)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    res.seconds = time.perf_counter() - started
    return res


async def open_loop(url: str, images: list[bytes], rate: float, duration: float, seed: int = 0) -> LoadResult:
    """Poisson arrivals at ``rate`` per second for ``duration`` seconds (no coordinated omission:
    each request starts at its scheduled time whatever the others do)."""
    rng = random.Random(seed)
    res = LoadResult()
    started = time.perf_counter()
    tasks = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        t = 0.0
        i = 0
        while True:
            t += rng.expovariate(rate)
            if t > duration:
                break
            delay = started + t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            res.sent += 1
            tasks.append(asyncio.create_task(_post(s, url, images[i % len(images)], res)))
            i += 1
        await asyncio.gather(*tasks)
    res.seconds = time.perf_counter() - started
    return res


async def wait_rows(dsn: str, ids: list[str], per_image: int, timeout: float,
                    model_version: str | None = None) -> float:
    """Wait until every image has ``per_image`` prediction rows; returns the time it took."""
    conn = await asyncpg.connect(dsn)
    uids = [uuid.UUID(i) for i in ids]
    started = time.perf_counter()
    try:
        while time.perf_counter() - started < timeout:
            n = await conn.fetchval(
                "SELECT count(*) FROM predictions WHERE image_id = ANY($1::uuid[]) "
                "AND ($2::text IS NULL OR model_version = $2)", uids, model_version)
            if n >= per_image * len(ids):
                return time.perf_counter() - started
            await asyncio.sleep(0.05)
        raise TimeoutError(f"only {n} of {per_image * len(ids)} prediction rows after {timeout}s")
    finally:
        await conn.close()


async def stage_latencies(dsn: str, ids: list[str]) -> dict[str, np.ndarray]:
    """Per image, from PostgreSQL's timestamps (seconds): queue (upload accepted, i.e. answered 202
    -> extraction started), extract, classify (extraction finished -> third prediction committed),
    end to end (accepted -> third prediction committed), and from the request's arrival."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            """SELECT i.uploaded_at, i.accepted_at, i.extract_started_at, i.extract_finished_at,
                      max(p.created_at) AS done
               FROM images i JOIN predictions p USING (image_id)
               WHERE i.image_id = ANY($1::uuid[]) AND p.model_version = i.bundle_version
               GROUP BY i.image_id HAVING count(*) = 3""", [uuid.UUID(i) for i in ids])
    finally:
        await conn.close()

    def col(f) -> np.ndarray:
        return np.array([f(r) for r in rows], dtype=float)

    return {
        "queue": col(lambda r: (r["extract_started_at"] - r["accepted_at"]).total_seconds()),
        "extract": col(lambda r: (r["extract_finished_at"] - r["extract_started_at"]).total_seconds()),
        "classify": col(lambda r: (r["done"] - r["extract_finished_at"]).total_seconds()),
        "end_to_end": col(lambda r: (r["done"] - r["accepted_at"]).total_seconds()),
        "from_request": col(lambda r: (r["done"] - r["uploaded_at"]).total_seconds()),
    }


def pct(a, q) -> float:
    a = np.asarray(a, dtype=float)
    return float(np.percentile(a, q)) if a.size else float("nan")
