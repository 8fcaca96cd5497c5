"""``imgstream table-state``: what the descriptor table costs a worker, per store and size.

For each size the changelog ``<app_id>-descriptors-changelog`` is filled by a generator (random
keys and descriptors in the table's own entry layout, spread over the partitions), never by
images. Then an extractor-only worker starts on it while one upload event waits in the input
topic, and the run measures the time from the worker's start to that image's descriptor message
(the table must be recovered before the extractor runs) and the worker's RSS then. For RocksDB
the same worker is also restarted on its own table directory (only the changelog's tail is read).

Failover: two extractor workers share the filled table; one is killed with ``kill -9`` and the
time until the survivor has extracted one image in each of the dead worker's partitions is
measured with and without standby replicas.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app.stream import broker
from tools.bench.images import Images
from tools.bench.runner import REPO, _free_port, wait_http
from tools.base.process import Process
from app.stream.messages import ImageUploaded
from app.core.settings import Settings
from app.storage.objectstore import ObjectStore
from tables import descriptors


@dataclass
class Pipeline:
    """Private topics and a changelog for one measurement."""

    settings: Settings
    env: dict[str, str]

    @property
    def changelog(self) -> str:
        return self.settings.descriptor_changelog_topic


def _pipeline(base: Settings, tag: str) -> Pipeline:
    app_id = f"state-{tag}"
    update = {"app_id": app_id, "input_topic": f"{app_id}-images-input-stream",
              "features_topic": f"{app_id}-image-features-stream", "dead_letter_topic": f"{app_id}-images-dead-letter",
              "roles": ("extractor",)}
    env = {f"IMGSTREAM_{k.upper()}": v for k, v in update.items() if k != "roles"}
    env["IMGSTREAM_ROLES"] = "extractor"
    env["IMGSTREAM_RESEND_AFTER_S"] = "0"
    return Pipeline(base.model_copy(update=update), env)


async def fill_changelog(p: Pipeline, entries: int, version: str, log=print) -> float:
    """Create the compacted changelog and write ``entries`` distinct entries; returns seconds."""
    s = p.settings
    admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(p.changelog, s.topic_partitions, s.topic_replicas,
                                            topic_configs={"cleanup.policy": "compact"})])
    finally:
        await admin.close()
    await broker.ensure_topics(s)
    if not entries:
        return 0.0
    producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap, linger_ms=20, max_batch_size=1 << 20,
                                compression_type="lz4" if _has_lz4() else None)
    await producer.start()
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    try:
        chunk = 20_000
        now = time.time()
        for lo in range(0, entries, chunk):
            n = min(chunk, entries - lo)
            desc = rng.standard_normal((n, s.descriptor_k), dtype=np.float32)
            keys = rng.bytes(32 * n)
            futs = []
            for i in range(n):
                part = (lo + i) % s.topic_partitions
                key = b'"' + keys[32 * i:32 * i + 32].hex().encode() + b'"'
                value = descriptors.pack(version, desc[i], uuid.UUID(int=lo + i), partition=part, written_at=now)
                futs.append(await producer.send(p.changelog, value, key=key, partition=part))
            await asyncio.gather(*futs)
            if (lo // chunk) % 10 == 0:
                log(f"    {lo + n} / {entries} entries written")
    finally:
        await producer.stop()
    return time.perf_counter() - started


def _has_lz4() -> bool:
    try:
        import lz4  # noqa: F401
        return True
    except ImportError:
        return False


class Images1:
    """Upload events for images put straight into the object store (no HTTP front)."""

    def __init__(self, settings: Settings, source: Path) -> None:
        self.settings = settings
        self.images = Images(source, 64).take(64)
        self.i = 0

    async def send(self, p: Pipeline, partitions: list[int]) -> list[str]:
        import hashlib

        ids = []
        async with ObjectStore(self.settings) as store:
            producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap)
            await producer.start()
            try:
                for part in partitions:
                    data = self.images[self.i % len(self.images)] + str(self.i).encode()  # distinct bytes
                    self.i += 1
                    image_id = str(uuid.uuid4())
                    key = f"raw-images/state/{image_id}.jpg"
                    await store.put(key, data, "image/jpeg")
                    sha = hashlib.sha256(data).hexdigest()
                    msg = ImageUploaded(image_id, key, sha, len(data), "image/jpeg", time.time())
                    await producer.send_and_wait(p.settings.input_topic, msg.dumps(), key=sha.encode(), partition=part)
                    ids.append(image_id)
            finally:
                await producer.stop()
        return ids


async def _features_count(p: Pipeline) -> int:
    return sum((await broker.end_offsets(p.settings, p.settings.features_topic)).values())


async def _wait_features(p: Pipeline, count: int, timeout: float, proc: Process | None = None) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc is not None and proc.exited() is not None:
            raise RuntimeError(f"worker exited; see {proc.log_file}")
        if await _features_count(p) >= count:
            return time.monotonic()
        await asyncio.sleep(0.2)
    raise TimeoutError(f"fewer than {count} descriptor messages after {timeout:.0f}s")


def _rss_mb(pid: int) -> tuple[float, float]:
    rss = hwm = float("nan")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
    return rss, hwm


class StateBench:
    def __init__(self, settings: Settings, source: Path, sizes: list[int], stores: list[str],
                 failover_entries: int, log=print) -> None:
        self.settings, self.source, self.sizes, self.stores, self.log = settings, source, sizes, stores, log
        self.failover_entries = failover_entries
        self.run_id = uuid.uuid4().hex[:6]
        self.logs = settings.state_dir / "bench" / f"state-{self.run_id}"
        self.images = Images1(settings, source)
        self.procs: list[Process] = []

    def worker(self, p: Pipeline, store: str, port: int, name: str, **extra: str) -> Process:
        env = {**p.env, "IMGSTREAM_TABLE_STORE": store, "IMGSTREAM_WEB_PORT": str(port), **extra}
        proc = Process(name, self.logs / f"{name}.log").start([sys.executable, "-m", "app.ops.cli", "worker", "-l", "warn"],
                                                               env=env, cwd=REPO)
        self.procs.append(proc)
        return proc

    def table_dir(self, p: Pipeline, port: int) -> Path:
        return p.settings.model_copy(update={"web_port": port}).worker_table_dir

    async def start_to_first(self, p: Pipeline, store: str, port: int, name: str) -> dict:
        """Start a worker with one upload waiting; seconds until its descriptor message, RSS then."""
        expected = await _features_count(p) + 1
        await self.images.send(p, [0])
        started = time.monotonic()
        proc = self.worker(p, store, port, name)
        try:
            first = await _wait_features(p, expected, timeout=900, proc=proc)
            await asyncio.sleep(2)  # let the recovery's garbage go
            rss, hwm = _rss_mb(proc.pid())
            return {"start_to_first_extraction_s": first - started, "rss_mb": rss, "peak_rss_mb": hwm}
        finally:
            proc.stop()

    async def sizes_run(self, version: str) -> list[dict]:
        rows = []
        for n in self.sizes:
            p = _pipeline(self.settings, f"{self.run_id}-{n}")
            self.log(f"  filling the changelog with {n} entries")
            fill_s = await fill_changelog(p, n, version, self.log)
            for store in self.stores:
                port = _free_port()
                self.log(f"  {store}, {n} entries: cold start")
                cold = await self.start_to_first(p, store, port, f"{store}-{n}-cold")
                row = {"entries": n, "store": store, "fill_s": fill_s, "cold": cold}
                if store == "rocksdb":
                    self.log(f"  {store}, {n} entries: restart on its own table directory")
                    row["restart"] = await self.start_to_first(p, store, port, f"{store}-{n}-restart")
                    row["disk_mb"] = _du_mb(self.table_dir(p, port))
                    shutil.rmtree(self.table_dir(p, port), ignore_errors=True)
                rows.append(row)
                self.log(f"    {row}")
        return rows

    async def failover(self, version: str, standbys: int) -> dict:
        """Two extractor workers (RocksDB) on a table of ``failover_entries``; ``kill -9`` one."""
        n = self.failover_entries
        p = _pipeline(self.settings, f"{self.run_id}-fo{standbys}")
        self.log(f"  failover with {standbys} standby replica(s): filling {n} entries")
        await fill_changelog(p, n, version, self.log)
        extra = {"IMGSTREAM_TABLE_STANDBY_REPLICAS": str(standbys)}
        ports = [_free_port(), _free_port()]
        a = self.worker(p, "rocksdb", ports[0], f"failover{standbys}-a", **extra)
        b = self.worker(p, "rocksdb", ports[1], f"failover{standbys}-b", **extra)
        try:
            for proc, port in ((a, ports[0]), (b, ports[1])):
                await wait_http(f"http://127.0.0.1:{port}/health", timeout=900, proc=proc)
            # both own partitions and have recovered them: one image per partition extracted
            expected = await _features_count(p) + self.settings.topic_partitions
            await self.images.send(p, list(range(self.settings.topic_partitions)))
            await _wait_features(p, expected, timeout=900)
            # standbys (if any) copy the other worker's partitions in the background: wait until
            # both table directories stop growing
            await _settle([self.table_dir(p, port) for port in ports], quiet_s=15, timeout=900)
            os.kill(a.pid(), signal.SIGKILL)
            killed = time.monotonic()
            expected = await _features_count(p) + self.settings.topic_partitions
            await self.images.send(p, list(range(self.settings.topic_partitions)))
            done = await _wait_features(p, expected, timeout=900, proc=b)
            return {"entries": n, "standby_replicas": standbys, "kill9_to_extracting_s": done - killed,
                    "session_timeout_s": self.settings.kafka_session_timeout}
        finally:
            for proc in (a, b):
                proc.stop()
            for port in ports:
                shutil.rmtree(self.table_dir(p, port), ignore_errors=True)

    async def throughput(self) -> list[dict]:
        """Saturation throughput of a worker with every role on each store, side by side (every
        upload distinct, so every one is a table miss and a table write)."""
        from tools.bench.runner import Bench
        from tools.bench.images import DistinctImages

        base = Images(self.source, 700).take(700)
        out = []
        for i, store in enumerate(self.stores):
            bench = Bench(self.settings, quick=False, source=self.source, out=Path("."), log=self.log)
            env = bench.env(f"tp-{store}", IMGSTREAM_TABLE_STORE=store)
            images = DistinctImages(base, f"{self.run_id}-{store}")
            _, url = await bench.worker(env, f"throughput-{store}")
            try:
                await bench.saturate(url, [images[j] for j in range(32)])
                sat = await bench.saturate(url, [images[j] for j in range(32, 632)])
                out.append({"store": store, "images_per_s": sat["images_per_s"], "images": sat["images"]})
                self.log(f"  {store}: {sat['images_per_s']:.1f} images/s at saturation")
            finally:
                bench.stop_all()
                await broker.delete_topics(self.settings, env["IMGSTREAM_APP_ID"])
        return out

    async def run(self) -> dict:
        from app.bundles import registry

        async with ObjectStore(self.settings) as store:
            version = await registry.resolve(store, self.settings.bundle_version)
        result = {"started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "bundle": version,
                  "partitions": self.settings.topic_partitions, "table_cache_mb": self.settings.table_cache_mb}
        try:
            result["throughput"] = await self.throughput()
            result["sizes"] = await self.sizes_run(version)
            if self.failover_entries:
                result["failover"] = [await self.failover(version, s) for s in (1, 0)]
        finally:
            for proc in self.procs:
                proc.stop()
            await broker.delete_topics(self.settings, f"state-{self.run_id}-")
        return result


def _du_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20 if path.exists() else 0.0


async def _settle(paths: list[Path], quiet_s: float, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        size = sum(_du_mb(p) for p in paths)
        if size != last:
            last, since = size, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        await asyncio.sleep(1)


def markdown(result: dict) -> str:
    lines = [
        "## The descriptor table: memory, start and failover",
        "",
        f"`imgstream table-state`, run {result['started']} UTC (bundle `{result['bundle']}`, "
        f"{result['partitions']} partitions, RocksDB block cache {result['table_cache_mb']} MB per partition). "
        "The changelog is filled by a generator (random keys and descriptors in the table's entry layout), then an "
        "extractor-only worker starts with one upload waiting: *start to first extraction* is from the process's "
        "start to that image's descriptor message (the table's partitions are recovered first), *RSS* is the "
        "worker's resident memory 2 s after it. *Restart*: the same worker started again on its own table "
        "directory (RocksDB keeps the changelog offset it has, so only the tail is read).",
        "",
        "| entries | store | start to first extraction (s) | RSS (MB) | peak RSS (MB) | restart: start to first "
        "extraction (s) | restart: RSS (MB) | table on disk (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result.get("sizes", []):
        c, re_ = r["cold"], r.get("restart")
        lines.append(f"| {r['entries']:,} | {r['store']} | {c['start_to_first_extraction_s']:.1f} | {c['rss_mb']:.0f} | "
                     f"{c['peak_rss_mb']:.0f} | {re_['start_to_first_extraction_s']:.1f} | {re_['rss_mb']:.0f} | "
                     f"{r['disk_mb']:.0f} |" if re_ else
                     f"| {r['entries']:,} | {r['store']} | {c['start_to_first_extraction_s']:.1f} | {c['rss_mb']:.0f} | "
                     f"{c['peak_rss_mb']:.0f} | (same as the first start) | - | - |")
    if result.get("throughput"):
        lines += ["", "Saturation throughput of one worker with every role (600 distinct CIFAR-10 uploads after 32 "
                  "to warm up; every upload a table miss and a table write), the stores one after the other in the "
                  "same run:", "", "| store | images/s |", "|---|---|"]
        lines += [f"| {t['store']} | {t['images_per_s']:.1f} |" for t in result["throughput"]]
    if result.get("failover"):
        lines += [
            "",
            "Failover: two extractor workers (RocksDB) share the table; once both have extracted and their table "
            "directories have stopped growing, one is killed with `kill -9` and one upload is sent to each "
            "partition. *kill -9 to extracting* is until the last of them has its descriptor message, which "
            "includes the broker noticing the death (session timeout) and the survivor recovering the dead "
            "worker's partitions.",
            "",
            "| entries | standby replicas | kill -9 to extracting (s) | of which session timeout (s) |",
            "|---|---|---|---|",
        ]
        for f in result["failover"]:
            lines.append(f"| {f['entries']:,} | {f['standby_replicas']} | {f['kill9_to_extracting_s']:.1f} | "
                         f"{f['session_timeout_s']:.0f} |")
    return "\n".join(lines)


__all__ = ["StateBench", "markdown", "REPO"]
