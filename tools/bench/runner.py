"""The benchmark: every number side by side in one run, written to docs/BENCHMARKS.md + a PNG.

Phases (each on its own Kafka topics and consumer groups, each on images no earlier phase used,
so the descriptor table never short-cuts an extraction):

1. the limit — bare onnxruntime: decode + preprocess + inference, same batch size and threads;
2. imgstream at saturation (closed loop) as a ratio of the limit;
3. open-loop latency at 10 %, 50 % and 80 % of that saturation, end to end and per stage;
4. message sizes and classifier cost per prediction inside the pipeline;
5. peers: a plain synchronous HTTP service, and the original "before" design (full images
   through Kafka, a backbone per classifier);
6. scaling: 1 vs 2 worker processes on 4 partitions; 7. peak RSS per worker role;
8. ResNet50 with random weights (speed only); 9. GPU, where one is lent (here: none);
11. levers: asyncio or uvloop, aioboto3 or obstore for the per-image S3 calls, at saturation;
10. photos: JPEGs at 640x480, 1920x1080 and 4032x3024 (tools/bench/photos.py), each size with its
   bare limit, imgstream at saturation and at 10 % load, and the peers; with ``--baseline REF``
   the same phase also runs workers checked out at git ref REF, for a before/after in one run.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import signal
import subprocess
import sys
import time
import uuid
from importlib import metadata
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app.stream import broker

from app.bundles import registry
from tools.bench import load, profile
from tools.bench.images import Images
from tools.bench.cpu import CpuMeter, local_service_pids, per_image_ms, thread_cpu
from tools.base.process import Process
from app.stream.messages import ImageUploaded
from app.core.settings import ROLES, Settings
from app.storage.objectstore import ObjectStore
from models.domain import CLASSIFIERS
from models.bundle import Bundle
from models.preprocess import preprocess

REPO = Path(__file__).resolve().parents[2]
KAFKA_DEFAULT_MESSAGE_BYTES = 1_000_000  # message.max.bytes / max.request.size defaults, about 1 MB


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    libs = {}
    for lib in ("onnxruntime", "lightgbm", "faust-streaming", "aiokafka", "numpy", "pillow", "asyncpg", "aiohttp"):
        try:
            libs[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            libs[lib] = "-"
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "libs": libs}


async def wait_http(url: str, timeout: float = 120, proc: Process | None = None) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if proc is not None and proc.exited() is not None:
                raise RuntimeError(f"process exited; see {proc.log_file}")
            try:
                async with s.get(url, timeout=aiohttp.ClientTimeout(total=5)) as r:
                    if r.status in (200, 405):
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.3)
    raise TimeoutError(f"{url} not ready after {timeout}s")


class Bench:
    def __init__(self, settings: Settings, quick: bool, source: Path, out: Path, log=print,
                 baseline: str | None = None, brokers: int = 1) -> None:
        self.settings, self.quick, self.source, self.out, self.log = settings, quick, source, out, log
        self.run_id = uuid.uuid4().hex[:6]
        self.logs = settings.state_dir / "bench" / self.run_id
        self.procs: list[Process] = []
        self.result: dict = {"quick": quick, "machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.dsn = settings.postgres_dsn.get_secret_value()
        self.n = 160 if quick else 600
        self.baseline = baseline
        self.brokers = brokers  # 3: the main phase also runs on the three-broker cluster

    # --- processes ------------------------------------------------------------------------------
    def env(self, tag: str, **extra: str) -> dict[str, str]:
        u = f"bench-{self.run_id}-{tag}"
        return {"IMGSTREAM_APP_ID": u, "IMGSTREAM_INPUT_TOPIC": f"{u}-images-input-stream",
                "IMGSTREAM_FEATURES_TOPIC": f"{u}-image-features-stream",
                "IMGSTREAM_DEAD_LETTER_TOPIC": f"{u}-images-dead-letter", **extra}

    def spawn(self, argv: list[str], env: dict[str, str], name: str, cwd: Path = REPO) -> Process:
        p = Process(name, self.logs / f"{name}.log").start(argv, env=env, cwd=cwd)
        self.procs.append(p)
        return p

    async def worker(self, env: dict[str, str], name: str, roles: str | None = None,
                     cwd: Path = REPO) -> tuple[Process, str]:
        """A worker of this checkout, or (``cwd``) of another one: ``python -m`` imports the
        packages of its working directory first."""
        port = _free_port()
        extra = {"IMGSTREAM_WEB_PORT": str(port), **({"IMGSTREAM_ROLES": roles} if roles else {})}
        p = self.spawn([sys.executable, "-m", "app.ops.cli", "worker", "-l", "warn"], {**env, **extra}, name, cwd=cwd)
        url = f"http://127.0.0.1:{port}"
        await wait_http(f"{url}/health", proc=p)
        return p, url

    def stop_all(self) -> None:
        for p in self.procs:
            p.stop()
        self.procs.clear()

    # --- phases ---------------------------------------------------------------------------------
    def limit(self, bundle: Bundle, images: list[bytes], batch: int, parallel: int) -> dict:
        """Bare onnxruntime: decode + preprocess + inference as the extractor does it — batches of
        ``batch``, each split into ``parallel`` chunks run side by side (IMGSTREAM_ONNX_PARALLEL)
        with the bundle's intra-op threads — and nothing else running."""
        from concurrent.futures import ThreadPoolExecutor

        from agents.extractor import split_chunks

        spec = bundle.extractor.spec

        def chunk(part: list[bytes], wide: bool) -> None:
            bundle.descriptors(np.stack([preprocess(b, spec) for b in part]), wide)

        def once() -> float:
            t = time.perf_counter()
            with ThreadPoolExecutor(parallel) as pool:
                for i in range(0, len(images), batch):
                    parts = split_chunks(images[i:i + batch], parallel)
                    list(pool.map(chunk, parts, [len(parts) == 1] * len(parts)))
            return len(images) / (time.perf_counter() - t)

        once()  # warm-up
        cpu = time.process_time()
        rate = max(once(), once())
        cpu_ms = 1000 * (time.process_time() - cpu) / (2 * len(images))
        single = []
        for b in images[:50]:
            t = time.perf_counter()
            bundle.descriptors(preprocess(b, spec)[None], wide=True)
            single.append(time.perf_counter() - t)
        return {"images_per_s": rate, "batch": batch, "parallel_chunks": parallel,
                "intra_op_threads": bundle.extractor.threads, "cpu_ms_per_image": cpu_ms,
                "single_image_p50_ms": 1000 * load.pct(single, 50)}

    def limits(self, path: Path, images: list[bytes]) -> dict:
        """The limit is the better of two bare configurations, so a configuration that suits the
        pipeline can never lower the bar: the extractor's own (batch size, chunks side by side,
        intra-op threads) and onnxruntime's defaults (every core on one whole batch). The
        single-image latency is always the extractor's configuration."""
        s = self.settings
        ext = self.limit(Bundle.load(path, threads=s.worker_ort_threads, wide_threads=s.worker_wide_threads), images,
                         s.extract_batch_size, s.onnx_parallel)
        dflt = self.limit(Bundle.load(path, threads=0), images, s.extract_batch_size, 1)
        best = max((ext, dflt), key=lambda lim: lim["images_per_s"])
        return {"images_per_s": best["images_per_s"], "basis": "extractor" if best is ext else "ort_default",
                "batch": s.extract_batch_size, "cpu_ms_per_image": best["cpu_ms_per_image"],
                "single_image_p50_ms": ext["single_image_p50_ms"], "extractor": ext, "ort_default": dflt}

    async def saturate(self, url: str, images: list[bytes], concurrency: int = 32,
                       cpu_parts: dict[str, int] | None = None, model_version: str | None = None) -> dict:
        """Closed loop until every image has its three predictions (of ``model_version`` where the
        worker also runs shadow bundles, whose rows would otherwise count)."""
        meter = CpuMeter(cpu_parts) if cpu_parts else None
        if meter:
            meter.start()
        t = time.perf_counter()
        res = await load.closed_loop(f"{url}/upload", images, concurrency)
        await load.wait_rows(self.dsn, res.ids, 3, timeout=300, model_version=model_version)
        seconds = time.perf_counter() - t
        out = {"images": res.accepted, "seconds": seconds, "images_per_s": res.accepted / seconds, "ids": res.ids,
               "responses": res.responses}
        if meter:
            out["cpu"] = meter.stop(res.accepted)
        return out

    async def open_loop(self, url: str, images: list[bytes], rate: float, duration: float) -> dict:
        res = await load.open_loop(f"{url}/upload", images, rate, duration)
        await load.wait_rows(self.dsn, res.ids, 3, timeout=300)
        st = await load.stage_latencies(self.dsn, res.ids)
        return {"rate": rate, "sent": res.sent, "accepted": res.accepted,
                **{f"{k}_{q}_ms": 1000 * load.pct(v, q) for k, v in st.items() for q in (50, 95, 99)},
                "upload_http_p50_ms": 1000 * load.pct(res.client_latency_s, 50)}

    async def pipeline(self, tag: str, bundle_env: dict[str, str], images: Images, levels: bool = True,
                       fractions: tuple[float, ...] = (0.1, 0.5, 0.8), cwd: Path = REPO,
                       profile_loop: bool = False, passes: int = 1, paired_limit: Path | None = None,
                       warm_up: int = 32, service_pids: dict[str, int] | None = None) -> dict:
        """One worker: ``warm_up`` images, then saturation (the median of ``passes`` closed-loop
        passes, each on its own images; the machine's speed drifts between passes of one run),
        then open-loop latency.
        With ``paired_limit`` (a bundle), the bare limit is measured again right before each pass
        (the worker idle meanwhile), so each pass has a ratio to a limit of the same minutes."""
        env = self.env(tag, **bundle_env)
        proc, url = await self.worker(env, f"{tag}-worker", cwd=cwd)
        await self.saturate(url, images.take(warm_up))  # connections, batch shapes, the broker's JIT
        limit_images = images.take(128) if paired_limit else []
        runs, paired = [], []
        for _ in range(passes):
            if paired_limit:
                paired.append(self.limits(paired_limit, limit_images)["images_per_s"])
            pids = service_pids if service_pids is not None else local_service_pids(self.settings)
            runs.append(await self.saturate(url, images.take(self.n), cpu_parts={"worker": proc.pid(), **pids}))
        sat = sorted(runs, key=lambda r: r["images_per_s"])[len(runs) // 2]
        out = {"saturation": {k: v for k, v in sat.items() if k not in ("ids", "responses")}, "open_loop": [],
               "crops": await _crop_sources(url)}
        if passes > 1:
            out["saturation"]["passes_images_per_s"] = [r["images_per_s"] for r in runs]
        if paired:
            ratios = [r["images_per_s"] / lim for r, lim in zip(runs, paired, strict=True)]
            out["saturation"]["paired_limits"] = {"limits_images_per_s": paired, "ratios": ratios,
                                                  "median_ratio": float(np.median(ratios))}
        if profile_loop:  # a pass of its own: py-spy's sampling costs CPU the measured pass must not lose
            out["event_loop_profile"] = await self.profile_pass(proc, url, images)
        rows = await _pipeline_rows(self.dsn, sat["ids"])
        out["classifier_p99_ms"] = {c: load.pct(v, 99) for c, v in rows.items()}
        out["input_message_bytes"] = float(np.mean([len(ImageUploaded(r["image_id"], r["object_key"], r["sha256"],
                                                                      r["size"], r["content_type"], time.time()).dumps())
                                                    for r in sat["responses"]]))
        if levels:
            duration = 6.0 if self.quick else 20.0
            for frac in fractions:
                rate = frac * sat["images_per_s"]
                n = int(rate * duration * 1.5) + 10
                self.log(f"  open loop at {frac:.0%} of saturation: {rate:.1f} images/s for {duration:.0f}s")
                out["open_loop"].append({"fraction": frac, **await self.open_loop(url, images.take(n), rate, duration)})
        out["peak_rss_mb"] = proc.peak_rss_mb()
        self.stop_all()
        return out

    async def cluster(self, images: Images) -> dict:
        """The main phase (one pass of saturation, then 10 % load) on the single broker and on the
        three-broker cluster (replication factor 3, min.insync.replicas 2, idempotent producer), one
        right after the other: the cost of replication in throughput, latency and Kafka's CPU."""
        from tools.stack.cluster import KafkaCluster, cluster_settings, env as cluster_env

        stack = KafkaCluster(self.settings)
        was_running = all(n.proc.pid() is not None for n in stack.nodes)
        await asyncio.to_thread(stack.up)
        nodes = {n.name: n.proc.pid() for n in stack.nodes}
        services = local_service_pids(self.settings)
        out = {}
        try:
            for tag, extra, pids in (("single", {}, services),
                                     ("cluster", cluster_env(self.settings),
                                      {**{k: v for k, v in services.items() if k != "kafka"}, **nodes})):
                run = await self.pipeline(f"brokers-{tag}", extra, images, fractions=(0.1,), warm_up=self.n // 2,
                                          service_pids=pids)
                cpu = run["saturation"].get("cpu", {})
                kafka_ms = sum(v for k, v in cpu.get("ms_per_image", {}).items() if k.startswith("kafka"))
                out[tag] = {"images_per_s": run["saturation"]["images_per_s"], "open_loop": run["open_loop"][0],
                            "kafka_cpu_ms_per_image": kafka_ms, "cpu": cpu}
        finally:
            await broker.delete_topics(cluster_settings(self.settings), f"bench-{self.run_id}-")
            if not was_running:  # three idle JVMs would take CPU from the phases after this one
                await asyncio.to_thread(stack.down)
        return out

    async def profile_pass(self, proc: Process, url: str, images: Images) -> dict | None:
        """py-spy on the worker over a second saturation pass (its own images)."""
        spy_out = self.logs / f"{proc.name}-py-spy.txt"
        spy = profile.record(proc.pid(), 600, spy_out)
        if spy is None:
            return None
        started = time.perf_counter()
        profiled = await self.saturate(url, images.take(self.n))
        seconds = time.perf_counter() - started
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
        if not spy_out.exists():
            return None
        return {**profile.summarize(spy_out.read_text(), proc.pid(), seconds),
                "images_per_s_under_py_spy": profiled["images_per_s"]}

    async def sync_peer(self, images: Images, rate: float) -> dict:
        port = _free_port()
        p = self.spawn([sys.executable, "-m", "tools.bench.peers", "sync", "--port", str(port)], {}, "sync")
        url = f"http://127.0.0.1:{port}"
        await wait_http(f"{url}/upload", proc=p)
        await load.closed_loop(f"{url}/upload", images.take(16), 8)
        t = time.perf_counter()
        res = await load.closed_loop(f"{url}/upload", images.take(self.n), 32)
        sat = res.accepted / (time.perf_counter() - t)
        ol = await load.open_loop(f"{url}/upload", images.take(int(rate * 6 * 1.5) + 10), rate, 6.0)
        out = {"images_per_s": sat, "rate": rate, "latency_p50_ms": 1000 * load.pct(ol.client_latency_s, 50),
               "latency_p99_ms": 1000 * load.pct(ol.client_latency_s, 99), "peak_rss_mb": p.peak_rss_mb()}
        self.stop_all()
        return out

    async def before_peer(self, images: Images, n: int, rate: float) -> dict:
        tag = f"before-{self.run_id}"
        topic = f"bench-{self.run_id}-before-images"
        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic(topic, self.settings.topic_partitions, 1)])
        await admin.close()
        procs = [self.spawn([sys.executable, "-m", "tools.bench.peers", "before", "--topic", topic, "--classifier", c,
                             "--tag", tag, "--batch", str(self.settings.extract_batch_size)], {}, f"before-{c}")
                 for c in CLASSIFIERS]
        for p in procs:
            await _wait_line(p.log_file, "ready", p)
        producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap, acks="all",
                                    max_request_size=2 << 20)
        await producer.start()
        batch = images.take(n)
        sizes = [len(b) for b in batch]
        ids = [uuid.uuid4() for _ in batch]
        t = time.perf_counter()
        try:
            await asyncio.gather(*[producer.send_and_wait(topic, b, key=i.bytes) for i, b in zip(ids, batch,
                                                                                                  strict=True)])
            await load.wait_rows(self.dsn, [str(i) for i in ids], 3, timeout=600, model_version=tag)
            seconds = time.perf_counter() - t
            # latency at the same offered load as imgstream's 10 % point: Poisson sends, each image's
            # time from its send being confirmed to its third prediction committed
            sent_at: dict[uuid.UUID, float] = {}
            rng = random.Random(1)
            ol_images = images.take(int(rate * 20 * 1.5) + 5)
            start, tt, pending = time.time(), 0.0, []
            for b in ol_images:
                tt += rng.expovariate(rate)
                if tt > 20:
                    break
                await asyncio.sleep(max(0.0, start + tt - time.time()))
                i = uuid.uuid4()

                async def send(i=i, b=b):
                    await producer.send_and_wait(topic, b, key=i.bytes)
                    sent_at[i] = time.time()

                pending.append(asyncio.create_task(send()))
            await asyncio.gather(*pending)
        finally:
            await producer.stop()
        await load.wait_rows(self.dsn, [str(i) for i in sent_at], 3, timeout=300, model_version=tag)
        done = await _done_times(self.dsn, list(sent_at), tag)
        lat = [done[i] - sent_at[i] for i in sent_at if i in done]
        out = {"images": n, "images_per_s": n / seconds, "message_bytes_mean": float(np.mean(sizes)),
               "rate": rate, "latency_p50_ms": 1000 * load.pct(lat, 50), "latency_p99_ms": 1000 * load.pct(lat, 99),
               "peak_rss_mb_per_classifier": {c: p.peak_rss_mb() for c, p in zip(CLASSIFIERS,
                                                                                  procs, strict=True)}}
        self.stop_all()
        return out

    async def scaling(self, images: Images) -> dict:
        env = self.env("scale")
        out = {}
        for workers in (1, 2):
            env_w = {**env, "IMGSTREAM_APP_ID": f"{env['IMGSTREAM_APP_ID']}-{workers}"}
            urls = [(await self.worker(env_w, f"scale{workers}-{i}"))[1] for i in range(workers)]
            await asyncio.sleep(3)  # let the group settle on its partition assignment
            url = urls[0]
            await self.saturate(url, images.take(32))
            sat = await self.saturate(url, images.take(self.n))
            out[str(workers)] = sat["images_per_s"]
            self.stop_all()
        return out

    async def roles(self, images: Images) -> tuple[dict, dict]:
        """One worker per role, uploads through the front: each role's peak RSS, and its CPU per
        image by thread over the saturation (where each stage's event-loop time goes)."""
        env = self.env("roles")
        procs = {}
        urls = []
        for role in ROLES:
            p, url = await self.worker(env, f"role-{role}", roles=role)
            procs[role] = p
            urls.append(url)
        await self.saturate(urls[0], images.take(32))  # connections and batch shapes, as in pipeline()
        before = {role: thread_cpu(p.pid()) for role, p in procs.items()}
        sat = await self.saturate(urls[0], images.take(self.n // 2))
        cpu = {role: per_image_ms(before[role], thread_cpu(p.pid()), sat["images"]) for role, p in procs.items()}
        rss = {role: p.peak_rss_mb() for role, p in procs.items()}
        self.stop_all()
        return rss, cpu

    async def resnet(self, images: Images) -> dict:
        """ResNet50 with RANDOM weights: speed only."""
        bucket = f"{self.settings.s3_bucket}-bench-resnet"
        env = {"IMGSTREAM_S3_BUCKET": bucket}
        onnx = self.settings.state_dir / "onnx" / "resnet50-random.onnx"
        if not onnx.exists():
            _cli("models", "export", "--backbone", "resnet50", "--random-init", "--out", str(onnx))
        _cli("models", "train", "--data", str(self.source), "--backbone", "resnet50", "--onnx", str(onnx),
             "--limit-per-class", "12", "--no-sweep", env=env)
        s = Settings(s3_bucket=bucket)
        async with ObjectStore(s) as store:
            path = await registry.fetch(store, "latest", s.bundles_dir)
        bundle = Bundle.load(path, extractor=False)
        env["IMGSTREAM_BUNDLE_VERSION"] = bundle.version  # never the EfficientNet bundle pinned for the run
        lim = self.limits(path, images.take(128))
        saved_n, self.n = self.n, 160
        try:
            pipe = await self.pipeline("resnet", env, images, levels=False)
            # one open-loop level at 10 % of saturation
            proc, url = await self.worker(self.env("resnet-ol", **env), "resnet-ol")
            rate = 0.1 * pipe["saturation"]["images_per_s"]
            pipe["open_loop"] = [{"fraction": 0.1, **await self.open_loop(url, images.take(int(rate * 20 * 1.5) + 5),
                                                                        rate, 20.0)}]
            self.stop_all()
        finally:
            self.n = saved_n
        if pipe["saturation"]["images_per_s"] > 1.2 * lim["images_per_s"]:
            raise RuntimeError("ResNet50 pipeline faster than its own limit: the wrong bundle was loaded")
        return {"limit": lim, "pipeline": pipe, "bundle": bundle.version}

    async def shadows(self, images: Images, path: Path) -> dict:
        """The cost of shadow bundles: one worker at saturation with none, one (k = 10) and two
        (k = 10 and 50, PCA) beside the serving bundle, all on its backbone, in a bucket of their
        own (so they never become the 'latest' of the main bucket)."""
        bucket = f"{self.settings.s3_bucket}-bench-shadows"
        env = {"IMGSTREAM_S3_BUCKET": bucket}
        _cli("models", "publish", str(path), env=env)
        serving = Bundle.load(path, extractor=False).version
        shadows = []
        for k in (10, 50):
            _cli("models", "train", "--data", str(self.source), "--limit-per-class", "300", "--no-sweep",
                 "--reduction", "pca", "--k", str(k), env=env)
            async with ObjectStore(Settings(s3_bucket=bucket)) as store:
                shadows.append(await registry.resolve(store, "latest"))
        env["IMGSTREAM_BUNDLE_VERSION"] = serving
        out: dict = {"serving": serving, "shadows": shadows, "configs": {}}
        for i, (name, names) in enumerate((("none", []), ("one shadow (k = 10)", shadows[:1]),
                                           ("two shadows (k = 10 and 50)", shadows))):
            proc, url = await self.worker(self.env(f"shadow{i}", **env, IMGSTREAM_SHADOW_BUNDLES=",".join(names)),
                                          f"shadow{i}")
            await _wait_metric(url, "imgstream_shadow_bundles", len(names))
            await self.saturate(url, images.take(32), model_version=serving)
            sat = await self.saturate(url, images.take(self.n), model_version=serving,
                                      cpu_parts={"worker": proc.pid(), **local_service_pids(self.settings)})
            for version in names:  # the shadows' rows, written in the same batches, complete too
                await load.wait_rows(self.dsn, sat["ids"], 3, timeout=60, model_version=version)
            rows = await _rows_by_version(self.dsn, sat["ids"])
            out["configs"][name] = {"images_per_s": sat["images_per_s"], "cpu": sat["cpu"], "rows": rows}
            self.log(f"   {name}: {sat['images_per_s']:.1f} images/s, rows per bundle {rows}")
            self.stop_all()
        return out

    async def photos(self, path: Path) -> dict:
        """Each photo size: the bare limit (the extractor's configuration), imgstream at saturation
        and at 10 % of it, the synchronous peer, the 'before' design where Kafka can carry the
        photo, and with a baseline ref the same pipeline phase run by that ref's workers; on the
        largest photo, imgstream again with each put's body signed (the payload-signing lever)."""
        from app.storage.objectstore import signs_payload
        from tools.bench.photos import SIZES, Photos

        s = self.settings
        bundle = Bundle.load(path, threads=s.worker_ort_threads, wide_threads=s.worker_wide_threads)
        worktree = self._baseline_worktree() if self.baseline else None
        saved_n, self.n = self.n, 48 if self.quick else 240
        out: dict = {"sizes": {}, "baseline": self.baseline, "signing": s.s3_payload_signing,
                     "signs": signs_payload(s.s3_endpoint, s.s3_payload_signing)}
        try:
            for w, h in SIZES:
                name = f"{w}x{h}"
                photos = Photos((w, h), self.run_id)
                self.log(f"   {name}: {photos.mean_bytes / 1e6:.2f} MB per JPEG on average")
                row: dict = {"mean_bytes": photos.mean_bytes,
                             "limit": self.limit(bundle, photos.take(32 if self.quick else 96), s.extract_batch_size,
                                                 s.onnx_parallel)}
                row["imgstream"] = await self.pipeline(f"photo-{name}", {}, photos, fractions=(0.1,))
                sat = row["imgstream"]["saturation"]["images_per_s"]
                self.log(f"   {name}: limit {row['limit']['images_per_s']:.1f}, imgstream {sat:.1f} images/s")
                if (w, h) == SIZES[-1]:  # what signing the body costs shows on the largest photo
                    row["signed"] = await self.pipeline(f"photo-{name}-signed",
                                                        {"IMGSTREAM_S3_PAYLOAD_SIGNING": "signed"}, photos,
                                                        levels=False)
                    self.log(f"   {name}: body signed: {row['signed']['saturation']['images_per_s']:.1f} images/s")
                if worktree is not None:
                    row["baseline"] = await self.pipeline(f"photo-{name}-base", {}, photos, fractions=(0.1,),
                                                          cwd=worktree)
                    self.log(f"   {name}: baseline {self.baseline}: "
                             f"{row['baseline']['saturation']['images_per_s']:.1f} images/s")
                row["sync"] = await self.sync_peer(photos, 0.1 * sat)
                if photos.mean_bytes < KAFKA_DEFAULT_MESSAGE_BYTES:
                    row["before"] = await self.before_peer(photos, 24 if self.quick else 96, 0.1 * sat)
                else:
                    row["before"] = {"skipped": f"a {photos.mean_bytes / 1e6:.1f} MB photo does not fit Kafka's "
                                                f"default 1 MB message limit, which the 'before' design sends it in"}
                out["sizes"][name] = row
        finally:
            self.n = saved_n
            if worktree is not None:
                subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=REPO, check=False,
                               capture_output=True)
        return out

    async def levers(self, images: Images) -> dict:
        """The event loop's levers, each measured at saturation side by side in this run: the
        event loop implementation, the S3 client of the per-image calls, the extractor's batches
        in flight, one agent per classifier against one shared by the three, and the classifiers'
        raw scores from LightGBM against onnxruntime's tree ensembles."""
        configs = {"asyncio + aioboto3": {},
                   "uvloop + aioboto3": {"IMGSTREAM_EVENT_LOOP": "uvloop"},
                   "asyncio + obstore": {"IMGSTREAM_S3_DATA_CLIENT": "obstore"},
                   "uvloop + obstore": {"IMGSTREAM_EVENT_LOOP": "uvloop", "IMGSTREAM_S3_DATA_CLIENT": "obstore"},
                   "asyncio + obstore, one extractor batch in flight": {"IMGSTREAM_S3_DATA_CLIENT": "obstore",
                                                                         "IMGSTREAM_EXTRACT_PIPELINE_DEPTH": "1"},
                   "asyncio + obstore, two extractor batches in flight": {"IMGSTREAM_S3_DATA_CLIENT": "obstore",
                                                                           "IMGSTREAM_EXTRACT_PIPELINE_DEPTH": "2"},
                   "asyncio + obstore, one agent per classifier": {"IMGSTREAM_S3_DATA_CLIENT": "obstore",
                                                                    "IMGSTREAM_CLASSIFIER_AGENTS": "each"},
                   "asyncio + obstore, classifiers on LightGBM": {"IMGSTREAM_S3_DATA_CLIENT": "obstore",
                                                                   "IMGSTREAM_CLASSIFIER_RUNTIME": "lightgbm"}}
        base = {"IMGSTREAM_EVENT_LOOP": "asyncio", "IMGSTREAM_S3_DATA_CLIENT": "aioboto3",
                "IMGSTREAM_EXTRACT_PIPELINE_DEPTH": str(self.settings.extract_pipeline_depth),
                "IMGSTREAM_CLASSIFIER_AGENTS": self.settings.classifier_agents,
                "IMGSTREAM_CLASSIFIER_RUNTIME": self.settings.classifier_runtime}
        out = {}
        for i, (name, env) in enumerate(configs.items()):
            proc, url = await self.worker(self.env(f"lever{i}", **{**base, **env}), f"lever{i}")
            await self.saturate(url, images.take(32))
            sat = await self.saturate(url, images.take(self.n),
                                      cpu_parts={"worker": proc.pid(), **local_service_pids(self.settings)})
            out[name] = {"images_per_s": sat["images_per_s"], "cpu": sat["cpu"]}
            self.log(f"   {name}: {sat['images_per_s']:.1f} images/s, worker "
                     f"{sat['cpu']['ms_per_image']['worker']:.1f} CPU ms per image")
            self.stop_all()
        return out

    def _baseline_worktree(self) -> Path:
        worktree = self.logs / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), self.baseline], cwd=REPO, check=True,
                       capture_output=True)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=worktree, check=True,
                                capture_output=True, text=True).stdout.strip()
        self.baseline = f"{self.baseline} ({commit})" if commit not in self.baseline else self.baseline
        return worktree

    async def run(self) -> dict:
        s = self.settings
        # every upload distinct (the descriptor table never answers); the open-loop levels take more on a
        # faster machine: 16,000 ran out at about 120 images/s
        images = Images(self.source, 6000 if self.quick else 30000)
        async with ObjectStore(s) as store:
            path = await registry.fetch(store, s.bundle_version, s.bundles_dir)
        bundle = Bundle.load(path, extractor=False)
        self.result["bundle"] = {"version": bundle.version, "backbone": bundle.manifest["backbone"], "k": bundle.k}
        try:
            self.log("1. the limit: bare onnxruntime")
            lim = self.result["limit"] = self.limits(path, images.take(256))
            self.log(f"   {lim['images_per_s']:.1f} images/s (extractor's configuration "
                     f"{lim['extractor']['images_per_s']:.1f}, onnxruntime defaults {lim['ort_default']['images_per_s']:.1f})")
            self.log("2-4. imgstream: saturation, open-loop latency, sizes")
            # a full pass of warm-up: a fresh broker's JIT compiler threads are busiest over its first
            # minutes under load (reported as kafka_jit_ms_per_image)
            self.result["imgstream"] = await self.pipeline("main", {}, images, profile_loop=True, passes=3,
                                                           paired_limit=path, warm_up=32 if self.quick else self.n)
            sat = self.result["imgstream"]["saturation"]["images_per_s"]
            self.log(f"   saturation {sat:.1f} images/s")
            if self.brokers > 1:
                self.log("12. the three-broker cluster beside the single broker")
                self.result["cluster"] = await self.cluster(images)
            self.log("5a. peer: synchronous HTTP service")
            self.result["sync"] = await self.sync_peer(images, 0.1 * sat)
            self.log("5b. peer: the original 'before' design")
            self.result["before"] = await self.before_peer(images, 60 if self.quick else 240, 0.1 * sat)
            if not self.quick:
                self.log("6. scaling: 1 vs 2 workers")
                self.result["scaling"] = await self.scaling(images)
                self.log("7. peak RSS and CPU per role")
                self.result["roles_rss_mb"], self.result["roles_cpu_ms_per_image"] = await self.roles(images)
                self.log("8. ResNet50 (random weights, speed only)")
                self.result["resnet50_random"] = await self.resnet(images)
            self.log("11. levers: event loop and S3 client")
            self.result["levers"] = await self.levers(images)
            self.log("13. shadow bundles")
            self.result["shadows"] = await self.shadows(images, path)
            self.log("10. photos")
            self.result["photos"] = await self.photos(path)
            self.result["gpu"] = gpu_note()
        finally:
            self.stop_all()
            await broker.delete_topics(s, f"bench-{self.run_id}-")
        self.result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        return self.result


