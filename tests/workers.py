"""Real worker processes for end-to-end and chaos tests, each test run with its own topics and
consumer groups (so no test reads another's history)."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tools.base.process import Process

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def isolated_env(unique: str, **extra: str) -> dict[str, str]:
    """Settings for a private pipeline: topics and app id unique to ``unique``, and the bundle
    pinned to the version that was latest when the session started (a bundle published meanwhile
    must not change what a test measures), and the sweeper off."""
    return {
        "IMGSTREAM_BUNDLE_VERSION": pinned_bundle(),
        "IMGSTREAM_APP_ID": f"test-{unique}",
        "IMGSTREAM_INPUT_TOPIC": f"test-{unique}-images-input-stream",
        "IMGSTREAM_FEATURES_TOPIC": f"test-{unique}-image-features-stream",
        "IMGSTREAM_DEAD_LETTER_TOPIC": f"test-{unique}-images-dead-letter",
        # The stream itself must lose nothing: tests run without the sweeper unless they test it.
        "IMGSTREAM_RESEND_AFTER_S": "0",
        **extra,
    }


_PINNED: list[str] = []


def pinned_bundle() -> str:
    if not _PINNED:
        import asyncio

        from app.bundles import registry
        from app.core.settings import Settings
        from app.storage.objectstore import ObjectStore

        async def latest() -> str:
            async with ObjectStore(Settings()) as store:
                return await registry.resolve(store, "latest")

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:  # callers may be inside a running event loop
            _PINNED.append(pool.submit(asyncio.run, latest()).result())
    return _PINNED[0]


def cli(*args: str, env: dict[str, str] | None = None) -> str:
    """``imgstream ARGS`` in a subprocess; its stdout (fails the test on a non-zero exit)."""
    import subprocess

    # faulthandler: a crash (a signal, not an exception) still says where it happened
    res = subprocess.run([sys.executable, "-X", "faulthandler", "-m", "app.ops.cli", *args], cwd=REPO,
                         env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"exit status {res.returncode}\n{res.stdout}{res.stderr}"
    return res.stdout


def train_bundle(dataset: Path, k: int, reduction: str = "pca", limit_per_class: int = 300) -> str:
    """Train and publish a bundle on the quick bundle's subset (its features are cached, so this
    takes seconds); returns its version."""
    out = cli("models", "train", "--data", str(dataset), "--limit-per-class", str(limit_per_class), "--no-sweep",
              "--reduction", reduction, "--k", str(k))
    return next(line.split()[1] for line in out.splitlines() if line.startswith("published "))


class Worker:
    """A worker process (tools.base.process.Process) on a free port, with its HTTP helpers."""

    def __init__(self, env: dict[str, str], roles: str | None = None, log_dir: Path | None = None,
                 entry: str = "app.ops.cli") -> None:
        """``entry``: the module run as ``python -m`` (a test wrapper such as tests.seek_window)."""
        self.entry = entry
        self.port = free_port()
        self.env = {**os.environ, **env, "IMGSTREAM_WEB_PORT": str(self.port)}
        if roles:
            self.env["IMGSTREAM_ROLES"] = roles
        self.log_path = (log_dir or Path("/tmp")) / f"worker-{self.port}.log"
        self.process = Process(f"worker-{self.port}", self.log_path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Worker:
        self.process.start([sys.executable, "-m", self.entry, "worker", "-l", "info"], env=self.env, cwd=REPO)
        return self

    @property
    def pid(self) -> int | None:
        return self.process.pid()

    def wait_healthy(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.process.exited() is not None:
                raise RuntimeError(f"worker exited {self.process.exited()}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except urllib.error.HTTPError as exc:
                last = exc.read().decode(errors="replace")
            except OSError as exc:
                last = str(exc)
            time.sleep(0.5)
        raise TimeoutError(f"worker not healthy after {timeout}s: {last}\n{self.log_tail()}")

    def metrics(self) -> dict[tuple[str, tuple], float]:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as r:
            text = r.read().decode()
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def metric_sum(self, name: str, **labels: str) -> float:
        return sum(v for (n, lbls), v in self.metrics().items()
                   if n == name and all(dict(lbls).get(k) == val for k, val in labels.items()))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        self.process.stop(sig, timeout)

    def kill9(self) -> None:
        self.process.kill9()

    def log_tail(self, n: int = 60) -> str:
        return self.process.log_tail(n)


def images_from(sample: list[tuple[str, bytes]], n: int, salt: str) -> list[bytes]:
    """``n`` distinct images: the samples, re-encoded with a private comment so no two runs share bytes."""
    import io

    from PIL import Image

    out = []
    for i in range(n):
        _, data = sample[i % len(sample)]
        im = Image.open(io.BytesIO(data))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=95, comment=f"{salt}-{i}".encode())
        out.append(buf.getvalue())
    return out


async def rows_per_image(dsn: str, ids: list[str], ssl=None) -> dict[str, int]:
    """Prediction rows per image id (every image of a complete pipeline has exactly three)."""
    import uuid

    import asyncpg

    conn = await asyncpg.connect(dsn, ssl=ssl)
    try:
        rows = await conn.fetch("SELECT image_id::text, count(*) FROM predictions WHERE image_id = ANY($1::uuid[]) "
                                "GROUP BY image_id", [uuid.UUID(i) for i in ids])
    finally:
        await conn.close()
    return {r[0]: r[1] for r in rows}
