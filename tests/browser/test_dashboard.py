"""The dashboard in a real browser (Debian's headless Chromium, driven by Playwright): upload an
image through the page, wait for its three predictions to appear, the charts over time and the
experiment view (the serving bundle and a shadow, with live accuracy from label feedback), keep a
screenshot."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import REPO, missing

pytestmark = pytest.mark.browser
OUTPUT = REPO / "test-output"


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        missing("Debian's chromium is not installed (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def experiment(stack, dataset, sample_images, tmp_path_factory):
    """A worker serving the session's bundle with a k = 10 shadow, fed 60 labelled images."""
    import asyncio
    import uuid

    from app.http.client import upload_many
    from tests.workers import Worker, cli, isolated_env, pinned_bundle, train_bundle

    serving = pinned_bundle()
    shadow = train_bundle(dataset, 10)
    env = isolated_env(uuid.uuid4().hex[:8], IMGSTREAM_BUNDLE_VERSION="latest", IMGSTREAM_REGISTRY_POLL_S="1")
    cli("models", "promote", serving, env=env)
    cli("models", "shadow", shadow, env=env)
    logs = tmp_path_factory.mktemp("browser")
    worker = Worker(env, log_dir=logs).start()
    try:
        worker.wait_healthy()
        files = []
        for i, (label, data) in enumerate(sample_images[:60]):
            (logs / label).mkdir(exist_ok=True)
            (logs / label / f"{i}.jpg").write_bytes(data)
            files.append((logs / label / f"{i}.jpg", label))
        results = asyncio.run(upload_many(worker.url, [p for p, _ in files], concurrency=8,
                                          labels=[label for _, label in files]))
        assert [status for *_, status, _ in results] == [202] * len(files)
        yield worker, serving, shadow
    finally:
        worker.stop()


def test_upload_through_the_page_shows_predictions_charts_and_experiments(experiment, chromium, sample_images,
                                                                           tmp_path):
    from playwright.sync_api import sync_playwright

    worker, serving, shadow = experiment
    label, data = sample_images[77]
    image = tmp_path / f"{label}.jpg"
    image.write_bytes(data)
    OUTPUT.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(f"{worker.url}/dashboard")
            page.set_input_files("#file", str(image))
            page.click("#send")
            page.wait_for_selector("#upload-result[data-image-id]", timeout=15_000)
            image_id = page.get_attribute("#upload-result", "data-image-id")
            row = f'#recent tr[data-image-id="{image_id}"][data-status="complete"]'
            page.wait_for_selector(row, timeout=30_000)
            cells = {c: page.inner_text(f"{row} td.p-{c}") for c in ("fast", "balanced", "accurate")}
            page.wait_for_function("document.querySelector('#classifiers tbody').children.length === 3",
                                   timeout=10_000)
            # the experiment view: the serving bundle and its shadow, each with live accuracy
            for version, role in ((serving, "serving"), (shadow, "shadow")):
                page.wait_for_function(
                    f"""(() => {{ const r = document.querySelector('#experiments tr[data-version="{version}"]');
                          return r && r.dataset.role === '{role}'
                                 && r.querySelector('td.live-accuracy').textContent.includes('%'); }})()""",
                    timeout=30_000)
            page.wait_for_function("document.querySelectorAll('#charts .chart svg polyline').length >= 5",
                                   timeout=30_000)
            titles = page.eval_on_selector_all("#charts .chart h3", "els => els.map(e => e.textContent)")
            page.wait_for_timeout(500)
            shot = OUTPUT / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            shutil.copy(shot, tmp_path / "dashboard.png")
        finally:
            browser.close()
    for name, text in cells.items():
        assert "%" in text and text.strip() != "…", (name, text)
    assert len(titles) == 6 and any("accuracy" in t for t in titles) and any("Drift" in t for t in titles)
    assert shot.stat().st_size > 20_000


def test_a_worker_with_tokens_asks_for_one_and_the_page_sends_it_as_a_header(stack, chromium, sample_images,
                                                                              tmp_path):
    import uuid

    from playwright.sync_api import sync_playwright

    from tests.workers import Worker, isolated_env

    write, read = "write-" + uuid.uuid4().hex, "read-" + uuid.uuid4().hex
    env = isolated_env(uuid.uuid4().hex[:8], IMGSTREAM_API_WRITE_TOKENS=write, IMGSTREAM_API_READ_TOKENS=read)
    worker = Worker(env, log_dir=tmp_path).start()
    label, data = sample_images[5]
    image = tmp_path / f"{label}.jpg"
    image.write_bytes(data)
    requests = []
    try:
        worker.wait_healthy()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 860})
                page.on("response", lambda r: requests.append((r.url, r.request.headers.get("authorization"),
                                                               r.status)))
                page.goto(f"{worker.url}/dashboard")
                page.wait_for_selector("#token-form:not([hidden])", timeout=10_000)
                # a read token: the data shows, an upload is refused for its scope
                page.fill("#token", read)
                page.click("#token-use")
                page.wait_for_function("document.querySelector('#model').textContent.startsWith('model')",
                                       timeout=10_000)
                page.set_input_files("#file", str(image))
                page.click("#send")
                page.wait_for_function("document.querySelector('#upload-result').textContent.includes('403')",
                                       timeout=10_000)
                # a write token: the upload goes through, its row completes with the thumbnail loaded
                page.evaluate("document.querySelector('#token-form').hidden = false")
                page.fill("#token", write)
                page.click("#token-use")
                page.click("#send")
                page.wait_for_selector("#upload-result[data-image-id]", timeout=15_000)
                image_id = page.get_attribute("#upload-result", "data-image-id")
                row = f'#recent tr[data-image-id="{image_id}"][data-status="complete"]'
                page.wait_for_selector(row, timeout=30_000)
                page.wait_for_function(f"""(() => {{ const i = document.querySelector('{row} img.thumb');
                                            return i && i.complete && i.naturalWidth > 0; }})()""", timeout=10_000)
                page.screenshot(path=str(tmp_path / "dashboard-token.png"))
            finally:
                browser.close()
    finally:
        worker.stop()
    calls = [(url, auth, status) for url, auth, status in requests
             if url.startswith(worker.url) and "/dashboard" not in url]
    assert calls, "the page called the API"
    assert not any(write in url or read in url for url, *_ in requests), "a token never travels in a URL"
    sent = {auth for _, auth, _ in calls if auth}
    assert sent <= {f"Bearer {read}", f"Bearer {write}"} and f"Bearer {write}" in sent
    # before a token was given every call was refused; after, every call carried it
    assert all(status == 401 for _, auth, status in calls if not auth)
    assert any(url.endswith("/upload") and status == 202 for url, _, status in calls)
