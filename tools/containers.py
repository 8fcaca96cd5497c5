"""The worker image, built and run on this machine with Debian's podman and runc.

- ``ensure_engine``: podman, runc and mmdebstrap from Debian's packages where missing; podman reads
  ``deploy/podman/containers.conf`` (through CONTAINERS_CONF), whose defaults work on the project's
  machines (see the file).
- ``base_image``: where no image registry is reachable, a Debian 12 base made from Debian's own
  packages (``mmdebstrap --variant=minbase bookworm``, cached as a tar under the cache dir) and
  imported as ``localhost/imgstream-base:bookworm``.
- ``build_worker``: the repository's Dockerfile, with ``BASE`` pointing at that image (its default,
  the public slim Python image, is what users elsewhere get), in the docker format so the
  HEALTHCHECK is kept.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from app.core.settings import Settings
from tools.base.errors import ToolingError
from tools.base.process import run_checked as _run

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "deploy" / "podman" / "containers.conf"
BASE_IMAGE = "localhost/imgstream-base:bookworm"
WORKER_IMAGE = "localhost/imgstream:dev"


def engine_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONF)}


def ensure_engine() -> None:
    missing = [p for p, cmd in (("podman", "podman"), ("runc", "runc"), ("mmdebstrap", "mmdebstrap"))
               if shutil.which(cmd) is None]
    if missing:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        _run(["apt-get", "update", "-q"], "apt-get update", env=env)
        _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], f"installing {' '.join(missing)}",
             env=env)


def podman(*args: str, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, env=engine_env(), timeout=timeout)
    if check and proc.returncode != 0:
        raise ToolingError(f"podman {' '.join(args[:3])} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc


def image_exists(tag: str) -> bool:
    return podman("image", "exists", tag, check=False).returncode == 0


def base_image(settings: Settings, tag: str = BASE_IMAGE) -> str:
    """A Debian 12 (bookworm) base image made from Debian's packages; the tar is cached."""
    if image_exists(tag):
        return tag
    ensure_engine()
    tar = settings.cache_dir / "images" / "debian-bookworm-minbase.tar"
    if not tar.exists():
        tar.parent.mkdir(parents=True, exist_ok=True)
        partial = tar.with_suffix(".partial.tar")
        _run(["mmdebstrap", "--variant=minbase", "--quiet", "bookworm", str(partial)],
             "building a Debian 12 root filesystem with mmdebstrap")
        partial.rename(tar)
    podman("import", "--change", "CMD=/bin/bash", str(tar), tag)
    return tag


def build_worker(settings: Settings, tag: str = WORKER_IMAGE, base: str | None = None) -> dict:
    """Build the worker image from the repository's Dockerfile; its tag, size and build time."""
    ensure_engine()
    base = base or base_image(settings)
    started = time.monotonic()
    trust = []
    ca = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt"
    if Path(ca).is_file():  # the host's trust store (a TLS-inspecting proxy's CA included) for the build's pip
        trust = ["--volume", f"{ca}:/run/build-ca.pem:ro", "--build-arg", "PIP_CERT=/run/build-ca.pem"]
    podman("build", "--format", "docker", "--network", "host", "--build-arg", f"BASE={base}", *trust, "-t", tag,
           str(REPO), timeout=1800)
    (info,) = json.loads(podman("image", "inspect", tag).stdout)
    return {"tag": tag, "base": base, "size_bytes": info["Size"], "build_s": round(time.monotonic() - started, 1)}
