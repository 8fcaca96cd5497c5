"""All of imgstream's configuration, in one pydantic-settings class.

Every field is read from an environment variable named ``IMGSTREAM_<FIELD>`` (upper case), or from
a ``.env`` file in the working directory. The settings table of docs/REFERENCE.md is generated from the
docstrings below (``imgstream docs``), so a field without one is a bug.
"""

from __future__ import annotations

import os
import socket

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SecretsSettingsSource, SettingsConfigDict

from models.domain import CLASSIFIERS, DEFAULT_K

AGENT_ROLES = ("extractor", *(f"classifier-{name}" for name in CLASSIFIERS), "dead-letter")
# Every worker serves the HTTP API; ``front`` alone makes one that runs no agent (the processes that
# take the uploads behind a load balancer, scaled on their own).
ROLES = ("front", *AGENT_ROLES)
Backbone = Literal["efficientnet_lite0", "resnet50"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="IMGSTREAM_", env_file=".env", extra="ignore", frozen=True, use_attribute_docstrings=True,
        # an empty variable is unset: a compose override or a chart value left blank falls back to
        # the secret's file (secrets_dir) or the default
        env_ignore_empty=True,
    )

    # --- where things live -------------------------------------------------------------------
    secrets_dir: Path | None = None
    """A folder of files, one per setting, each named like its variable (``IMGSTREAM_KAFKA_PASSWORD``,
    any case) and holding its value: how Docker and Kubernetes mount secrets. A variable set in the
    environment wins over its file. Read from the environment only."""
    state_dir: Path = Path("var")
    """Project-owned directory for the local stack's data, logs and pid files, and bundle cache."""
    cache_dir: Path = Path.home() / ".cache" / "imgstream"
    """Cache for big downloads kept outside the clone: Kafka jars, versitygw, export venv, features."""

    # --- Kafka ---------------------------------------------------------------------------------
    kafka_bootstrap: str = "127.0.0.1:9092"
    """Kafka bootstrap servers (host:port[,host:port])."""
    kafka_version: str = "3.9.1"
    """Apache Kafka version the local stack resolves from Maven Central (must match deploy/kafka/pom.xml)."""
    topic_partitions: int = Field(4, ge=1)
    """Partitions of every imgstream topic; the unit of parallelism for each stage."""
    topic_replicas: int = Field(1, ge=1)
    """Replication factor of the topics imgstream creates (3 on a cluster of three brokers or more)."""
    kafka_min_insync_replicas: int = Field(1, ge=1)
    """``min.insync.replicas`` of the topics imgstream creates, its tables' changelogs included:
    replicas that must hold a write before the broker confirms it (the producer waits for all of
    them, acks=all). With 3 replicas, 2: a broker may be lost without losing a confirmed message,
    and with two lost the broker refuses writes (uploads get 503) instead of keeping them once."""
    kafka_idempotent_producer: bool = True
    """Idempotent producing (``enable.idempotence``): a send the producer retries into a new
    partition leader is written once, in order."""
    input_topic: str = "images-input-stream"
    """Topic of upload events (object key, sha256), keyed by sha256."""
    features_topic: str = "image-features-stream"
    """Topic of compact descriptor messages, keyed by image id."""
    dead_letter_topic: str = "images-dead-letter"
    """Topic of messages that could not be processed, with the reason."""
    kafka_session_timeout: float = Field(15.0, gt=1)
    """Seconds without a heartbeat before Kafka declares a worker dead and moves its partitions."""
    kafka_linger_s: float = Field(0.002, ge=0)
    """Seconds the producer lets a batch fill before sending it (Faust's ``producer_linger``).
    Longer: fewer, larger produce requests at saturation (less event-loop and broker CPU); at light
    load each produce waits up to this long (the trade-off is measured in docs/BENCHMARKS.md)."""
    app_id: str = "imgstream"
    """Faust application id: the consumer-group prefix and table changelog prefix."""
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """How every Kafka client of the worker and the sweeper connects: PLAINTEXT, SSL (TLS), or SASL
    over plain TCP or TLS (Strimzi, MSK and Confluent Cloud listeners run SASL_SSL)."""
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    """SASL mechanism with a SASL_* security protocol."""
    kafka_username: str | None = None
    """SASL user name."""
    kafka_password: SecretStr | None = None
    """SASL password (a secret)."""
    kafka_ca_file: Path | None = None
    """PEM file of the CA that signed the brokers' certificates (a private CA); unset: the system's
    trust store. The brokers' certificates and host names are always verified."""
    kafka_cert_file: Path | None = None
    """PEM client certificate for brokers that require mutual TLS (with kafka_key_file)."""
    kafka_key_file: Path | None = None
    """PEM private key of kafka_cert_file."""

    # --- PostgreSQL ----------------------------------------------------------------------------
    postgres_dsn: SecretStr = SecretStr("postgresql://imgstream:imgstream@127.0.0.1:5433/imgstream")
    """asyncpg DSN of the predictions database (a secret: never logged)."""
    postgres_port: int = 5433
    """Port of the local stack's PostgreSQL (the DSN must match)."""
    postgres_ca_file: Path | None = None
    """PEM file of the CA that signed PostgreSQL's certificate: set, every connection uses TLS and
    verifies the certificate and host name (libpq's sslmode=verify-full). Unset, the DSN's own
    sslmode and sslrootcert apply."""

    # --- S3 ------------------------------------------------------------------------------------
    s3_endpoint: str = "http://127.0.0.1:7070"
    """S3 endpoint URL (versitygw locally; MinIO, SeaweedFS or AWS elsewhere)."""
    s3_bucket: str = "imgstream"
    """Bucket holding raw images (raw-images/...) and model bundles (models/...)."""
    s3_region: str = "us-east-1"
    """S3 region name used for request signing."""
    s3_access_key: SecretStr = SecretStr("imgstream")
    """S3 access key id (a secret)."""
    s3_secret_key: SecretStr = SecretStr("imgstream-secret-key")
    """S3 secret access key (a secret)."""
    s3_ca_file: Path | None = None
    """PEM file of the CA that signed the S3 endpoint's certificate (an https:// endpoint with a
    private CA); unset: the system's trust store."""
    s3_data_client: Literal["aioboto3", "obstore"] = "obstore"
    """Client of the per-image S3 calls (upload's put, extractor's get): obstore (signing and I/O
    on Rust threads, off the event loop; compared in docs/BENCHMARKS.md) or aioboto3; aioboto3
    serves everything else."""
    s3_payload_signing: Literal["auto", "signed", "unsigned"] = "auto"
    """Whether obstore's puts sign the body's SHA-256 (SigV4) or send UNSIGNED-PAYLOAD. ``auto``
    signs over plain HTTP to another host and leaves the body unsigned where the transport already
    guards it: HTTPS (TLS; AWS's SDKs do the same for S3 over HTTPS) and loopback (it never leaves
    the host). Signing costs a SHA-256 of the body on both ends (its CPU per photo is in
    docs/BENCHMARKS.md). aioboto3's calls always sign over HTTP."""

    # --- HTTP ----------------------------------------------------------------------------------
    web_host: str = "127.0.0.1"
    """Address the worker's web server binds to."""
    web_port: int = 6066
    """Port of the worker's web server (uploads, predictions, health, metrics, dashboard)."""
    api_write_tokens: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    """Bearer tokens (comma-separated secrets) that may upload, send feedback and call /extract and
    /predict, and read everything a read token reads. With any read or write token set, every route
    but the probes (/live, /ready, /health) and the dashboard's static page needs one; several at
    once let a token be rotated without a gap (docs/SECURITY.md)."""
    api_read_tokens: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    """Bearer tokens (comma-separated secrets) that may read: predictions, images, listings, stats,
    the dashboard's data and the OpenAPI document."""
    metrics_tokens: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    """Bearer tokens (comma-separated secrets) Prometheus sends to scrape /metrics; unset, /metrics
    is open (it holds counters and timings, never images or ids)."""
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1)
    """Largest accepted upload body in bytes (413 above)."""
    max_pixels: int = Field(40_000_000, ge=1)
    """Largest accepted image area in pixels; refuses decompression bombs (413 above)."""

    # --- models --------------------------------------------------------------------------------
    backbone: Backbone = "efficientnet_lite0"
    """Backbone of the bundles `models train` makes when no --backbone is given."""
    bundle_version: str = "latest"
    """Model bundle version workers serve. 'latest': the one the deployment's registry record names
    (`imgstream models promote`; followed without a restart), else the newest published. A
    version pinned here is served whatever the registry says."""
    shadow_bundles: Annotated[tuple[str, ...], NoDecode] = ()
    """Bundles run beside the serving one on the live stream (comma-separated versions): their
    predictions are stored tagged with their version and never served. The registry's record
    (`imgstream models shadow`), once written, takes over and is followed without a restart.
    A shadow must share the serving bundle's backbone: it costs a reduction and three small
    models per image, not a second backbone run."""
    registry_poll_s: float = Field(10.0, gt=0)
    """How often a worker reads the deployment's registry record (serving bundle and shadows)."""
    drift_window: int = Field(500, ge=20)
    """Recent serving descriptors the drift score compares with the bundle's training statistics."""
    drift_min_images: int = Field(200, ge=10)
    """Descriptors needed in the window before a drift score is reported (with fewer, sampling
    noise alone reaches the alert level: about 9 / n per descriptor for 10 bins)."""
    accuracy_window_s: float = Field(3600.0, gt=0)
    """Sliding window of label feedback (by when the label arrived) for the live accuracy metric."""
    descriptor_k: int = Field(DEFAULT_K, ge=2, le=256)
    """Descriptors per image of the bundles `models train` makes when no --k is given (a worker
    takes k from its bundle)."""
    ort_threads: int = Field(0, ge=0)
    """onnxruntime intra-op threads per batch (0 = in workers cores / IMGSTREAM_ONNX_PARALLEL,
    at least 1; in training and evaluation every core)."""

    onnx_providers: Annotated[tuple[str, ...], NoDecode] = ("CPUExecutionProvider",)
    """onnxruntime execution providers of the extractor, in order of preference (comma-separated
    in the env var), e.g. ``CUDAExecutionProvider,CPUExecutionProvider`` with onnxruntime-gpu
    installed (the ``gpu`` extra; see docs/ARCHITECTURE.md). A provider this onnxruntime lacks is an error
    at start, never a silent fall-back to the CPU."""

    event_loop: Literal["asyncio", "uvloop"] = "asyncio"
    """The worker's event loop: asyncio's own or uvloop (libuv; Faust runs on either)."""

    # --- pipeline ------------------------------------------------------------------------------
    roles: Annotated[tuple[str, ...], NoDecode] = ROLES
    """Stages this worker runs (comma-separated in the env var): any of front, extractor,
    classifier-fast, classifier-balanced, classifier-accurate, dead-letter. Every worker serves the
    HTTP API; a worker with the front role alone runs no agent."""
    extract_batch_size: int = Field(16, ge=1)
    """Extractor micro-batch size: stream.take(n, ...)."""
    extract_batch_within: float = Field(0.0025, gt=0)
    """Extractor micro-batch wait in seconds, counted from the batch's first event (a full batch
    goes at once): stream.noack_take(..., within=t)."""
    extract_pipeline_depth: int = Field(3, ge=1)
    """Extractor micro-batches in flight: while one batch runs the backbone and publishes, the next
    ones' look-ups, fetches and decodes run and their ONNX calls queue behind, so the cores do not
    idle between batches. Batches are acked in order, each once handled (1 = one at a time)."""
    onnx_parallel: int = Field(2, ge=1)
    """ONNX calls side by side per extractor batch: the batch is split into this many chunks, each
    run on its own thread (with cores / this many intra-op threads unless IMGSTREAM_ORT_THREADS)."""
    local_object_cache_mb: int = Field(256, ge=0)
    """Decoded crops of uploads kept in memory (MB; 150 KB per 224x224 crop) so an extractor in the
    same worker neither fetches the image from S3 nor decodes it again. When full, a new crop is
    not kept (the backlog's oldest keep theirs); 256 MB holds about 1,700 crops (0 = off)."""
    fetch_concurrency: int = Field(16, ge=1)
    """Concurrent S3 fetches per extractor batch."""
    table_store: Literal["rocksdb", "memory"] = "rocksdb"
    """Store of the descriptor table: RocksDB on local disk (bounded memory; a restarted worker
    or a standby replays only the changelog's tail) or memory (in-process tests; the whole
    changelog is replayed into RAM on every start)."""
    table_dir: Path | None = None
    """Directory of the table's RocksDB files (default <state_dir>/faust/<group>/tables-<host>-<web_port>:
    host name and web port tell apart two workers of one group sharing a volume or a host, and a
    worker restarted on the same host and port finds its own files)."""
    table_cache_mb: int = Field(4, ge=1)
    """RocksDB block cache of each table partition, in MB (re-uploads' lookups; a miss reads one
    block from the page cache)."""
    table_standby_replicas: int = Field(1, ge=0)
    """Workers besides the owner that keep a live copy of each table partition, so that when a
    worker dies its partitions move to one that has their state and replays only the tail."""
    descriptor_ttl_s: float = Field(7 * 24 * 3600.0, ge=0)
    """The descriptor table forgets an image's descriptors this many seconds after its extraction
    (0 = keep forever): expired entries are deleted with a tombstone, so the compacted changelog
    shrinks too, and a re-upload after that is extracted again."""
    descriptor_expiry_interval_s: float = Field(300.0, gt=0)
    """Seconds between two passes of the extractor over its table partitions to delete expired
    entries (a lookup never answers with an expired entry, whatever this interval)."""
    classify_batch_size: int = Field(64, ge=1)
    """Classifier micro-batch size (one predict call and one DB write per batch)."""
    classify_batch_within: float = Field(0.001, gt=0)
    """Classifier micro-batch wait in seconds, counted from the batch's first event."""
    classifier_runtime: Literal["onnx", "lightgbm"] = "onnx"
    """What computes the classifiers' raw scores in a worker with a classifier role: ``onnx``, the
    same trees as an onnxruntime tree ensemble (checked against LightGBM when the bundle loads; a
    booster it cannot express, or does not match, stays on LightGBM), or ``lightgbm``."""
    classifier_agents: Literal["shared", "each"] = "shared"
    """``shared``: one agent runs every classifier role of this worker on each micro-batch (one
    delivery and one decode per message, one off-loop call for the predictions, one write for all
    rows); ``each``: one agent per classifier, each reading its own copy of every message. Either
    way every classifier's rows, metrics and dead letters are its own, and a classifier in a worker
    of its own (a role) is one agent."""

    resend_after_s: float = Field(60.0, ge=0)
    """The sweeper (dead-letter role) re-publishes an accepted image of this deployment that has no
    prediction after this many seconds and whose input offset the extractor's group has committed
    past (an image still queued in Kafka is never re-sent); 0 turns it off. A backstop only: the
    stream itself loses nothing on restarts and rebalances."""
    extractor_group: str = ""
    """Consumer group of the extractor, whose committed input offsets the sweeper compares with
    each image's offset (empty: the group of this worker when it runs the extractor, else
    <app_id>-extractor, the group of a worker that runs the extractor role alone)."""
    classifier_groups: Annotated[tuple[str, ...], NoDecode] = ()
    """Consumer groups of the three classifiers (comma-separated), whose committed offsets on the
    features topic tell the sweeper that a descriptor was consumed (empty: this worker's group when
    it runs every classifier, else <app_id>-classifier-<name> for each)."""
    poison_attempts: int = Field(3, ge=1)
    """Attempts of a batch that fails with an error that is not an outage before it is split to
    isolate the message(s) that fail, which are dead-lettered; outages (Kafka, PostgreSQL or S3
    down) are retried without limit."""
    heap_trim_interval_s: float = Field(60.0, ge=0)
    """Every this many seconds the worker hands the C heap's free pages back to the OS (glibc's
    malloc_trim; see app/core/memtrace.release_free_heap; 0 = never)."""

    trace_memory_s: float = Field(0.0, ge=0)
    """Diagnostics: log a census of the worker's memory at this interval in seconds (RSS, the C
    heap, Python's blocks, the object types that grew most since the first census; 0 = off)."""

    # --- logging -------------------------------------------------------------------------------
    log_level: str = "INFO"
    """Log level of imgstream's own loggers."""
    log_json: bool = False
    """Emit one JSON object per log line (for log shippers)."""

    @field_validator("classifier_groups", mode="before")
    @classmethod
    def _groups(cls, value):
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(g.strip() for g in items if g.strip())

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        folder = os.environ.get("IMGSTREAM_SECRETS_DIR", "").strip()
        if folder:
            file_secret_settings = SecretsSettingsSource(settings_cls, secrets_dir=folder)
        return init_settings, env_settings, dotenv_settings, file_secret_settings

    @model_validator(mode="after")
    def _kafka_sasl(self):
        if self.kafka_security_protocol.startswith("SASL_") and (not self.kafka_username or not self.kafka_password):
            raise ValueError(f"kafka_security_protocol {self.kafka_security_protocol} needs IMGSTREAM_KAFKA_USERNAME "
                             "and IMGSTREAM_KAFKA_PASSWORD")
        return self

    @field_validator("kafka_ca_file", "kafka_cert_file", "kafka_key_file", "postgres_ca_file", "s3_ca_file",
                     "kafka_username", "kafka_password", mode="before")
    @classmethod
    def _unset_when_empty(cls, value):
        # an empty variable (a chart value left blank) means "not set", never the current folder
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("api_write_tokens", "api_read_tokens", "metrics_tokens", mode="before")
    @classmethod
    def _tokens(cls, value):
        items = value.split(",") if isinstance(value, str) else list(value)
        out = []
        for item in items:
            token = item.get_secret_value() if isinstance(item, SecretStr) else str(item)
            if token.strip():
                out.append(SecretStr(token.strip()))
        return tuple(out)

    @field_validator("shadow_bundles", mode="before")
    @classmethod
    def _shadows(cls, value):
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(dict.fromkeys(v.strip() for v in items if v.strip()))

    @field_validator("onnx_providers", mode="before")
    @classmethod
    def _providers(cls, value):
        items = value.split(",") if isinstance(value, str) else list(value)
        out = tuple(p.strip() for p in items if p.strip())
        if not out:
            raise ValueError("name at least one onnxruntime execution provider")
        return out

    @field_validator("roles", mode="before")
    @classmethod
    def _roles(cls, value):
        return parse_roles(value)

    @property
    def descriptor_changelog_topic(self) -> str:
        """The descriptor table's changelog topic (Faust's name for the table ``descriptors``)."""
        return f"{self.app_id}-descriptors-changelog"

    @property
    def worker_ort_threads(self) -> int:
        """Intra-op threads of each of the extractor's side-by-side ONNX calls: one chunk per core
        by default (compared with every core on the whole batch in docs/BENCHMARKS.md)."""
        return self.ort_threads or max(1, (os.cpu_count() or 1) // self.onnx_parallel)

    @property
    def worker_wide_threads(self) -> int | None:
        """Intra-op threads of the extractor's second ONNX session, for batches too small to
        split (low load): every core (0). None when batches are never split (no second session)."""
        return 0 if self.onnx_parallel > 1 else None

    @property
    def worker_table_dir(self) -> Path:
        default = self.state_dir / "faust" / self.group_id / f"tables-{socket.gethostname()}-{self.web_port}"
        return (self.table_dir or default).resolve()

    @property
    def bundles_dir(self) -> Path:
        return self.state_dir / "bundles"

    @property
    def group_id(self) -> str:
        """This worker's consumer group: <app_id> with every agent role, <app_id>-<roles> otherwise,
        so each stage scales on its own by partitions and processes (``front`` runs no agent and
        does not change the group of a worker that also runs agents)."""
        agents = set(self.roles) - {"front"}
        if agents == set(AGENT_ROLES):
            return self.app_id
        return f"{self.app_id}-{'-'.join(sorted(agents or {'front'}))}"

    @property
    def extractor_group_id(self) -> str:
        if self.extractor_group:
            return self.extractor_group
        return self.group_id if "extractor" in self.roles else f"{self.app_id}-extractor"

    @property
    def classifier_group_ids(self) -> tuple[str, ...]:
        if self.classifier_groups:
            return self.classifier_groups
        if all(f"classifier-{n}" in self.roles for n in CLASSIFIERS):
            return (self.group_id,)
        return tuple(f"{self.app_id}-classifier-{n}" for n in CLASSIFIERS)

    @property
    def classifiers(self) -> tuple[str, ...]:
        """The classifiers this worker runs an agent for (its ``classifier-*`` roles, in order)."""
        return tuple(r.removeprefix("classifier-") for r in self.roles if r.startswith("classifier-"))

    def onnx_classifiers(self, names: Sequence[str]) -> tuple[str, ...]:
        """Which of ``names`` serve as tree ensembles on onnxruntime (``classifier_runtime``)."""
        return tuple(names) if self.classifier_runtime == "onnx" else ()

    @property
    def deployment(self) -> str:
        """What scopes an image's row to the pipeline that accepted it (app id, bucket, input
        topic): two deployments sharing one database never touch each other's images."""
        return f"{self.app_id}/{self.s3_bucket}/{self.input_topic}"


def parse_roles(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Roles from a comma-separated string or a sequence; 'all' means every role."""
    items = value.split(",") if isinstance(value, str) else list(value)
    roles = tuple(r.strip() for r in items if r.strip())
    if roles in ((), ("all",)):
        return ROLES
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise ValueError(f"unknown role(s) {unknown}; choose from {', '.join(ROLES)}")
    return roles


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
