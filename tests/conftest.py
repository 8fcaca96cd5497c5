"""Shared fixtures.

Unit tests need nothing outside the process. Tests marked ``integration``, ``e2e``, ``chaos`` or
``browser`` talk to the real Kafka, PostgreSQL and S3 that ``make test`` (``imgstream stack up``)
starts. Where a service is missing they are skipped on a laptop, and **fail** in CI (``CI=true``).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest

from app.core.settings import Settings

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
DATA = Path(os.environ.get("IMGSTREAM_TEST_DATA", REPO.parent / "shared/datasets/cifar10/train.tar.gz"))
SERVICE_MARKERS = {"integration", "e2e", "chaos", "browser"}


def missing(reason: str):
    """Skip locally; fail in CI, where every service must be there."""
    if IN_CI:
        pytest.fail(f"required for CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def stack(settings: Settings):
    """The running local stack, checked for real (not mocked). At the end of the session the
    tests' private topics (``test-*``) are deleted, so the broker does not pile up partitions."""
    from app.stream import broker
    from tools import stack as local_stack

    bad = [(name, health) for name, _, health in local_stack.status(settings) if health != "healthy"]
    if bad:
        missing(f"services not healthy: {bad}; run `imgstream stack up`")
    yield settings
    if not os.environ.get("IMGSTREAM_KEEP_TEST_TOPICS"):  # keep them to look into a failure
        run(broker.delete_topics(settings, "test-"))


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def dataset() -> Path:
    if not DATA.exists():
        missing(f"training archive {DATA} not found (set IMGSTREAM_TEST_DATA)")
    return DATA


@pytest.fixture(scope="session")
def sample_images(dataset: Path) -> list[tuple[str, bytes]]:
    """(label, jpeg bytes): 30 images per class from the training archive."""
    from models import data

    samples = data.limit_per_class(data.list_samples(dataset), 30, seed=7)
    return [(s.label, b) for s, b in data.read_samples(dataset, samples)]


def run(coro):
    return asyncio.get_event_loop_policy().new_event_loop().run_until_complete(coro)


@pytest.fixture(scope="session")
def pipeline(stack, tmp_path_factory):
    """One worker running every role on private topics, shared by the end-to-end tests."""
    from tests.workers import Worker, isolated_env

    env = isolated_env(uuid.uuid4().hex[:8])
    worker = Worker(env, log_dir=tmp_path_factory.mktemp("logs")).start()
    try:
        worker.wait_healthy()
        yield worker, env
    finally:
        worker.stop()
