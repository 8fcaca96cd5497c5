"""A small HTTP client for imgstream's API (used by the CLI, the tests and the benchmarks)."""

from __future__ import annotations

import asyncio
import mimetypes
from pathlib import Path

import aiohttp


async def upload_bytes(session: aiohttp.ClientSession, base: str, data: bytes, content_type: str = "image/jpeg",
                       token: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with session.post(f"{base}/upload", data=data, headers=headers) as r:
        return r.status, await r.json(content_type=None)


async def send_feedback(session: aiohttp.ClientSession, base: str, image_id: str, label: str,
                        token: str | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.post(f"{base}/feedback/{image_id}", json={"label": label}, headers=headers) as r:
        return r.status, await r.json(content_type=None)


async def upload_many(base: str, files: list[Path], concurrency: int = 8, advance=None,
                      token: str | None = None, labels: list[str] | None = None) -> list[tuple[Path, int, dict]]:
    """Upload ``files``; with ``labels`` (one per file) send each accepted image's label as
    feedback too. (path, status, body) per file, where status is the upload's unless the upload
    was accepted and its feedback was not."""
    sem = asyncio.Semaphore(concurrency)

    async def one(session, path: Path, label: str | None):
        async with sem:
            ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            try:
                status, body = await upload_bytes(session, base, path.read_bytes(), ctype, token)
                if status == 202 and label is not None:
                    fb_status, fb = await send_feedback(session, base, body["image_id"], label, token)
                    if fb_status != 200:
                        status, body = fb_status, fb
            except aiohttp.ClientError as exc:
                status, body = 0, {"error": str(exc)}
            if advance:
                advance(1)
            return path, status, body

    async with aiohttp.ClientSession() as session:
        return await asyncio.gather(*(one(session, f, label)
                                      for f, label in zip(files, labels or [None] * len(files), strict=True)))


class NotComplete(TimeoutError):
    """Raised by ``wait_complete`` at its deadline; ``done`` holds the answers that did arrive."""

    def __init__(self, pending: list[str], done: dict[str, dict]) -> None:
        super().__init__(f"{len(pending)} of {len(pending) + len(done)} images not complete by the deadline "
                         f"(first: {', '.join(pending[:5])})")
        self.pending, self.done = pending, done


async def wait_complete(session: aiohttp.ClientSession, base: str, image_ids: list[str], deadline: float,
                        poll: float = 0.25) -> dict[str, dict]:
    """Poll until every image is complete or failed; raises ``NotComplete`` when the deadline (loop
    time) passes first."""
    loop = asyncio.get_running_loop()
    done: dict[str, dict] = {}
    while len(done) < len(image_ids):
        for image_id in [i for i in image_ids if i not in done]:
            async with session.get(f"{base}/predictions/{image_id}") as r:
                if r.status == 200:
                    body = await r.json()
                    if body["status"] in ("complete", "failed"):
                        done[image_id] = body
        if len(done) < len(image_ids):
            if loop.time() >= deadline:
                raise NotComplete([i for i in image_ids if i not in done], done)
            await asyncio.sleep(poll)
    return done
