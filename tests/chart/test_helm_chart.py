"""The Helm chart rendered by the real helm (built once with ``go install``) and checked offline:
lint, every manifest against the Kubernetes schemas, the ScaledObjects against KEDA's CRD, and what
the manifests say against the worker (roles, consumer groups, topics, probes, settings)."""

from __future__ import annotations

import pytest
import yaml

from app.core.settings import ROLES, Settings
from tools import chart, k8s
from tools.base.errors import ToolingError

pytestmark = pytest.mark.chart

PRODUCTION = chart.CHART / "examples" / "production.yaml"


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="module")
def rendered(settings) -> dict[str, list[dict]]:
    return {"default": k8s.template(settings), "production": k8s.template(settings, [PRODUCTION])}


def _decoded(secret: dict) -> dict[str, str]:
    import base64

    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def _kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.mark.parametrize("values", [[], [PRODUCTION]], ids=["default", "production"])
def test_lint_and_every_manifest_validates(settings, values):
    k8s.lint(settings, values)
    report = k8s.validate(settings, k8s.template(settings, values))
    assert report.errors == []
    assert report.by_kind["Deployment"] == len(ROLES) and report.by_kind["ScaledObject"] == len(ROLES)
    assert report.by_kind["PodDisruptionBudget"] == len(ROLES) and report.by_kind["Service"] == 1


def test_the_validators_refuse_what_is_wrong(settings, rendered):
    """Not a check that cannot fail: a broken Deployment and a broken ScaledObject are refused."""
    deployment = dict(_kind(rendered["default"], "Deployment")["imgstream-extractor"])
    deployment["spec"] = {**deployment["spec"], "replicas": "two"}
    scaled = dict(_kind(rendered["default"], "ScaledObject")["imgstream-extractor"])
    scaled["spec"] = {**scaled["spec"], "triggers": [{"metadata": {}}]}  # a trigger needs a type
    report = k8s.validate(settings, [deployment, scaled])
    assert len(report.errors) == 2


