"""The worker image, built once per session from the repository's Dockerfile."""

from __future__ import annotations

import os

import pytest

from tests.conftest import missing


@pytest.fixture(scope="session")
def worker_image(settings):
    import shutil

    from tools import containers

    if shutil.which("podman") is None and os.geteuid() != 0:
        missing("podman is not installed (make test installs it as root)")
    info = containers.build_worker(settings)
    print(f"worker image {info['tag']}: {info['size_bytes'] / 1e6:.0f} MB, built in {info['build_s']} s "
          f"on {info['base']}")
    return info
