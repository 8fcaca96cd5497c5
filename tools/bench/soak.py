"""``imgstream soak``: a long run at a fixed share of saturation with distinct images, sampling the
memory of every process, the consumer lag and the end-to-end p99 at a fixed interval.

One worker with every role on private topics, against the local stack. The offered load is
Poisson at ``fraction`` of the saturation throughput measured at the start of the same run. Every
upload has distinct bytes (a CIFAR-10 JPEG with a numbered comment segment), so the descriptor
table grows by one entry per upload and never answers. At the end the run waits for every
accepted upload to be classified and counts what was lost.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import numpy as np
import psutil

from app.stream import broker
from tools.bench import load
from tools.bench.cpu import local_service_pids
from tools.bench.images import DistinctImages, Images
from tools.bench.runner import Bench
from app.core.settings import Settings

DRAIN_TIMEOUT_S = 600.0  # after the load: how long the backlog may take before the rest counts as lost


def tree_memory_mb(pid: int) -> dict[str, float]:
    """RSS of the process and PSS of its whole tree (shared pages counted once), in MB."""
    root = psutil.Process(pid)
    rss = root.memory_info().rss
    pss = 0
    for p in (root, *root.children(recursive=True)):
        try:
            pss += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return {"rss_mb": rss / 2**20, "pss_mb": pss / 2**20}


_WINDOW_SQL = """
SELECT count(*) AS n, percentile_cont(0.99) WITHIN GROUP (ORDER BY e2e) AS p99,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY e2e) AS p50
FROM (SELECT extract(epoch FROM max(p.created_at) - i.accepted_at) AS e2e
      FROM predictions p JOIN images i USING (image_id)
      WHERE i.deployment = $1 AND p.model_version = i.bundle_version
        AND i.image_id IN (SELECT image_id FROM predictions WHERE created_at >= $2 AND created_at < $3)
      GROUP BY i.image_id, i.accepted_at
      HAVING count(*) = 3 AND max(p.created_at) >= $2 AND max(p.created_at) < $3) s
