"""A worker container run by podman, and a plain HTTP GET that never raises."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from tests.workers import free_port


class Container:
    """One worker container: ``podman run`` on the host's network, as the image's user (10001),
    read-only root filesystem, the state directory on a named volume."""

    def __init__(self, image: str, env: dict[str, str], roles: str, name: str) -> None:
        self.image, self.roles, self.name = image, roles, name
        self.port = free_port()
        self.env = {**env, "IMGSTREAM_ROLES": roles, "IMGSTREAM_WEB_PORT": str(self.port),
                    "IMGSTREAM_WEB_HOST": "127.0.0.1", "IMGSTREAM_LOG_JSON": "false"}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def run(self) -> Container:
        from tools.containers import podman

        args = ["run", "-d", "--name", self.name, "--read-only", "-v", f"{self.name}-state:/var/lib/imgstream"]
        for k, v in self.env.items():
            args += ["-e", f"{k}={v}"]
        podman(*args, self.image)
        return self

    def podman(self, *args: str, check: bool = True):
        from tools.containers import podman

        return podman(*args, check=check)

    def inspect(self) -> dict:
        return json.loads(self.podman("inspect", self.name).stdout)[0]

    def wait_ready(self, timeout: float = 120) -> None:
        deadline, last = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            state = self.inspect()["State"]
            if not state["Running"]:
                raise RuntimeError(f"{self.name} exited {state['ExitCode']}:\n{self.logs()}")
            status, body = http_get(f"{self.url}/ready")
            if status == 200:
                return
            last = body
            time.sleep(1)
        raise TimeoutError(f"{self.name} not ready after {timeout}s: {last}\n{self.logs()}")

    def logs(self, tail: int = 60) -> str:
        proc = self.podman("logs", "--tail", str(tail), self.name, check=False)
        return proc.stdout + proc.stderr

    def remove(self) -> None:
        self.podman("rm", "-f", "-t", "10", self.name, check=False)
        self.podman("volume", "rm", "-f", f"{self.name}-state", check=False)


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)