def test_one_deployment_per_worker_role_with_its_role_probes_and_measured_memory(rendered):
    values = yaml.safe_load((chart.CHART / "values.yaml").read_text())
    deployments = _kind(rendered["default"], "Deployment")
    assert set(deployments) == {f"imgstream-{r}" for r in ROLES}
    for role in ROLES:
        pod = deployments[f"imgstream-{role}"]["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        env = {e["name"]: e["value"] for e in c["env"]}
        assert env["IMGSTREAM_ROLES"] == role and env["IMGSTREAM_WEB_HOST"] == "0.0.0.0"
        assert c["livenessProbe"]["httpGet"]["path"] == "/live" and c["readinessProbe"]["httpGet"]["path"] == "/ready"
        peak = values["measured"]["peakRssMb"][role]
        assert int(c["resources"]["requests"]["memory"].removesuffix("Mi")) >= peak
        assert int(c["resources"]["limits"]["memory"].removesuffix("Mi")) >= 1.5 * peak
        assert pod["securityContext"]["runAsNonRoot"] and pod["terminationGracePeriodSeconds"] >= 30
        assert {e["configMapRef"]["name"] for e in c["envFrom"] if "configMapRef" in e} == {"imgstream-settings"}
    service = _kind(rendered["default"], "Service")["imgstream"]
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "front"


def test_scaled_objects_follow_each_roles_consumer_group_and_topic(rendered):
    values = yaml.safe_load((chart.CHART / "values.yaml").read_text())
    partitions = values["settings"]["topic_partitions"]
    threshold = round(values["measured"]["imagesPerSecondPerWorker"] * values["autoscaling"]["keda"]["drainSeconds"])
    topics = {"extractor": "images-input-stream", "dead-letter": "images-dead-letter"}
    for role in ROLES:
        spec = _kind(rendered["default"], "ScaledObject")[f"imgstream-{role}"]["spec"]
        (trigger,) = spec["triggers"]
        if role == "front":
            assert trigger["type"] == "cpu"
            continue
        s = Settings(roles=role)
        meta = trigger["metadata"]
        assert trigger["type"] == "kafka" and meta["consumerGroup"] == s.group_id
        assert meta["topic"] == topics.get(role, "image-features-stream")
        assert abs(int(meta["lagThreshold"]) - threshold) <= 1 and spec["maxReplicaCount"] <= partitions


def test_every_setting_reaches_the_worker_through_the_configmap_or_the_secret(settings):
    values = yaml.safe_load((chart.CHART / "values.yaml").read_text())
    unset = [name for name, v in values["settings"].items() if v is None]  # the worker's default unless set
    docs = k8s.template(settings, sets=[f"secrets.{name}=value-of-{name}" for name in chart.secret_settings()]
                        + [f"settings.{name}=/some/where" for name in unset])
    (config,) = _kind(docs, "ConfigMap").values()
    (secret,) = _kind(docs, "Secret").values()
    seen = {k.removeprefix("IMGSTREAM_").lower() for k in [*config["data"], *secret["data"]]}
    assert seen | set(chart.PER_POD) == set(Settings.model_fields)
    assert config["data"]["IMGSTREAM_MAX_UPLOAD_BYTES"] == "10485760"  # not 1.048576e+07
    assert config["data"]["IMGSTREAM_STATE_DIR"] == "/var/lib/imgstream"
    assert _decoded(secret)["IMGSTREAM_POSTGRES_DSN"] == "value-of-postgres_dsn"


@pytest.mark.parametrize("sets,message", [
    (["roles.extractor.maxReplicas=5"], "exceeds settings.topic_partitions"),
    (["settings.no_such_setting=1"], "no_such_setting"),
    (["settings.topic_partitions=four"], "topic_partitions"),
    (["roles.classifier-fast.cpu=lots"], "cpu"),
], ids=["replicas-above-partitions", "unknown-setting", "wrong-type", "bad-cpu"])
def test_values_that_cannot_work_are_refused(settings, sets, message):
    with pytest.raises(ToolingError, match=message):
        k8s.template(settings, sets=sets)


def test_without_keda_an_hpa_on_cpu_per_role(settings):
    docs = k8s.template(settings, sets=["autoscaling.keda.enabled=false", "autoscaling.hpa.enabled=true"])
    assert not _kind(docs, "ScaledObject") and len(_kind(docs, "HorizontalPodAutoscaler")) == len(ROLES)
    assert k8s.validate(settings, docs).errors == []


SECURED = chart.CHART / "examples" / "secured.yaml"


def test_the_secured_example_wires_one_secret_the_ca_files_and_keda(settings):
    docs = k8s.template(settings, [SECURED])
    report = k8s.validate(settings, docs)
    assert report.errors == [] and report.by_kind["TriggerAuthentication"] == 1
    values = yaml.safe_load(SECURED.read_text())
    (config,) = _kind(docs, "ConfigMap").values()
    assert config["data"]["IMGSTREAM_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    for name in ("KAFKA_CA_FILE", "POSTGRES_CA_FILE", "S3_CA_FILE"):
        assert config["data"][f"IMGSTREAM_{name}"].startswith(values["tlsFiles"]["mountPath"] + "/")
    assert not any("PASSWORD" in k or "TOKENS" in k for k in config["data"]), "secrets stay out of the ConfigMap"
    for name, deployment in _kind(docs, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        (secrets,) = [m for m in c["volumeMounts"] if m["name"] == "secrets"]
        assert secrets["readOnly"] and env["IMGSTREAM_SECRETS_DIR"] == secrets["mountPath"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == "secrets"]
        assert volume["secret"]["secretName"] == "imgstream-credentials"
        assert not any("secretRef" in e for e in c["envFrom"]), "credentials are files, not variables"
        (mount,) = [m for m in c["volumeMounts"] if m["name"] == "tls"]
        assert mount == {"name": "tls", "mountPath": "/etc/imgstream/tls", "readOnly": True}
        (volume,) = [v for v in pod["volumes"] if v["name"] == "tls"]
        assert volume["secret"]["secretName"] == "imgstream-ca"
    (auth,) = _kind(docs, "TriggerAuthentication").values()
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert refs["password"] == ("imgstream-credentials", "IMGSTREAM_KAFKA_PASSWORD")
    assert refs["ca"] == ("imgstream-ca", "kafka-ca.pem") and set(refs) == {"sasl", "username", "password", "tls", "ca"}
    for scaled in _kind(docs, "ScaledObject").values():
        for trigger in scaled["spec"]["triggers"]:
            if trigger["type"] == "kafka":
                assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]


@pytest.mark.parametrize("mechanism,protocol,sasl,tls", [
    ("SCRAM-SHA-512", "SASL_SSL", "scram_sha512", "enable"), ("PLAIN", "SASL_SSL", "plaintext", "enable"),
    ("SCRAM-SHA-256", "SASL_PLAINTEXT", "scram_sha256", "disable"), ("PLAIN", "SSL", "none", "enable"),
])
def test_the_charts_own_secret_tells_keda_the_workers_kafka_security(settings, mechanism, protocol, sasl, tls):
    docs = k8s.template(settings, sets=["autoscaling.keda.kafkaAuthentication.enabled=true",
                                        f"settings.kafka_security_protocol={protocol}",
                                        f"settings.kafka_sasl_mechanism={mechanism}", "settings.kafka_username=u",
                                        "secrets.kafka_password=pw", "secrets.api_write_tokens=t1\\,t2"])
    (secret,) = _kind(docs, "Secret").values()
    data = _decoded(secret)
    assert (data["KEDA_KAFKA_SASL"], data["KEDA_KAFKA_TLS"], data["KEDA_KAFKA_USERNAME"]) == (sasl, tls, "u")
    assert data["IMGSTREAM_API_WRITE_TOKENS"] == "t1,t2" and data["IMGSTREAM_KAFKA_PASSWORD"] == "pw"
    assert k8s.validate(settings, docs).errors == []
