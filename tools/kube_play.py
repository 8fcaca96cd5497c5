"""The Helm chart's pods on one host: ``helm template`` with ``deploy/podman/values-local.yaml``,
played by ``podman kube play`` (Deployments, ConfigMap, Secret and volumes as the chart renders
them), the pods on the host's network reaching the local stack on 127.0.0.1.

What podman does not run is left out of the play, each for a stated reason (``LEFT_OUT``). On the
host's network every pod of a role would bind the same web port, so each role is rendered with a
web port of its own, and a role scaled to more pods is played as more copies of its Deployment,
each with its own name and port.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from app.core.settings import Settings
from tools import k8s
from tools.containers import podman
from tools.base.errors import ToolingError
from tools.stack.secure import write_private

REPO = Path(__file__).resolve().parents[1]
VALUES = REPO / "deploy" / "podman" / "values-local.yaml"
# Kinds the chart renders that podman kube play does not run, and why leaving them out is safe here.
LEFT_OUT = {
    "Service": "a cluster's virtual IP in front of the front pods; here the pods share the host's network "
               "and are reached on their own ports",
    "PodDisruptionBudget": "guards voluntary evictions by a cluster's controllers; there are none on one host",
    "ScaledObject": "KEDA's autoscaler is a cluster controller; scaling is done by hand (re-played copies)",
    "TriggerAuthentication": "read by KEDA only",
    "HorizontalPodAutoscaler": "a cluster controller, as KEDA",
    "Ingress": "a cluster's HTTP router; the front pod is reached directly",
}


@dataclass
class Play:
    """The rendered pods of one play."""

    docs: list[dict]
    ports: dict[str, int] = field(default_factory=dict)  # Deployment name -> web port
    left_out: dict[str, int] = field(default_factory=dict)  # kind -> count

    def url(self, deployment: str) -> str:
        return f"http://127.0.0.1:{self.ports[deployment]}"


def render(settings: Settings, ports: dict[str, int], sets: list[str] = (), image: str | None = None) -> Play:
    """The chart rendered once per role (its own ``webPort``), every role's Deployment with one
    replica; ConfigMap and Secret once. ``ports`` maps a role to its web port."""
    play = Play([])
    shared: dict[str, dict] = {}
    for role, port in ports.items():
        extra = [*sets, f"webPort={port}"]
        if image:
            repo, _, tag = image.rpartition(":")
            extra += [f"image.repository={repo}", f"image.tag={tag}"]
        for doc in k8s.template(settings, [VALUES], extra):
            kind, name = doc["kind"], doc["metadata"]["name"]
            if kind in ("ConfigMap", "Secret"):
                shared[f"{kind}/{name}"] = doc
            elif kind == "Deployment" and doc["metadata"]["labels"]["app.kubernetes.io/component"] == role:
                doc["spec"]["replicas"] = 1
                play.docs.append(doc)
                play.ports[name] = port
            elif kind != "Deployment":
                if kind not in LEFT_OUT:
                    raise ToolingError(f"the chart renders a {kind}, which this play neither runs nor explains")
                play.left_out[kind] = play.left_out.get(kind, 0) + 1
    play.docs = [*shared.values(), *play.docs]
    return play


def copy_of(play: Play, deployment: str, suffix: str, port: int) -> dict:
    """Another pod of ``deployment`` (a replica, on its own name and web port)."""
    (doc,) = [d for d in play.docs if d["kind"] == "Deployment" and d["metadata"]["name"] == deployment]
    twin = copy.deepcopy(doc)
    name = f"{deployment}-{suffix}"
    twin["metadata"]["name"] = name
    (container,) = twin["spec"]["template"]["spec"]["containers"]
    for env in container["env"]:
        if env["name"] == "IMGSTREAM_WEB_PORT":
            env["value"] = str(port)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        container[probe]["httpGet"]["port"] = port
    play.ports[name] = port
    return twin


def podman_version() -> tuple[int, ...]:
    out = podman("version", "--format", "{{.Client.Version}}").stdout.strip()
    return tuple(int(x) for x in out.split("-")[0].split(".")[:3])


def plain_secret(doc: dict) -> dict:
    """A Secret with its values as plain text under ``data``: what Debian 12's podman 4.3 must
    find in its secret store. Its kube play decodes a played Secret's base64 and stores it encoded
    again, and a Secret volume then writes each file from ``data`` undecoded (base64 text in the
    file) and ignores ``stringData`` (read in 4.3.1's pkg/specgen/generate/kube VolumeFromSecret;
    later podmans decode). So for 4.3 the play stores the Secret itself (``podman secret create``),
    with plain values, and plays the rest."""
    import base64

    plain = {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}
    plain.update(doc.get("stringData") or {})
    return {**{k: v for k, v in doc.items() if k not in ("data", "stringData")}, "data": plain}


def up(play: Play, folder: Path, docs: list[dict] | None = None) -> Path:
    """``podman kube play`` of ``docs`` (default: the whole play), written to a file in ``folder``.
    A later play of more Deployments carries the ConfigMap along (podman reads a pod's ConfigMap
    from the file it plays; the Secret is podman's own once played)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"play-{len(list(folder.glob('play-*.yaml')))}.yaml"
    if docs is not None:
        docs = [d for d in play.docs if d["kind"] == "ConfigMap"] + docs
    docs = docs if docs is not None else play.docs
    if podman_version()[:2] == (4, 3):
        for secret in [d for d in docs if d["kind"] == "Secret"]:
            stored = folder / f"secret-{secret['metadata']['name']}.yaml"
            write_private(stored, yaml.safe_dump(plain_secret(secret)))
            podman("secret", "rm", secret["metadata"]["name"], check=False)
            podman("volume", "rm", "-f", secret["metadata"]["name"], check=False)
            podman("secret", "create", secret["metadata"]["name"], str(stored))
        docs = [d for d in docs if d["kind"] != "Secret"]
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    podman("kube", "play", str(path), timeout=600)
    return path


def down(folder: Path) -> None:
    for path in sorted(folder.glob("play-*.yaml"), reverse=True):
        podman("kube", "down", str(path), check=False, timeout=120)
    for name in _secret_names(folder):
        podman("secret", "rm", name, check=False)
        podman("volume", "rm", "-f", name, check=False)  # podman keeps a Secret's files in a volume


def _secret_names(folder: Path) -> set[str]:
    names = {p.stem.removeprefix("secret-") for p in folder.glob("secret-*.yaml")}
    for path in folder.glob("play-*.yaml"):
        names |= {d["metadata"]["name"] for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "Secret"}
    return names


def pod_state(deployment: str) -> dict:
    """``podman inspect`` of a Deployment's worker container (pod ``<name>-pod-0``)."""
    proc = podman("inspect", f"{deployment}-pod-0-worker", check=False)
    return json.loads(proc.stdout)[0] if proc.returncode == 0 else {}

