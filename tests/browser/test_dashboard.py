"""The dashboard in a real browser (Debian's headless Chromium, driven by Playwright): upload an
image through the page, wait for its three predictions to appear, keep a screenshot."""

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


def test_upload_through_the_page_shows_three_predictions(pipeline, chromium, sample_images, tmp_path):
    from playwright.sync_api import sync_playwright

    worker, _ = pipeline
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
            shot = OUTPUT / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            shutil.copy(shot, tmp_path / "dashboard.png")
        finally:
            browser.close()
    for name, text in cells.items():
        assert "%" in text and text.strip() != "…", (name, text)
    assert shot.stat().st_size > 20_000
