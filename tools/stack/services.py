"""The three local services and the up/down/status verbs over them."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import pwd
import shutil
import signal
import subprocess
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from pydantic import SecretStr

from app.core.errors import ImgstreamError
from tools.base.errors import ToolingError
from app.core.security import postgres_ssl
from app.core.settings import Settings
from tools.base.process import Process, go_binary, run_checked as _run, wait_until
from tools.stack.secure import KAFKA_ADMIN, KAFKA_USER, SecureStack, write_private

REPO_ROOT = Path(__file__).resolve().parents[2]
VERSITYGW_MODULE = "github.com/versity/versitygw/cmd/versitygw@v1.7.0"


_APT = threading.Lock()  # installs run side by side (``up``), but dpkg takes one at a time


def _apt_install(package: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with _APT:
        _run(["apt-get", "update", "-q"], "apt-get update", env=env)
        _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", package], f"installing {package}", env=env)


def kafka_cluster_id(new_uuid=uuid.uuid4) -> str:
    """A random KRaft cluster id, as Kafka's own ``Uuid.randomUuid`` makes it.

    The id is a UUID in URL-safe base64, whose alphabet includes '-'. One id
    in 64 starts with it, and the storage tool's argument parser then reads
    the id as an option ("--cluster-id: expected one argument"). Kafka draws
    again in that case; so do we.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(new_uuid().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _health(coro_fn) -> str | None:
    """Run an async health check; None when healthy, else the reason."""
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # polling a starting broker is noisy
    try:
        asyncio.run(coro_fn())
        return None
    except ImgstreamError as exc:
        return exc.message
    except Exception as exc:  # noqa: BLE001 - a health check reports, it does not raise
        return f"{type(exc).__name__}: {exc}"


@dataclass
class Service:
    settings: Settings
    name: str = ""
    start_timeout: float = 90.0
    secure: SecureStack | None = None  # TLS and passwords (``stack up --secure``)
    proc: Process = field(init=False)

    def __post_init__(self) -> None:
        self.dir = self.settings.state_dir.resolve() / self.name
        self.proc = Process(self.name, self.settings.state_dir.resolve() / "logs" / f"{self.name}.log",
                            pid_file=self.settings.state_dir.resolve() / "run" / f"{self.name}.pid")

    # subclasses implement these
    def install(self) -> None: ...
    def launch(self) -> None: ...
    def health(self) -> str | None: ...
    def provision(self) -> None: ...

    def start(self) -> None:
        """Install what is missing and launch the process unless it runs; no health wait."""
        self.install()
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.proc.pid() is None:
            self.launch()

    def up(self) -> str:
        if self.proc.pid() is not None and self.health() is None:
            self.provision()
            return "already running"
        self.start()
        ok, reason = wait_until(self._alive_and_healthy, self.start_timeout)
        if not ok:
            raise ToolingError(f"{self.name} did not become healthy: {reason}\n--- {self.proc.log_file} ---\n"
                             f"{self.proc.log_tail()}")
        self.provision()
        return f"started (pid {self.proc.pid()})"

    def _alive_and_healthy(self) -> str | None:
        if self.proc.pid() is None:
            return "process exited"
        return self.health()

    def down(self) -> str:
        return "stopped" if self.proc.stop(group=False) else "not running"

    def status(self) -> tuple[int | None, str]:
        pid = self.proc.pid()
        reason = self.health()
        return pid, "healthy" if reason is None else reason


class Kafka(Service):
    """Apache Kafka in KRaft mode (combined broker+controller), jars from Maven Central."""

    def __init__(self, settings: Settings, secure: SecureStack | None = None, name: str = "kafka") -> None:
        super().__init__(settings, name, start_timeout=120, secure=secure)
        self.libs = settings.cache_dir / f"kafka-{settings.kafka_version}" / "libs"
        host, _, port = settings.kafka_bootstrap.split(",")[0].rpartition(":")
        self.host, self.port = host or "127.0.0.1", int(port)

    def install(self) -> None:
        if any(self.libs.glob("kafka_2.13-*.jar")):
            return
        if shutil.which("mvn") is None:
            raise ToolingError("Maven (mvn) is needed to resolve Kafka's jars: apt-get install maven")
        self.libs.mkdir(parents=True, exist_ok=True)
        # Maven fetches one jar after the other unless told otherwise (the first property is read by
        # Maven 3.8's wagon, the second by 3.9's resolver).
        _run(["mvn", "-q", "-B", "-f", str(REPO_ROOT / "deploy" / "kafka" / "pom.xml"),
              "-Dmaven.artifact.threads=8", "-Daether.connector.basic.threads=8",
              f"-Dkafka.version={self.settings.kafka_version}", "dependency:copy-dependencies",
              f"-DoutputDirectory={self.libs}"], "resolving Kafka jars with Maven")

    def _java(self, *args: str) -> list[str]:
        java = shutil.which("java") or "java"
        # C1 only (TieredStopAtLevel=1): this broker serves a laptop or a CI runner for minutes, not
        # a cluster for weeks. On 2 cores, C2's compilations took more CPU than the broker's own
        # work for its first minutes under load (measured at saturation: Kafka 3.4 -> 2.2 CPU ms per
        # image over four passes with C2, 2.3 -> 1.2 with C1 only, the same from the third pass on).
        return [java, "-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true",
                f"-Dlog4j.configuration=file:{self.dir / 'log4j.properties'}",
                "-cp", f"{self.libs}/*", *args]

    def _properties(self) -> list[str]:
        """server.properties of a single combined broker and controller (node 1, a quorum of one)."""
        listener = "SASL_SSL" if self.secure else "PLAINTEXT"
        return [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{self.port + 1}",
            f"listeners={listener}://{self.host}:{self.port},CONTROLLER://127.0.0.1:{self.port + 1}",
            f"advertised.listeners={listener}://{self.host}:{self.port}",
            "controller.listener.names=CONTROLLER",
            f"inter.broker.listener.name={listener}",
            f"listener.security.protocol.map=CONTROLLER:PLAINTEXT,{listener}:{listener}",
            *self._security_config(),
            f"log.dirs={self.dir / 'data'}",
            f"num.partitions={self.settings.topic_partitions}",
            "auto.create.topics.enable=false",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=8",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "log.retention.check.interval.ms=60000",
            "",
        ]

    def _cluster_id(self) -> str:
        return kafka_cluster_id()

    def _write_config(self) -> Path:
        data = self.dir / "data"
        props = self.dir / "server.properties"
        # the listener's SASL configuration holds the admin's password: readable by its owner only
        write_private(props, "\n".join(self._properties()))
        (self.dir / "log4j.properties").write_text(
            "log4j.rootLogger=INFO, stdout\n"
            "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
            "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
            "log4j.logger.kafka=INFO\nlog4j.logger.org.apache.kafka=INFO\n"
            "log4j.logger.state.change.logger=WARN\nlog4j.logger.kafka.request.logger=WARN\n"
        )
        if not (data / "meta.properties").exists():
            # the broker's own user exists before it starts (it authenticates to itself as a broker)
            (self.dir / ".user-created").unlink(missing_ok=True)
            scram = ["--add-scram", f"SCRAM-SHA-512=[name={KAFKA_ADMIN},password={self.secure.secrets['kafka_admin_password']}]"] \
                if self.secure else []
            _run(self._java("kafka.tools.StorageTool", "format", "-t", self._cluster_id(), "-c", str(props), *scram),
                 "formatting Kafka storage")
        return props

    def _security_config(self) -> list[str]:
        """A SASL_SSL listener: SCRAM-SHA-512 (users kept by Kafka, made with its ConfigCommand)
        and PLAIN (users listed in the listener's JAAS entry), TLS from the stack's PEM files."""
        if self.secure is None:
            return []
        s, tls = self.secure.secrets, self.secure.tls
        admin = f'username="{KAFKA_ADMIN}" password="{s["kafka_admin_password"]}"'
        return [
            "sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN",
            "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
            f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config="
            f"org.apache.kafka.common.security.scram.ScramLoginModule required {admin};",
            f"listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule "
            f'required {admin} user_{KAFKA_ADMIN}="{s["kafka_admin_password"]}" '
            f'user_{KAFKA_USER}="{s["kafka_password"]}";',
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={tls / 'server-keystore.pem'}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={tls / 'ca.pem'}",
            "ssl.client.auth=none",
        ]

    def _create_user(self) -> None:
        """The worker's SCRAM user, made (or its password set again) with Kafka's ConfigCommand over
        the secured listener as the admin. The admin's password travels in a file; the user's is on
        the tool's command line for the second it runs (its --add-config-file does not parse SCRAM
        credentials in Kafka 3.9)."""
        s, tls = self.secure.secrets, self.secure.tls
        admin = self.dir / "admin.properties"
        write_private(admin, "\n".join([
            "security.protocol=SASL_SSL", "sasl.mechanism=SCRAM-SHA-512",
            "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{KAFKA_ADMIN}" password="{s["kafka_admin_password"]}";',
            "ssl.truststore.type=PEM", f"ssl.truststore.location={tls / 'ca.pem'}", ""]))
        _run(self._java("kafka.admin.ConfigCommand", "--bootstrap-server", f"{self.host}:{self.port}",
                        "--command-config", str(admin), "--alter", "--entity-type", "users",
                        "--entity-name", KAFKA_USER, "--add-config", f"SCRAM-SHA-512=[password={s['kafka_password']}]"),
             f"creating the Kafka user {KAFKA_USER}")

    def launch(self) -> None:
        props = self._write_config()
        self.proc.start(self._java("kafka.Kafka", str(props)))

    def health(self) -> str | None:
        from app.stream import broker

        # the secured broker is checked as its admin: the worker's user is made once it runs
        settings = self.settings if self.secure is None else self.settings.model_copy(update={
            "kafka_username": KAFKA_ADMIN, "kafka_password": SecretStr(self.secure.secrets["kafka_admin_password"])})
        return _health(lambda: broker.ping(settings, timeout=3))

    def provision(self) -> None:
        from app.stream import broker
        if self.secure is not None and not (self.dir / ".user-created").exists():
            self._create_user()
            (self.dir / ".user-created").touch()
        asyncio.run(broker.ensure_topics(self.settings))


class Postgres(Service):
    """PostgreSQL from Debian's packages, a private cluster on 127.0.0.1:<postgres_port>."""

    def __init__(self, settings: Settings, secure: SecureStack | None = None) -> None:
        super().__init__(settings, "postgres", start_timeout=60, secure=secure)
        self.port = settings.postgres_port
        self.dsn = urlparse(settings.postgres_dsn.get_secret_value())

    @staticmethod
    def bindir() -> Path | None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
        return found[-1].parent if found else None

    def install(self) -> None:
        if self.bindir() is None:
            _apt_install("postgresql")
        # Debian's cluster (if any) is not ours; we run a private one.

    def _as_owner(self) -> list[str]:
        return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _datadir(self) -> Path:
        data = self.dir / "data"
        if os.geteuid() == 0:
            # postgres refuses to run as root: the cluster belongs to the 'postgres' user, which must be
            # able to reach it. Where the clone sits under a private folder (/root), keep the cluster in
            # /var/lib/imgstream and link it from the state directory.
            pw = pwd.getpwnam("postgres")
            reachable = subprocess.run(self._as_owner() + ["test", "-x", str(self.dir)],
                                       capture_output=True).returncode == 0
            if not reachable and not data.is_symlink():
                target = Path("/var/lib/imgstream") / uuid.uuid5(uuid.NAMESPACE_URL, str(self.dir)).hex / "data"
                target.mkdir(parents=True, exist_ok=True)
                os.chown(target, pw.pw_uid, pw.pw_gid)
                data.symlink_to(target)
            if not data.exists():
                data.mkdir(parents=True)
            os.chown(data, pw.pw_uid, pw.pw_gid)
            os.chown(data.resolve(), pw.pw_uid, pw.pw_gid)
        return data.resolve()

    def launch(self) -> None:
        bindir = self.bindir()
        data = self._datadir()
        if not (data / "PG_VERSION").exists():
            self._initdb(bindir, data)
        self.proc.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.proc.log_file.touch()
        if os.geteuid() == 0:
            os.chown(self.proc.log_file, pwd.getpwnam("postgres").pw_uid, -1)
        sockdir = Path("/tmp")
        _run(self._as_owner() + [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(self.proc.log_file),
                                 "-o", f"-p {self.port} -c listen_addresses=127.0.0.1 -k {sockdir} "
                                       f"-c max_connections=200 -c fsync=on {self._tls_options(data)}",
                                 "-w", "-t", "60", "start"], "starting PostgreSQL")
        pid = int((data / "postmaster.pid").read_text().split()[0])
        self.proc.adopt(pid)

    def _initdb(self, bindir: Path, data: Path) -> None:
        # Local socket connections trust the OS user 'postgres' (for provisioning); TCP needs a password.
        _run(self._as_owner() + [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8",
                                 "--auth-local=trust", "--auth-host=scram-sha-256"], "initdb")
        if self.secure is not None:
            # TCP only over TLS, with a password; a plain-text connection is refused outright
            (data / "pg_hba.conf").write_text("local all all trust\n"
                                              "hostssl all all 127.0.0.1/32 scram-sha-256\n"
                                              "hostnossl all all 0.0.0.0/0 reject\n")

    def _tls_options(self, data: Path) -> str:
        """Server options for TLS: the certificate and a copy of its key that only the server's
        owner reads (PostgreSQL refuses a key file others can read)."""
        if self.secure is None:
            return ""
        key = data / "server.key"
        key.write_bytes(self.secure.server_key.read_bytes())
        key.chmod(0o600)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(key, pw.pw_uid, pw.pw_gid)
        cert = data / "server.pem"
        cert.write_bytes(self.secure.server_cert.read_bytes())
        return f"-c ssl=on -c ssl_cert_file={cert} -c ssl_key_file={key}"

    def health(self) -> str | None:
        import asyncpg

        async def check() -> None:
            conn = await asyncpg.connect(self.settings.postgres_dsn.get_secret_value(), timeout=3,
                                         ssl=postgres_ssl(self.settings))
            await conn.fetchval("SELECT 1")
            await conn.close()

        return _health(check if self._provisioned() else self._ping_superuser)

    async def _ping_superuser(self) -> None:
        import asyncpg
        conn = await asyncpg.connect(host="/tmp", port=self.port, user="postgres", database="postgres", timeout=3)
        await conn.close()

    @property
    def _marker(self):
        # One marker per database: the tests' database (IMGSTREAM_POSTGRES_DSN) is provisioned
        # beside the default one on the same cluster.
        return self.dir / f".provisioned-{(self.dsn.path or '/imgstream').lstrip('/')}"

    def _provisioned(self) -> bool:
        return self._marker.exists()

    def provision(self) -> None:
        import asyncpg

        from app.storage.database import migrate

        user, password = self.dsn.username or "imgstream", self.dsn.password or ""
        database = (self.dsn.path or "/imgstream").lstrip("/")

        async def run() -> None:
            conn = await asyncpg.connect(host="/tmp", port=self.port, user="postgres", database="postgres")
            try:
                if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", user):
                    await conn.execute(f'CREATE ROLE "{user}" LOGIN')
                # ALTER ROLE takes no bind parameters; quote the literal the way PostgreSQL does.
                await conn.execute(f"""ALTER ROLE "{user}" PASSWORD '{password.replace("'", "''")}'""")
                if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
                    await conn.execute(f'CREATE DATABASE "{database}" OWNER "{user}"')
            finally:
                await conn.close()
            conn = await asyncpg.connect(self.settings.postgres_dsn.get_secret_value(), ssl=postgres_ssl(self.settings))
            try:
                await migrate(conn)
            finally:
                await conn.close()

        asyncio.run(run())
        self._marker.touch()

    def down(self) -> str:
        # SIGINT is PostgreSQL's "fast shutdown": it does not wait for clients to disconnect.
        return "stopped" if self.proc.stop(signal.SIGINT, timeout=60, group=False) else "not running"


def metadata_store(root: Path, probe=os.setxattr) -> str:
    """Where versitygw keeps each object's metadata (ETag, checksum, content type, user metadata):
    ``xattr`` (on the object's own file) where ``root``'s filesystem takes user extended
    attributes, else ``sidecar`` (a small file per attribute in a folder beside the data).

    Side by side on ext4 (two servers, obstore puts, another job sharing the two cores), the S3
    server's CPU per put was 1.1 ms with xattrs against 2.0 with sidecar files for a tiny object,
    and 9.6 against 11.9 ms for 2.3 MB: with sidecar files each attribute is a new file, written
    and renamed. The choice is made once, when the store is created, and kept in
    ``root/metadata``: switching an existing store would lose the metadata of the objects already
    in it."""
    root.mkdir(parents=True, exist_ok=True)
    marker = root / "metadata"
    if marker.exists():
        return marker.read_text().strip()
    if (root / "meta").is_dir():  # created before the choice was recorded: sidecar files
        mode = "sidecar"
    else:
        test = root / ".xattr-probe"
        test.touch()
        try:
            probe(str(test), "user.imgstream", b"1")
            mode = "xattr"
        except OSError:  # tmpfs without user xattrs, some overlay and network filesystems
            mode = "sidecar"
        finally:
            test.unlink()
    marker.write_text(mode + "\n")
    return mode


class ObjectStoreServer(Service):
    """versitygw (Apache-2.0) serving a POSIX folder as S3 on 127.0.0.1."""

    def __init__(self, settings: Settings, secure: SecureStack | None = None) -> None:
        super().__init__(settings, "s3", start_timeout=30, secure=secure)
        self.binary = settings.cache_dir / "bin" / "versitygw"
        self.address = urlparse(settings.s3_endpoint).netloc

    def install(self) -> None:
        if self.binary.exists():
            return
        go = go_binary("to build versitygw")
        self.binary.parent.mkdir(parents=True, exist_ok=True)
        _run([go, "install", VERSITYGW_MODULE], "building versitygw",
             env={**os.environ, "GOBIN": str(self.binary.parent)})

    def launch(self) -> None:
        data, meta = self.dir / "data", self.dir / "meta"
        data.mkdir(parents=True, exist_ok=True)
        store = ["--sidecar", str(meta)] if metadata_store(self.dir) == "sidecar" else []
        if store:
            meta.mkdir(parents=True, exist_ok=True)
        # Credentials travel in the environment, never on the command line (visible in ps).
        # --keep-alive: versitygw answers every request with "Connection: close" otherwise, and a
        # new TCP connection per object cost both sides measurable CPU (docs/BENCHMARKS.md).
        tls = ["--cert", str(self.secure.server_cert), "--key", str(self.secure.server_key)] if self.secure else []
        self.proc.start(
            [str(self.binary), "--port", self.address, "--quiet", "--keep-alive", *tls, "posix", *store, str(data)],
            env={"ROOT_ACCESS_KEY_ID": self.settings.s3_access_key.get_secret_value(),
                 "ROOT_SECRET_ACCESS_KEY": self.settings.s3_secret_key.get_secret_value(),
                 "VGW_REGION": self.settings.s3_region},
        )

    def health(self) -> str | None:
        from app.storage.objectstore import ObjectStore

        async def check() -> None:
            async with ObjectStore(self.settings) as store:
                await store.client.list_buckets()

        return _health(check)

    def provision(self) -> None:
        from app.storage.objectstore import ObjectStore

        async def run() -> None:
            async with ObjectStore(self.settings) as store:
                await store.ensure_bucket()

        asyncio.run(run())


class Prometheus(Service):
    """Debian's Prometheus on 127.0.0.1:9090 scraping the worker's /metrics (``--with-prometheus``)."""

    def __init__(self, settings: Settings, secure: SecureStack | None = None) -> None:
        super().__init__(settings, "prometheus", start_timeout=60, secure=secure)

    def install(self) -> None:
        if shutil.which("prometheus") is None:
            _apt_install("prometheus")

    def launch(self) -> None:
        config = self.dir / "prometheus.yml"
        rules = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"
        config.write_text(
            "global:\n  scrape_interval: 5s\n  evaluation_interval: 15s\n"
            f"rule_files:\n  - {rules}\n"
            "scrape_configs:\n  - job_name: imgstream\n"
            f"    static_configs:\n      - targets: ['{self.settings.web_host}:{self.settings.web_port}']\n")
        self.proc.start([shutil.which("prometheus") or "prometheus", f"--config.file={config}",
                         f"--storage.tsdb.path={self.dir / 'data'}", "--web.listen-address=127.0.0.1:9090",
                         "--storage.tsdb.retention.time=7d"])

    def health(self) -> str | None:
        import urllib.request

        try:
            with urllib.request.urlopen("http://127.0.0.1:9090/-/ready", timeout=3) as r:
                return None if r.status == 200 else f"HTTP {r.status}"
        except OSError as exc:
            return str(exc)


SERVICES = {"postgres": Postgres, "s3": ObjectStoreServer, "kafka": Kafka}
OPTIONAL = {"prometheus": Prometheus}


def _select(settings: Settings, names: list[str] | None, running_optional: bool = False,
            secure: bool = False) -> list[Service]:
    known = {**SERVICES, **OPTIONAL}
    chosen = list(names or SERVICES)
    stack = None
    if secure:  # the secured twin: its own ports, state, certificates and secrets
        from tools.stack.secure import prepare

        stack = prepare(settings)
        settings = stack.settings(settings)
    if not names and running_optional:  # down/status also cover optional services we started
        chosen += [n for n, cls in OPTIONAL.items() if cls(settings, stack).proc.pid() is not None]
    unknown = set(chosen) - set(known)
    if unknown:
        raise ToolingError(f"unknown service(s): {sorted(unknown)}; choose from {sorted(known)}")
    return [known[n](settings, stack) for n in chosen]


def _cluster(settings: Settings, names: list[str] | None, brokers: int):
    """The cluster in place of the single broker (``--brokers N``, N > 1), or None."""
    if brokers <= 1 or (names and "kafka" not in names):
        return None
    from tools.stack.cluster import KafkaCluster

    return KafkaCluster(settings, brokers)


def _others(settings: Settings, names: list[str] | None, brokers: int, **kw) -> list[Service]:
    """The services besides the cluster (all of ``names``, or every one, when there is none)."""
    if brokers <= 1:
        return _select(settings, names, **kw)
    rest = [n for n in (names or SERVICES) if n != "kafka"]
    return _select(settings, rest, **kw) if rest else []


def up(settings: Settings, names: list[str] | None = None, report=print, secure: bool = False,
       brokers: int = 1) -> None:
    """Install what is missing side by side (Kafka's jars, the versitygw build and any apt package
    are independent downloads), then start the services one by one in a fixed order."""
    services = _others(settings, names, brokers, secure=secure)
    cluster = _cluster(settings, names, brokers)
    with ThreadPoolExecutor(max_workers=len(services) + 1) as pool:
        for done in [pool.submit(svc.install) for svc in [*services, *([cluster] if cluster else [])]]:
            done.result()
    for svc in services:
        report(f"{svc.name}{' (secured)' if secure else ''}: {svc.up()}")
    if cluster is not None:
        report(f"{cluster.name}: {cluster.up()}")


def down(settings: Settings, names: list[str] | None = None, report=print, secure: bool = False,
         brokers: int = 1) -> None:
    cluster = _cluster(settings, names, brokers)
    if cluster is not None:
        report(f"{cluster.name}: {cluster.down()}")
    for svc in reversed(_others(settings, names, brokers, running_optional=True, secure=secure)):
        report(f"{svc.name}{' (secured)' if secure else ''}: {svc.down()}")


def status(settings: Settings, names: list[str] | None = None,
           secure: bool = False, brokers: int = 1) -> list[tuple[str, int | None, str]]:
    rows = [(svc.name, *svc.status())
            for svc in _others(settings, names, brokers, running_optional=True, secure=secure)]
    cluster = _cluster(settings, names, brokers)
    return rows + (cluster.status() if cluster is not None else [])