"""


@dataclass
class Sample:
    t: float  # seconds since the load started
    memory: dict[str, dict[str, float]]
    lag: int
    completed: int
    e2e_p50_ms: float
    e2e_p99_ms: float
    table_entries: float | None = None
    table_memory_mb: dict = field(default_factory=dict)


async def _table_gauges(url: str) -> tuple[float | None, dict[str, float]]:
    """The worker's table entries (as of its last expiry pass) and RocksDB's memory by kind (MB)."""
    import aiohttp

    from prometheus_client.parser import text_string_to_metric_families

    try:
        async with aiohttp.ClientSession() as s, s.get(f"{url}/metrics") as r:
            text = await r.text()
    except aiohttp.ClientError:
        return None, {}
    entries, memory = None, {}
    for fam in text_string_to_metric_families(text):
        if fam.name == "imgstream_descriptor_table_entries":
            entries = sum(s.value for s in fam.samples)
        elif fam.name == "imgstream_descriptor_table_memory_bytes":
            memory = {s.labels["kind"]: s.value / 2**20 for s in fam.samples}
    return entries, memory


class Soak:
    def __init__(self, settings: Settings, source: Path, *, duration: float, warmup: float, interval: float,
                 fraction: float, rate: float | None, log=print) -> None:
        self.settings, self.source, self.log = settings, source, log
        self.duration, self.warmup, self.interval, self.fraction, self.rate = duration, warmup, interval, fraction, rate
        self.bench = Bench(settings, quick=False, source=source, out=Path("."), log=log)

    async def _sample(self, conn, deployment: str, group_settings: Settings, parts: dict[str, int],
                      url: str, t0_wall: float, since: float, until: float) -> Sample:
        memory = {}
        for name, pid in parts.items():
            try:
                memory[name] = tree_memory_mb(pid)
            except psutil.NoSuchProcess:
                memory[name] = {"rss_mb": float("nan"), "pss_mb": float("nan")}
        lag = await broker.consumer_lag(group_settings, group_settings.group_id,
                                        [group_settings.input_topic, group_settings.features_topic])
        from datetime import UTC, datetime

        row = await conn.fetchrow(_WINDOW_SQL, deployment, datetime.fromtimestamp(since, UTC),
                                  datetime.fromtimestamp(until, UTC))
        ms = lambda v: float("nan") if v is None else 1000 * float(v)  # noqa: E731
        entries, table_memory = await _table_gauges(url)
        return Sample(until - t0_wall, memory, sum(lag.values()), int(row["n"]), ms(row["p50"]), ms(row["p99"]),
                      entries, table_memory)

    async def run(self) -> dict:
        b = self.bench
        env = b.env("soak")
        group_settings = self.settings.model_copy(update={
            "app_id": env["IMGSTREAM_APP_ID"], "input_topic": env["IMGSTREAM_INPUT_TOPIC"],
            "features_topic": env["IMGSTREAM_FEATURES_TOPIC"], "dead_letter_topic": env["IMGSTREAM_DEAD_LETTER_TOPIC"]})
        deployment = group_settings.deployment
        base = Images(self.source, 2000).take(2000)
        images = DistinctImages(base, b.run_id)
        pos = 0

        def take(n: int) -> list[bytes]:
            nonlocal pos
            out = [images[pos + i] for i in range(n)]
            pos += n
            return out

        try:
            proc, url = await b.worker(env, "soak-worker")
            warm = await b.saturate(url, take(32))
            sat = await b.saturate(url, take(600))
            rate = self.rate or self.fraction * sat["images_per_s"]
            self.log(f"saturation {sat['images_per_s']:.1f} images/s; soak at {rate:.1f} images/s "
                     f"for {self.duration:.0f}s, sampling every {self.interval:.0f}s")
            parts = {"worker": proc.pid(), **local_service_pids(self.settings)}
            conn = await asyncpg.connect(b.dsn)
            samples: list[Sample] = []
            rest = DistinctImages(base, b.run_id + "-soak")
            t0 = time.time()
            loader = asyncio.create_task(load.open_loop(f"{url}/upload", rest, rate, self.duration, seed=7))
            try:
                last = t0
                while not loader.done():
                    await asyncio.wait({loader}, timeout=max(0.0, last + self.interval - time.time()))
                    now = time.time()
                    if now - last < self.interval * 0.5 and loader.done():
                        break
                    s = await self._sample(conn, deployment, group_settings, parts, url, t0, last, now)
                    samples.append(s)
                    last = now
                    self.log(f"  t={s.t:5.0f}s worker RSS {s.memory['worker']['rss_mb']:.0f} MB, lag {s.lag}, "
                             f"e2e p99 {s.e2e_p99_ms:.0f} ms ({s.completed} done), table {s.table_entries} "
                             f"entries, RocksDB {sum(s.table_memory_mb.values()):.1f} MB")
                res = loader.result()
                drained = time.time()
                lost = await _wait_all(conn, deployment, warm["images"] + sat["images"] + res.accepted, timeout=DRAIN_TIMEOUT_S)
                drain_s = time.time() - drained
            finally:
                await conn.close()
        finally:
            b.stop_all()
            await broker.delete_topics(self.settings, f"bench-{b.run_id}-")
        return {"settings": {"duration_s": self.duration, "warmup_s": self.warmup, "interval_s": self.interval,
                             "fraction": self.fraction, "rate": rate, "saturation_images_per_s": sat["images_per_s"],
                             "table_store": self.settings.table_store, "descriptor_ttl_s": self.settings.descriptor_ttl_s},
                "machine": b.result["machine"], "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t0)),
                "sent": res.sent, "accepted": res.accepted, "lost": lost, "drain_s": drain_s,
                "samples": [s.__dict__ for s in samples], "summary": summarize(samples, self.warmup)}


async def _wait_all(conn, deployment: str, expected: int, timeout: float) -> int:
    """Wait until ``expected`` uploads of ``deployment`` have the three predictions of their
    bundle; returns how many do not."""
    deadline = time.monotonic() + timeout
    while True:
        done = await conn.fetchval(
            """SELECT count(*) FROM images i WHERE i.deployment = $1 AND
                 (SELECT count(*) FROM predictions p WHERE p.image_id = i.image_id
                    AND p.model_version = i.bundle_version) = 3""", deployment)
        if done >= expected or time.monotonic() > deadline:
            return max(0, expected - done)
        await asyncio.sleep(5)


def summarize(samples: list[Sample], warmup: float) -> dict:
    """Growth of each process's memory from the first sample after the warm-up to the last (the
    median of the first and of the last three samples, so one GC pause does not decide it), the
    lag's maximum after the warm-up and its value at the end, and the worst window p99."""
    after = [s for s in samples if s.t >= warmup]
    if len(after) < 2:
        return {}
    head, tail = after[:3], after[-3:]
    growth = {}
    for name in after[0].memory:
        for kind in ("rss_mb", "pss_mb"):
            a = float(np.median([s.memory[name][kind] for s in head]))
            z = float(np.median([s.memory[name][kind] for s in tail]))
            growth.setdefault(name, {})[kind] = {"start": a, "end": z, "growth_pct": 100 * (z / a - 1) if a else None}
    p99 = [s.e2e_p99_ms for s in after if s.completed]
    return {"memory": growth, "lag_max": max(s.lag for s in after), "lag_end": after[-1].lag,
            "e2e_p99_ms_max": max(p99) if p99 else None, "e2e_p99_ms_median": float(np.median(p99)) if p99 else None}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    t = [s["t"] / 60 for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(8, 8), dpi=100, sharex=True)
    for name in samples[0]["memory"]:
        key = "rss_mb" if name == "worker" else "pss_mb"
        axes[0].plot(t, [s["memory"][name][key] for s in samples], label=f"{name} ({key[:3].upper()})")
    if any(s.get("table_memory_mb") for s in samples):
        axes[0].plot(t, [sum(s["table_memory_mb"].values()) for s in samples], ls="--",
                     label="worker: RocksDB's own (memtables, caches)")
    axes[0].set_ylabel("memory (MB)")
    axes[0].legend(fontsize=8)
    axes[1].plot(t, [s["lag"] for s in samples], color="tab:red")
    axes[1].set_ylabel("consumer lag (messages)")
    axes[2].plot(t, [s["e2e_p99_ms"] for s in samples], label="p99")
    axes[2].plot(t, [s["e2e_p50_ms"] for s in samples], label="p50")
    axes[2].set_ylabel("end to end (ms)")
    axes[2].set_xlabel("minutes since the load started")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.axvline(result["settings"]["warmup_s"] / 60, color="grey", lw=0.8, ls="--")
        ax.grid(alpha=0.3)
    st = result["settings"]
    axes[0].set_title(f"soak: {st['rate']:.1f} images/s ({st['fraction']:.0%} of saturation), "
                      f"{st['duration_s'] / 60:.0f} min, {st['table_store']} table")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=float))


