"""imgstream's Prometheus metrics, in the project's own registry (not the global one).

``/metrics`` serves this registry, which also holds Faust's own sensor metrics (prefix
``imgstream_faust_``). Every metric is listed in docs/REFERENCE.md's metrics table.
"""

from __future__ import annotations

from weakref import WeakKeyDictionary

from faust.sensors.monitor import Monitor
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30)

MESSAGES = Counter(
    "imgstream_stage_messages_total", "Messages handled per stage and outcome (ok, failed, dead_lettered, retried).",
    ["stage", "outcome", "model_version"], registry=REGISTRY,
)
QUEUE_SECONDS = Histogram(
    "imgstream_stage_queue_seconds", "Time a message waited in Kafka before its stage started on it.",
    ["stage"], buckets=LATENCY_BUCKETS, registry=REGISTRY,
)
COMPUTE_SECONDS = Histogram(
    "imgstream_stage_compute_seconds", "Compute time per batch: fetch+decode+ONNX+reduce, or predict+write.",
    ["stage", "model_version"], buckets=LATENCY_BUCKETS, registry=REGISTRY,
)
PREDICT_SECONDS = Histogram(
    "imgstream_classifier_predict_seconds", "Classifier predict time per prediction (batch time / batch size).",
    ["classifier", "model_version"], buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05),
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "imgstream_stage_batch_size", "Micro-batch sizes per stage.", ["stage"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=REGISTRY,
)
END_TO_END = Histogram(
    "imgstream_end_to_end_seconds", "From upload accepted to this classifier's prediction committed.",
    ["classifier", "model_version"], buckets=LATENCY_BUCKETS, registry=REGISTRY,
)
CACHE = Counter(
    "imgstream_descriptor_cache_total", "Descriptor-table lookups by result (hit: extraction skipped).",
    ["result"], registry=REGISTRY,
)
EXTRACTOR_CROPS = Counter(
    "imgstream_extractor_crops_total", "Where the extractor's input crops came from: upload (decoded by this "
    "worker's upload handler, no fetch and no second decode) or fetched (read back from S3 and decoded).",
    ["source"], registry=REGISTRY,
)
UPLOAD_CROPS_DROPPED = Counter(
    "imgstream_upload_crops_dropped_total", "Crops decoded at upload that no extractor of this worker took, by "
    "reason: full (not kept, the cache was full: raise IMGSTREAM_LOCAL_OBJECT_CACHE_MB), elsewhere (the event "
    "went to a partition another worker extracts), expired (not taken within a minute).",
    ["reason"], registry=REGISTRY,
)
# Bound once: these are counted per image on the event loop.
CROPS_FROM_UPLOAD, CROPS_FETCHED = EXTRACTOR_CROPS.labels("upload"), EXTRACTOR_CROPS.labels("fetched")
CROPS_NOT_KEPT, CROPS_ELSEWHERE, CROPS_DROPPED_EXPIRED = (UPLOAD_CROPS_DROPPED.labels(r)
                                                          for r in ("full", "elsewhere", "expired"))
TABLE_ENTRIES = Gauge(
    "imgstream_descriptor_table_entries", "Entries of the descriptor table partitions this worker owns "
    "(counted by the last expiry pass).", registry=REGISTRY,
)
TABLE_MEMORY = Gauge(
    "imgstream_descriptor_table_memory_bytes", "RocksDB's own memory of the descriptor table on this worker, by "
    "kind (memtables, block_cache, table_readers).", ["kind"], registry=REGISTRY,
)
TABLE_EXPIRED = Counter(
    "imgstream_descriptor_table_expired_total", "Descriptor-table entries deleted (with a changelog "
    "tombstone) for being older than IMGSTREAM_DESCRIPTOR_TTL_S.", registry=REGISTRY,
)
HEAP_RELEASED = Counter(
    "imgstream_heap_released_bytes_total", "Resident memory the C heap gave back to the OS (periodic malloc_trim).",
    registry=REGISTRY,
)
HEAP_TRIM_SECONDS = Histogram(
    "imgstream_heap_trim_seconds", "Duration of one malloc_trim pass (it holds the allocator's locks meanwhile).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1), registry=REGISTRY,
)
DEAD_LETTERED = Counter(
    "imgstream_dead_lettered_total", "Messages sent to the dead-letter topic, by stage and reason code.",
    ["stage", "reason"], registry=REGISTRY,
)
REFUSED = Counter(
    "imgstream_http_refused_total", "HTTP requests refused with a 4xx/5xx, by route and error code.",
    ["route", "code"], registry=REGISTRY,
)
UPLOADS = Counter("imgstream_uploads_total", "Uploads accepted (202).", registry=REGISTRY)
MESSAGE_BYTES = Histogram(
    "imgstream_message_bytes", "Serialized message value sizes per topic.", ["topic"],
    buckets=(64, 100, 128, 160, 200, 256, 512, 1024, 4096, 65536, 1 << 20), registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "imgstream_consumer_lag", "Messages not yet committed by this app's consumer group.",
    ["topic", "partition"], registry=REGISTRY,
)
BUNDLE = Gauge("imgstream_model_bundle_info", "The loaded model bundle (value 1).", ["version", "backbone", "k"],
               registry=REGISTRY)