def gpu_note() -> str:
    try:
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            return "CUDAExecutionProvider available but not measured by this run"
    except ImportError:
        pass
    return ("No GPU on this machine, and this session was not lent the project's GPU machine: the extractor's "
            "onnxruntime CUDA throughput was not measured.")


async def _pipeline_rows(dsn: str, ids: list[str]) -> dict[str, list[float]]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT classifier, latency_ms FROM predictions WHERE image_id = ANY($1::uuid[])",
                                [uuid.UUID(i) for i in ids])
    finally:
        await conn.close()
    out: dict[str, list[float]] = {}
    for r in rows:
        out.setdefault(r["classifier"], []).append(r["latency_ms"])
    return out


async def _done_times(dsn: str, ids: list[uuid.UUID], tag: str) -> dict[uuid.UUID, float]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT image_id, max(created_at) AS done FROM predictions WHERE image_id = ANY($1::uuid[]) "
                                "AND model_version = $2 GROUP BY image_id HAVING count(*) = 3", ids, tag)
    finally:
        await conn.close()
    return {r["image_id"]: r["done"].timestamp() for r in rows}


async def _wait_line(path: Path, text: str, proc: Process, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.exited() is not None:
            raise RuntimeError(f"process exited; see {path}")
        if path.exists() and text in path.read_text(errors="replace"):
            return
        await asyncio.sleep(0.3)
    raise TimeoutError(f"{path}: no '{text}' after {timeout}s")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _metrics(url: str) -> dict[tuple[str, tuple], float]:
    """The worker's /metrics now: {(sample name, sorted labels): value}."""
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as s, s.get(f"{url}/metrics") as r:
        text = await r.text()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


async def _crop_sources(url: str) -> dict[str, float]:
    """Where the worker's extractor got its crops so far ({} from a worker without the metric):
    "upload" (decoded by its upload handler) or "fetched" (read back from S3, decoded again)."""
    return {dict(labels)["source"]: value for (name, labels), value in (await _metrics(url)).items()
            if name == "imgstream_extractor_crops_total"}


async def _wait_metric(url: str, name: str, value: float, timeout: float = 60) -> None:
    """Until the worker's /metrics shows ``name`` (unlabelled) at ``value`` (e.g. its shadow
    bundles loaded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (await _metrics(url)).get((name, ())) == value:
            return
        await asyncio.sleep(0.5)
    raise TimeoutError(f"{name} did not reach {value} within {timeout}s")


async def _rows_by_version(dsn: str, ids: list[str]) -> dict[str, int]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT model_version, count(*) AS n FROM predictions WHERE image_id = ANY($1::uuid[]) "
                                "GROUP BY model_version", [uuid.UUID(i) for i in ids])
    finally:
        await conn.close()
    return {r["model_version"]: r["n"] for r in rows}


def _cli(*args: str, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run([sys.executable, "-m", "app.ops.cli", *args], cwd=REPO, env={**os.environ, **(env or {})},
                          capture_output=True, text=True)
    if proc.returncode != 0:
        # the exit status tells a crash at interpreter exit (negative: the signal) from an error
        raise RuntimeError(f"imgstream {' '.join(args)} failed (exit status {proc.returncode}):\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def save_json(result: dict, path: Path) -> None:
    path.write_text(json.dumps(result, indent=2, default=float))
