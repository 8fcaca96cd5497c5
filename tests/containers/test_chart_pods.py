"""The Helm chart's pods, run: `helm template` with deploy/podman/values-local.yaml piped to
`podman kube play` (Deployments, ConfigMap, Secret and volumes as the chart renders them), the pods
on the host's network against the local stack. 300 uploads complete through the pods it starts,
and a second extractor pod played beside the first keeps 0 lost."""

from __future__ import annotations

import asyncio
import time
import uuid
from urllib.parse import urlparse

import aiohttp
import pytest

from app.http.client import upload_bytes, wait_complete
from app.core.settings import ROLES
from tests.containers.helpers import http_get
from tests.workers import free_port, images_from, pinned_bundle, rows_per_image

pytestmark = pytest.mark.containers


def _wait_ready(play, names, timeout: float = 300) -> None:
    from tools import kube_play
    from tools.containers import podman

    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending and time.monotonic() < deadline:
        for name in list(pending):
            if http_get(f"{play.url(name)}/ready")[0] == 200:
                pending.discard(name)
        time.sleep(1)
    states = {n: kube_play.pod_state(n).get("State", {}).get("Status") for n in pending}
    logs = {n: podman("logs", "--tail", "30", f"{n}-pod-0-worker", check=False).stderr[-3000:] for n in pending}
    assert not pending, f"not ready after {timeout}s: {states}\n{logs}"


async def _upload(url: str, images: list[bytes]) -> list[str]:
    async with aiohttp.ClientSession() as s:
        sem = asyncio.Semaphore(16)

        async def one(data):
            async with sem:
                return await upload_bytes(s, url, data)

        results = await asyncio.gather(*(one(b) for b in images))
    assert [st for st, _ in results] == [202] * len(images)
    return [body["image_id"] for _, body in results]


async def test_the_charts_pods_run_take_300_uploads_and_a_second_extractor_loses_nothing(
        worker_image, stack, sample_images, tmp_path):
    from tools import kube_play

    unique = uuid.uuid4().hex[:8]
    dsn = stack.postgres_dsn.get_secret_value()
    sets = [f"settings.app_id=test-{unique}", f"settings.input_topic=test-{unique}-images-input-stream",
            f"settings.features_topic=test-{unique}-image-features-stream",
            f"settings.dead_letter_topic=test-{unique}-images-dead-letter", f"settings.s3_bucket={stack.s3_bucket}",
            f"settings.bundle_version={pinned_bundle()}", "settings.resend_after_s=0",
            f"secrets.postgres_dsn={dsn}", f"settings.postgres_port={urlparse(dsn).port}"]
    play = kube_play.render(stack, {role: free_port() for role in ROLES}, sets, image=worker_image["tag"])
    assert set(play.left_out) <= set(kube_play.LEFT_OUT) and "Service" in play.left_out
    folder = tmp_path / "play"
    try:
        kube_play.up(play, folder)
        await asyncio.to_thread(_wait_ready, play, list(play.ports))
        for name in play.ports:  # the chart's pod spec, as podman runs it
            state = kube_play.pod_state(name)
            assert state["HostConfig"]["ReadonlyRootfs"] and state["Config"]["User"].startswith("10001")
            assert state["HostConfig"]["Memory"] > 0, "the chart's memory limit applies"
        front = play.url("imgstream-front")
        images = images_from(sample_images, 400, salt=unique)
        ids = await _upload(front, images[:300])
        async with aiohttp.ClientSession() as s:
            done = await wait_complete(s, front, ids, asyncio.get_running_loop().time() + 240)
        assert all(d["status"] == "complete" for d in done.values())
        # scale the extractor to two pods: a copy of its Deployment, played beside the first
        twin = kube_play.copy_of(play, "imgstream-extractor", "2", free_port())
        kube_play.up(play, folder, [twin])
        await asyncio.to_thread(_wait_ready, play, [twin["metadata"]["name"]])
        more = await _upload(front, images[300:])
        async with aiohttp.ClientSession() as s:
            done.update(await wait_complete(s, front, more, asyncio.get_running_loop().time() + 240))
        ids += more
        assert await rows_per_image(dsn, ids) == {i: 3 for i in ids}, "0 lost, 0 doubled"
    finally:
        kube_play.down(folder)



def test_secrets_reach_debian_12s_podman_as_the_files_they_must_be():
    """For podman 4.3 the Secret is stored with plain values (its volumes write data undecoded)."""
    import base64

    from tools.kube_play import plain_secret

    secret = {"kind": "Secret", "metadata": {"name": "s"}, "stringData": {"B": "two"},
              "data": {"IMGSTREAM_POSTGRES_DSN": base64.b64encode(b"postgresql://u:p@h/d").decode()}}
    assert plain_secret(secret)["data"] == {"IMGSTREAM_POSTGRES_DSN": "postgresql://u:p@h/d", "B": "two"}
    assert "stringData" not in plain_secret(secret)
