"""Offline checks of the Helm chart (deploy/helm/imgstream): ``helm lint``, ``helm template`` with
the default values and with each example values file, every rendered manifest validated against
the Kubernetes schemas (the kubernetes-validate package ships them) and every KEDA ScaledObject and
TriggerAuthentication against the openAPIV3Schema of KEDA's own CRDs. Helm is built with ``go install`` and KEDA's CRD is
read from KEDA's Go module (the Go module proxy), both pinned and cached under the cache dir."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from app.core.settings import Settings
from tools.base.process import go_binary, run_checked as _run

HELM_VERSION = "v3.22.0"
KEDA_MODULE = "github.com/kedacore/keda/v2"
KEDA_VERSION = "v2.21.0"
KUBERNETES_VERSION = "1.31.0"
CHART = Path(__file__).resolve().parents[1] / "deploy" / "helm" / "imgstream"


def helm(settings: Settings) -> Path:
    """The pinned helm binary, built once into the cache (a few minutes)."""
    binary = settings.cache_dir / "bin" / f"helm-{HELM_VERSION}" / "helm"
    if not binary.exists():
        binary.parent.mkdir(parents=True, exist_ok=True)
        _run([go_binary("to build helm"), "install", f"helm.sh/helm/v3/cmd/helm@{HELM_VERSION}"], "building helm",
             env={**os.environ, "GOBIN": str(binary.parent)})
    return binary


def keda_scaledobject_schema(settings: Settings) -> dict:
    """The openAPIV3Schema of KEDA's ScaledObject CRD (keda.sh/v1alpha1) at the pinned version."""
    return _keda_schema(settings.cache_dir)


@lru_cache(maxsize=4)
def _keda_schema(cache_dir: Path, plural: str = "scaledobjects") -> dict:  # one download and parse per process
    modcache = cache_dir / "gomod"
    proc = _run([go_binary("to read KEDA's CRD"), "mod", "download", "-json", f"{KEDA_MODULE}@{KEDA_VERSION}"], "downloading KEDA's module",
                env={**os.environ, "GOMODCACHE": str(modcache), "GOFLAGS": "-modcacherw"})
    crd = Path(json.loads(proc.stdout)["Dir"]) / "config" / "crd" / "bases" / f"keda.sh_{plural}.yaml"
    doc = yaml.safe_load(crd.read_text())
    (version,) = [v for v in doc["spec"]["versions"] if v["name"] == "v1alpha1"]
    return version["schema"]["openAPIV3Schema"]


def lint(settings: Settings, values: list[Path] = ()) -> str:
    argv = [str(helm(settings)), "lint", "--strict", "--kube-version", KUBERNETES_VERSION, str(CHART), *[a for v in values for a in ("-f", str(v))]]
    return _run(argv, "helm lint").stdout


def template(settings: Settings, values: list[Path] = (), sets: list[str] = ()) -> list[dict]:
    """The manifests ``helm template`` renders (a ToolingError carries helm's own message)."""
    argv = [str(helm(settings)), "template", "imgstream", str(CHART), "--kube-version", KUBERNETES_VERSION,
            *[a for v in values for a in ("-f", str(v))], *[a for s in sets for a in ("--set", s)]]
    return [d for d in yaml.safe_load_all(_run(argv, "helm template").stdout) if d]


@dataclass
class Report:
    by_kind: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def manifests(self) -> int:
        return sum(self.by_kind.values())


def validate(settings: Settings, docs: list[dict]) -> Report:
    import jsonschema
    import kubernetes_validate

    keda = {"ScaledObject": keda_scaledobject_schema(settings),
            "TriggerAuthentication": _keda_schema(settings.cache_dir, "triggerauthentications")}
    report = Report()
    for doc in docs:
        kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
        report.by_kind[kind] = report.by_kind.get(kind, 0) + 1
        try:
            if doc.get("apiVersion", "").startswith("keda.sh/"):
                jsonschema.validate(doc, keda[kind])
            else:
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as exc:
            report.errors.append(f"{kind}/{name}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            report.errors.append(f"{kind}/{name}: no schema ({exc})")
    return report


def examples() -> list[Path]:
    return sorted((CHART / "examples").glob("*.yaml"))


def check(settings: Settings) -> dict[str, Report]:
    """lint + template + validation with the default values and with every example file."""
    out = {}
    for values in ([], *([e] for e in examples())):
        label = values[0].name if values else "default values"
        lint(settings, values)
        out[label] = validate(settings, template(settings, values))
    return out