def markdown(result: dict, png: str) -> str:
    st, sm = result["settings"], result["summary"]
    m = result["machine"]
    lines = [
        "## Soak",
        "",
        f"`imgstream soak`, started {result['started']} UTC on {m['cores']} cores ({m['cpu']}): one worker with "
        f"every role, {st['rate']:.1f} images/s offered (Poisson; {st['fraction']:.0%} of the "
        f"{st['saturation_images_per_s']:.1f} images/s measured at saturation at the start of the run) for "
        f"{st['duration_s'] / 60:.0f} min, every upload distinct bytes (the descriptor table grows by one entry "
        f"per upload and never answers), the table on `{st['table_store']}` (TTL {st['descriptor_ttl_s']:.0f} s). "
        f"Sampled every {st['interval_s']:.0f} s; growth is measured from the warm-up's end "
        f"({st['warmup_s'] / 60:.0f} min) to the end (median of the first three and of the last three samples).",
        "",
        f"Sent {result['sent']}, accepted {result['accepted']}, **lost {result['lost']}** (accepted uploads without "
        f"three predictions {DRAIN_TIMEOUT_S // 60:.0f} min after the load ended; the backlog drained in {result['drain_s']:.0f} s).",
        "",
        "| process | memory measured | after warm-up (MB) | at the end (MB) | growth |",
        "|---|---|---|---|---|",
    ]
    for name, kinds in sm.get("memory", {}).items():
        for kind, g in kinds.items():
            if name != "worker" and kind == "rss_mb":
                continue  # services: the PSS of the process tree (shared pages once) says more
            label = "RSS" if kind == "rss_mb" else "PSS of the process tree"
            lines.append(f"| {name} | {label} | {g['start']:.0f} | {g['end']:.0f} | {g['growth_pct']:+.1f} % |")
    lines += [
        "",
        f"Consumer lag after the warm-up: at most {sm.get('lag_max')} messages, {sm.get('lag_end')} at the last "
        f"sample. End-to-end p99 per {st['interval_s']:.0f} s window after the warm-up: median "
        f"{sm.get('e2e_p99_ms_median') or float('nan'):.0f} ms, worst {sm.get('e2e_p99_ms_max') or float('nan'):.0f} ms.",
        "",
        f"![soak]({png})",
        "",
        "*Table entries* as the worker counted them at its last expiry pass (every "
        "`IMGSTREAM_DESCRIPTOR_EXPIRY_INTERVAL_S`); *RocksDB memory*: memtables, block cache and table readers as "
        "RocksDB reports them (part of the worker's RSS).",
        "",
        "| t (min) | worker RSS (MB) | kafka PSS (MB) | postgres PSS (MB) | s3 PSS (MB) | lag | completed | "
        "e2e p50 (ms) | e2e p99 (ms) | table entries (worker) | RocksDB memory (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in result["samples"]:
        mem = s["memory"]
        g = lambda n, k="pss_mb": f"{mem[n][k]:.0f}" if n in mem else "-"  # noqa: E731
        te = "-" if s.get("table_entries") is None else f"{s['table_entries']:.0f}"
        tm = f"{sum(s['table_memory_mb'].values()):.1f}" if s.get("table_memory_mb") else "-"
        lines.append(f"| {s['t'] / 60:.1f} | {g('worker', 'rss_mb')} | {g('kafka')} | {g('postgres')} | {g('s3')} | "
                     f"{s['lag']} | {s['completed']} | {s['e2e_p50_ms']:.0f} | {s['e2e_p99_ms']:.0f} | {te} | {tm} |")
    return "\n".join(lines)
