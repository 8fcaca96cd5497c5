"""Reproducer: a worker restarted after ``kill -9`` must process every accepted upload by itself.

Each run: a worker takes 20 uploads (so the descriptor table's changelog holds data and offsets are
committed) and is killed with SIGKILL; a front-only worker accepts 100 more; the worker restarts
and must extract and classify all 120, with the sweeper off. With --seek-delay 3 the worker runs
through tests/seek_window.py and the recovery's seek window is held open (the race in app/stream/faust_patches.py then loses the whole
block on unpatched faust-streaming 0.15.3). Needs the local stack (`imgstream stack up`) and a
published test bundle:

    IMGSTREAM_S3_BUCKET=imgstream-test python scripts/repro/restart_skip.py --runs 5 [--seek-delay 3]

Prints, per run, how many of the 120 images were skipped (expected 0) and exits 1 if any was.
"""

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("IMGSTREAM_S3_BUCKET", "imgstream-test")

import aiohttp  # noqa: E402
import asyncpg  # noqa: E402

from app.http.client import upload_bytes  # noqa: E402
from app.core.settings import Settings  # noqa: E402
from models import data  # noqa: E402
from tests.workers import Worker, images_from, isolated_env  # noqa: E402

DATA = Path(os.environ.get("IMGSTREAM_TEST_DATA", "../shared/datasets/cifar10/train.tar.gz"))


async def upload(url: str, images: list[bytes]) -> list[str]:
    async with aiohttp.ClientSession() as s:
        return [body["image_id"] for _, body in await asyncio.gather(*(upload_bytes(s, url, b) for b in images))]


async def completed(ids: list[str], timeout: float = 60) -> int:
    conn = await asyncpg.connect(Settings().postgres_dsn.get_secret_value())
    try:
        deadline = time.monotonic() + timeout
        while True:
            n = await conn.fetchval("SELECT count(*) FROM (SELECT image_id FROM predictions WHERE image_id = "
                                    "ANY($1::uuid[]) GROUP BY image_id HAVING count(*) >= 3) d",
                                    [uuid.UUID(i) for i in ids])
            if n >= len(ids) or time.monotonic() > deadline:
                return n
            await asyncio.sleep(1)
    finally:
        await conn.close()


def one_run(sample: list[tuple[str, bytes]], seek_delay: float) -> int:
    images = images_from(sample, 120, uuid.uuid4().hex)
    env = isolated_env(uuid.uuid4().hex[:8], IMGSTREAM_KAFKA_SESSION_TIMEOUT="6",
                       IMGSTREAM_TEST_SEEK_DELAY_S=str(seek_delay))
    logs = Path("var/logs/repro")
    worker = Worker(env, log_dir=logs, entry="tests.seek_window" if seek_delay else "app.ops.cli")
    front = Worker(env, roles="dead-letter", log_dir=logs)
    try:
        worker.start().wait_healthy()
        ids = asyncio.run(upload(worker.url, images[:20]))
        time.sleep(5)  # offsets committed, changelog written
        worker.kill9()
        front.start().wait_healthy()
        ids += asyncio.run(upload(front.url, images[20:]))
        front.stop()
        worker.start().wait_healthy()
        return len(ids) - asyncio.run(completed(ids))
    finally:
        worker.stop()
        front.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seek-delay", type=float, default=0.0)
    args = parser.parse_args()
    samples = data.limit_per_class(data.list_samples(DATA), 12, seed=int(time.time()) % 1000)
    sample = [(s.label, b) for s, b in data.read_samples(DATA, samples)]
    skipped = []
    for run in range(args.runs):
        skipped.append(one_run(sample, args.seek_delay))
        print(f"run {run + 1}: {skipped[-1]} of 120 skipped", flush=True)
    print(f"skipped per run: {skipped}")
    sys.exit(1 if any(skipped) else 0)


if __name__ == "__main__":
    main()
