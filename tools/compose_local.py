"""docker-compose.yml on this machine: the images of deploy/compose/local.yml built locally, and
Docker's API served by podman (``podman system service``) for the docker CLI and its compose plugin.

No image registry is reachable here, so each third-party image of docker-compose.yml is built from
the Debian 12 base (tools/containers.py) and what the local stack already has: Kafka's jars from
Maven Central (resolved into the cache by the stack), Debian's JDK, PostgreSQL and Prometheus,
and the versitygw binary built with ``go install``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from app.core.settings import Settings
from tools import containers
from tools.base.errors import ToolingError
from tools.base.process import Process

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "deploy" / "compose" / "local"
FILES = [REPO / "docker-compose.yml", REPO / "deploy" / "compose" / "local.yml"]
IMAGES = {"kafka": "localhost/imgstream-kafka:3.9.1", "postgres": "localhost/imgstream-postgres:15",
          "s3": "localhost/imgstream-s3:v1.7.0", "prometheus": "localhost/imgstream-prometheus:bookworm"}


def _context(settings: Settings, name: str, folder: Path) -> Path:
    """The build context of one local image: its folder, plus the artifact the stack already has."""
    from tools.stack.services import Kafka, ObjectStoreServer

    context = folder / name
    shutil.copytree(LOCAL / name, context)
    if name == "kafka":
        kafka = Kafka(settings)
        kafka.install()  # the jars, resolved once into the cache
        shutil.copytree(kafka.libs, context / "libs")
    elif name == "s3":
        server = ObjectStoreServer(settings)
        server.install()  # the binary, built once into the cache
        shutil.copy2(server.binary, context / "versitygw")
    return context


def build_images(settings: Settings) -> dict[str, str]:
    """Every image deploy/compose/local.yml names; the worker's from the Dockerfile."""
    base = containers.base_image(settings)
    built = {"worker": containers.build_worker(settings, base=base)["tag"]}
    with tempfile.TemporaryDirectory(prefix="imgstream-compose-") as tmp:
        for name, tag in IMAGES.items():
            context = _context(settings, name, Path(tmp))
            containers.podman("build", "--format", "docker", "--network", "host", "--build-arg", f"BASE={base}",
                              "-t", tag, str(context), timeout=1200)
            built[name] = tag
    return built


def _service(settings: Settings) -> Process:
    return Process("podman-service", settings.state_dir.resolve() / "logs" / "podman-service.log",
                   pid_file=settings.state_dir.resolve() / "run" / "podman-service.pid")


def stop_service(settings: Settings) -> bool:
    return _service(settings).stop()


def docker_host(settings: Settings) -> str:
    """``unix://`` address of Docker's API served by podman (started here once, kept running)."""
    sock = settings.state_dir.resolve() / "run" / "podman.sock"
    address = f"unix://{sock}"
    proc = _service(settings)
    if proc.pid() is None or not sock.exists():
        sock.parent.mkdir(parents=True, exist_ok=True)
        sock.unlink(missing_ok=True)
        proc.start(["podman", "system", "service", "--time=0", address], env=containers.engine_env())
        deadline = time.monotonic() + 30
        while not sock.exists():
            if time.monotonic() > deadline:
                raise ToolingError(f"podman system service did not listen on {sock}:\n{proc.log_tail()}")
            time.sleep(0.2)
    return address


def compose(settings: Settings, project: str, *args: str, timeout: float = 600,
            check: bool = True) -> subprocess.CompletedProcess:
    """``docker compose -f docker-compose.yml -f deploy/compose/local.yml -p PROJECT ARGS`` against podman."""
    env = {**os.environ, "DOCKER_HOST": docker_host(settings)}
    argv = ["docker", "compose", *[a for f in FILES for a in ("-f", str(f))], "-p", project, *args]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)
    if check and proc.returncode != 0:
        raise ToolingError(f"docker compose {' '.join(args[:2])} failed ({proc.returncode}):\n"
                           f"{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
    return proc
