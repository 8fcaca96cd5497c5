"""The real services that `imgstream stack up` starts: Kafka (KRaft), PostgreSQL, S3 (versitygw)."""

import asyncio
import subprocess
import sys
import uuid

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app.stream import broker
from app.storage.objectstore import ObjectStore

pytestmark = pytest.mark.integration


async def test_kafka_produce_consume_round_trip(stack, unique):
    topic = f"test-roundtrip-{unique}"
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 2, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    sent = [f"m{i}".encode() for i in range(20)]
    for i, v in enumerate(sent):
        await producer.send_and_wait(topic, v, key=str(i).encode())
    await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=stack.kafka_bootstrap, auto_offset_reset="earliest",
                                group_id=f"g-{unique}")
    await consumer.start()
    got = []
    try:
        async with asyncio.timeout(20):
            while len(got) < len(sent):
                batch = await consumer.getmany(timeout_ms=1000)
                got += [m.value for msgs in batch.values() for m in msgs]
    finally:
        await consumer.stop()
    assert sorted(got) == sorted(sent)


async def test_project_topics_exist_with_configured_partitions(stack):
    await broker.ensure_topics(stack)
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([stack.input_topic, stack.features_topic, stack.dead_letter_topic])
    finally:
        await admin.close()
    assert {t["topic"]: len(t["partitions"]) for t in described} == {
        stack.input_topic: stack.topic_partitions, stack.features_topic: stack.topic_partitions,
        stack.dead_letter_topic: stack.topic_partitions}


async def test_s3_put_get_delete(stack):
    key = f"test/{uuid.uuid4()}.bin"
    async with ObjectStore(stack) as store:
        await store.ensure_bucket()
        await store.put(key, b"\x00hello\xff")
        assert await store.get(key) == b"\x00hello\xff"
        await store.delete(key)
        from app.core.errors import NotFound
        with pytest.raises(NotFound):
            await store.get(key)


async def test_postgres_query_and_schema(stack):
    conn = await asyncpg.connect(stack.postgres_dsn.get_secret_value())
    try:
        assert await conn.fetchval("SELECT $1::int + 1", 41) == 42
        tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
        assert {"images", "predictions", "schema_migrations"} <= tables
    finally:
        await conn.close()


def test_stack_status_reports_every_service_healthy(stack):
    proc = subprocess.run([sys.executable, "-m", "app.ops.cli", "stack", "status"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("postgres", "s3", "kafka"):
        assert name in proc.stdout
    assert proc.stdout.count("healthy") == 3


def test_stack_up_is_idempotent(stack):
    proc = subprocess.run([sys.executable, "-m", "app.ops.cli", "stack", "up"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("already running") == 3


def test_docker_compose_file_is_valid():
    import shutil

    from tests.conftest import REPO
    if shutil.which("docker") is None:
        pytest.skip("no docker client on this machine")
    proc = subprocess.run(["docker", "compose", "-f", str(REPO / "docker-compose.yml"), "config", "--quiet"],
                          capture_output=True, text=True)
    if "is not a docker command" in proc.stderr or "unknown command" in proc.stderr:
        pytest.skip("docker client without the compose plugin")
    assert proc.returncode == 0, proc.stderr


def test_the_secured_compose_override_passes_credentials_as_files_only(tmp_path):
    """deploy/compose/secured.yml: the worker and init read every credential from Docker secrets,
    the CA files are mounted read-only, and the local plaintext services stay off."""
    import json
    import os
    import shutil

    from tests.conftest import REPO, missing
    from tools.chart import secret_settings

    if shutil.which("docker") is None:
        missing("no docker client on this machine")
    (tmp_path / "tls").mkdir()
    env = {**os.environ, "IMGSTREAM_SECRETS": str(tmp_path), "IMGSTREAM_KAFKA_BOOTSTRAP": "kafka.example:9093",
           "IMGSTREAM_S3_ENDPOINT": "https://s3.example"}
    proc = subprocess.run(["docker", "compose", "-f", str(REPO / "docker-compose.yml"), "-f",
                           str(REPO / "deploy" / "compose" / "secured.yml"), "config", "--format", "json"],
                          capture_output=True, text=True, env=env)
    if "is not a docker command" in proc.stderr or "unknown command" in proc.stderr:
        missing("docker client without the compose plugin")
    assert proc.returncode == 0, proc.stderr
    config = json.loads(proc.stdout)
    assert not {"kafka", "postgres", "s3"} & set(config["services"])
    for name in ("init", "worker"):
        service = config["services"][name]
        files = {s["target"].removeprefix("/run/secrets/") for s in service["secrets"]}
        assert files == {f"imgstream_{n}" for n in secret_settings()}
        assert all(not service["environment"].get(f"IMGSTREAM_{n.upper()}") for n in secret_settings())
        (tls,) = [v for v in service["volumes"] if v["target"] == "/etc/imgstream/tls"]
        assert tls["read_only"] and tls["source"] == str(tmp_path / "tls")
        assert service["environment"]["IMGSTREAM_SECRETS_DIR"] == "/run/secrets"
    # what the worker makes of it: the files, read as the settings they are named after
    run = tmp_path / "run"
    run.mkdir()
    for n in secret_settings():
        (run / f"imgstream_{n}").write_text(f"value-of-{n}\n" if n != "postgres_dsn" else "postgresql://u:p@h/d\n")
    worker_env = {k: str(v) for k, v in config["services"]["worker"]["environment"].items() if v is not None}
    worker_env["IMGSTREAM_SECRETS_DIR"] = str(run)
    proc = subprocess.run([sys.executable, "-c", "from app.core.settings import Settings; s = Settings(); "
                           "print(s.kafka_password.get_secret_value(), s.api_write_tokens[0].get_secret_value(), "
                           "s.postgres_dsn.get_secret_value(), s.kafka_security_protocol)"],
                          capture_output=True, text=True, cwd=REPO, env={"PATH": os.environ["PATH"], **worker_env})
    assert proc.stdout.split() == ["value-of-kafka_password", "value-of-api_write_tokens", "postgresql://u:p@h/d",
                                   "SASL_SSL"], proc.stderr


def test_prometheus_scrapes_the_worker(stack, pipeline):
    """`imgstream stack up --with-prometheus`: Debian's Prometheus, scraping a worker's /metrics."""
    import json
    import os
    import time
    import urllib.request

    worker, _ = pipeline
    env = {**os.environ, "IMGSTREAM_WEB_PORT": str(worker.port)}
    up = subprocess.run([sys.executable, "-m", "app.ops.cli", "stack", "up", "prometheus"], capture_output=True,
                        text=True, env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        deadline = time.monotonic() + 60
        health = None
        while time.monotonic() < deadline:
            with urllib.request.urlopen("http://127.0.0.1:9090/api/v1/targets", timeout=5) as r:
                targets = json.load(r)["data"]["activeTargets"]
            health = [t["health"] for t in targets if t["labels"]["instance"].endswith(f":{worker.port}")]
            if health == ["up"]:
                break
            time.sleep(1)
        assert health == ["up"]
        q = urllib.request.urlopen("http://127.0.0.1:9090/api/v1/query?query=imgstream_uploads_total", timeout=5)
        assert json.load(q)["data"]["result"], "the worker's own metrics reach Prometheus"
    finally:
        subprocess.run([sys.executable, "-m", "app.ops.cli", "stack", "down", "prometheus"], capture_output=True)
