"""The worker image, built for real from the repository's Dockerfile (on a local Debian 12 base made
with mmdebstrap, since no image registry is reachable here) and run with podman on the host's
network against the local stack: three containers by role, as uid 10001 with a read-only root
filesystem and the state directory on a volume. Tests talk to the containers on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import uuid

import aiohttp
import pytest

from app.http.client import upload_bytes, wait_complete
from tests.containers.helpers import Container, http_get
from tests.workers import free_port, images_from, isolated_env, rows_per_image

pytestmark = pytest.mark.containers


def _env(unique: str) -> dict[str, str]:
    """What a container needs: the stack's settings from this environment, private topics."""
    keep = {k: v for k, v in os.environ.items() if k.startswith("IMGSTREAM_") and k not in ("IMGSTREAM_STATE_DIR",)}
    return {**keep, **isolated_env(unique)}


def test_the_image_runs_as_10001_with_its_health_check(worker_image):
    from tools.containers import podman

    proc = podman("run", "--rm", "--read-only", worker_image["tag"], "sh", "-c",
                  "id -u; python3 --version; imgstream --help >/dev/null && echo cli-ok; "
                  "touch /srv/imgstream/x 2>/dev/null || echo read-only")
    assert proc.stdout.split() == ["10001", "Python", proc.stdout.split()[2], "cli-ok", "read-only"]
    assert proc.stdout.split()[2].startswith("3.11.")
    (info,) = json.loads(podman("image", "inspect", worker_image["tag"]).stdout)
    check = info["Healthcheck"]["Test"]  # kept by the docker format (the OCI format drops it)
    assert "/live" in " ".join(check) and info["Config"]["User"] == "10001:10001"


async def test_three_containers_by_role_take_300_uploads_and_an_extractor_kill_loses_nothing(
        worker_image, stack, sample_images):
    unique = uuid.uuid4().hex[:8]
    env = _env(unique)
    roles = {"front": "front", "extractor": "extractor",
             "classifiers": "classifier-fast,classifier-balanced,classifier-accurate,dead-letter"}
    containers = {k: Container(worker_image["tag"], env, r, f"test-{unique}-{k}") for k, r in roles.items()}
    images = images_from(sample_images, 300, salt=unique)
    try:
        for c in containers.values():
            c.run()
        for c in containers.values():
            await asyncio.to_thread(c.wait_ready)
        front, extractor = containers["front"], containers["extractor"]
        async with aiohttp.ClientSession() as s:
            sem = asyncio.Semaphore(16)

            async def one(data):
                async with sem:
                    return await upload_bytes(s, front.url, data)

            first = await asyncio.gather(*(one(b) for b in images[:150]))
            extractor.podman("kill", extractor.name)  # SIGKILL, mid-stream
            rest = await asyncio.gather(*(one(b) for b in images[150:]))
            await asyncio.sleep(2)
            extractor.podman("start", extractor.name)
            results = first + rest
            assert [st for st, _ in results] == [202] * 300, "the front keeps accepting while the extractor is down"
            ids = [body["image_id"] for _, body in results]
            done = await wait_complete(s, front.url, ids, asyncio.get_running_loop().time() + 240)
        assert all(d["status"] == "complete" for d in done.values())
        assert await rows_per_image(stack.postgres_dsn.get_secret_value(), ids) == {i: 3 for i in ids}, \
            "0 lost, 0 doubled"
        # the image's HEALTHCHECK, run by podman inside the container
        for c in containers.values():
            assert c.podman("healthcheck", "run", c.name, check=False).returncode == 0, c.logs()
            state = c.inspect()
            assert state["Config"]["User"] == "10001:10001" and state["HostConfig"]["ReadonlyRootfs"]
        assert containers["front"].inspect()["RestartCount"] == 0
    finally:
        for c in containers.values():
            c.remove()


class _Proxy:
    """A TCP proxy on 127.0.0.1 to the stack's PostgreSQL that the test opens when it likes:
    'PostgreSQL down' for one container without stopping the database every other test uses. It
    runs on its own threads, so a test waiting on the container never blocks it."""

    def __init__(self, target: int) -> None:
        self.target, self.port, self.server = target, free_port(), None

    def open(self) -> None:
        import socketserver
        import threading

        target = self.target

        def pipe(src, dst):
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                upstream = socket.create_connection(("127.0.0.1", target))
                back = threading.Thread(target=pipe, args=(upstream, self.request), daemon=True)
                back.start()
                pipe(self.request, upstream)
                back.join()
                upstream.close()

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def test_a_container_started_with_postgres_down_stays_live_and_becomes_ready_when_it_returns(worker_image, stack):
    from urllib.parse import urlparse

    unique = uuid.uuid4().hex[:8]
    dsn = urlparse(stack.postgres_dsn.get_secret_value())
    proxy = _Proxy(dsn.port)  # not open yet: connections to its port are refused
    env = {**_env(unique), "IMGSTREAM_POSTGRES_DSN": dsn._replace(netloc=f"{dsn.username}:{dsn.password}@"
                                                                          f"127.0.0.1:{proxy.port}").geturl()}
    c = Container(worker_image["tag"], env, "front", f"test-{unique}-pgdown")
    try:
        c.run()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and http_get(f"{c.url}/live")[0] != 200:
            time.sleep(1)
        time.sleep(20)  # well past a readiness probe's failure threshold
        status, body = http_get(f"{c.url}/ready")
        assert status == 503 and '"postgres":{"ok":false' in body.replace(" ", ""), body
        assert http_get(f"{c.url}/live")[0] == 200
        state = c.inspect()
        assert state["State"]["Running"] and state["RestartCount"] == 0, "live: never restarted for an outage"
        proxy.open()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and http_get(f"{c.url}/ready")[0] != 200:
            time.sleep(1)
        assert http_get(f"{c.url}/ready")[0] == 200, c.logs()
    finally:
        proxy.close()
        c.remove()