RESENT = Counter(
    "imgstream_resent_total", "Accepted images re-published by the sweeper because they had no prediction "
    "after IMGSTREAM_RESEND_AFTER_S.", registry=REGISTRY,
)
UNRECORDED = Gauge(
    "imgstream_uploads_unrecorded", "Accepted uploads whose row PostgreSQL has not taken yet (retried until it does).",
    registry=REGISTRY,
)
DELETE_FAILED = Counter(
    "imgstream_object_delete_failed_total", "Object deletions that failed (an object left behind in S3), by reason.",
    ["reason"], registry=REGISTRY,
)
POISON = Counter(
    "imgstream_poison_messages_total", "Messages isolated from a failing batch and dead-lettered, by stage.",
    ["stage"], registry=REGISTRY,
)
SHADOWS = Gauge("imgstream_shadow_bundles", "Shadow bundles this worker's extractor runs beside the serving one.",
                registry=REGISTRY)
DRIFT = Gauge("imgstream_drift_psi", "Population stability index of each descriptor of the recent serving "
              "descriptors against the bundle's training data.", ["bundle", "descriptor"], registry=REGISTRY)
DRIFT_MAX = Gauge("imgstream_drift_psi_max", "The largest per-descriptor PSI: the stream's drift score "
                  "(0.1-0.25 moderate, above 0.25 large).", ["bundle"], registry=REGISTRY)
FEEDBACK = Counter("imgstream_feedback_total", "Labels received through POST /feedback.", registry=REGISTRY)
LIVE_ACCURACY = Gauge("imgstream_live_accuracy", "Share of labelled images a classifier of a bundle got right, "
                      "over the feedback of the last IMGSTREAM_ACCURACY_WINDOW_S.", ["bundle", "classifier"],
                      registry=REGISTRY)
LIVE_LABELLED = Gauge("imgstream_live_accuracy_images", "Labelled images behind imgstream_live_accuracy.",
                      ["bundle", "classifier"], registry=REGISTRY)


class FaustSensor(PrometheusMonitor):
    """Faust's Prometheus sensor (the same metrics, the same values) with each labelled child
    looked up once. Faust's calls ``labels()`` on every message, event, send and table access
    (argument checks, a lock, a dict look-up, and a regex for a stream's label), several times
    per image on the event loop. The children of the partition metrics that Faust clears on a
    rebalance are looked up again after it."""

    def __init__(self, metrics: FaustMetrics, **kwargs) -> None:
        super().__init__(metrics, **kwargs)
        self._children: dict = {}
        self._stream_children: WeakKeyDictionary = WeakKeyDictionary()  # as Faust's own stream look-ups

    def _child(self, metric, key, **labels):
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(**labels)
        return child

    def _clear_partition_related_metrics(self) -> None:
        self._children.clear()
        self._stream_children.clear()
        super()._clear_partition_related_metrics()

    def on_message_in(self, tp, offset, message) -> None:
        Monitor.on_message_in(self, tp, offset, message)
        m = self._metrics
        m.messages_received.inc()
        m.active_messages.inc()
        self._child(m.messages_received_per_topics, ("in", tp.topic), topic=tp.topic).inc()
        self._child(m.messages_received_per_topics_partition, ("in", tp),
                    topic=tp.topic, partition=tp.partition).set(offset)

    def on_stream_event_in(self, tp, offset, stream, event):
        state = Monitor.on_stream_event_in(self, tp, offset, stream, event)
        m = self._metrics
        m.total_events.inc()
        m.total_active_events.inc()
        child = self._stream_children.get(stream)
        if child is None:
            child = self._stream_children[stream] = m.total_events_per_stream.labels(
                stream=f"stream.{self._stream_label(stream)}.events")
        child.inc()
        return state

    def on_send_initiated(self, producer, topic, message, keysize, valsize):
        self._child(self._metrics.topic_messages_sent, ("send", topic), topic=f"topic.{topic}").inc()
        return Monitor.on_send_initiated(self, producer, topic, message, keysize, valsize)

    def _table(self, table, operation: str):
        return self._child(self._metrics.table_operations, ("table", table.name, operation),
                           table=f"table.{table.name}", operation=operation)

    def on_table_get(self, table, key) -> None:
        Monitor.on_table_get(self, table, key)
        self._table(table, self.KEYS_RETRIEVED).inc()

    def on_table_set(self, table, key, value) -> None:
        Monitor.on_table_set(self, table, key, value)
        self._table(table, self.KEYS_UPDATED).inc()

    def on_table_del(self, table, key) -> None:
        Monitor.on_table_del(self, table, key)
        self._table(table, self.KEYS_DELETED).inc()
