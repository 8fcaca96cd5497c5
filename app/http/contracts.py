"""The HTTP API's request and response contracts, typed (msgspec): the views decode requests into
them, the data plane returns them, and ``app/http/openapi.py`` generates the OpenAPI document
from them, so the document cannot drift from what the server does."""

from __future__ import annotations

from typing import Literal

import msgspec
from msgspec import UNSET, UnsetType


class Contract(msgspec.Struct):
    """Base of every contract. A nullable field is always sent (``null``); a field typed with
    ``UnsetType`` is sent only when it applies."""


# --- errors ----------------------------------------------------------------------------------------
class ErrorDetail(Contract):
    code: str
    message: str


class Error(Contract):
    """Every refusal, whatever the route: a stable machine-readable code and a message."""

    error: ErrorDetail


# --- upload ----------------------------------------------------------------------------------------
class Links(Contract):
    prediction: str
    trace: str


class Accepted(Contract):
    """An upload stored in S3 and queued in Kafka (HTTP 202)."""

    image_id: str
    object_key: str
    sha256: str
    size: int
    content_type: str
    status: Literal["pending"]
    links: Links


# --- predictions -----------------------------------------------------------------------------------
class Prediction(Contract):
    label: str
    confidence: float
    probabilities: dict[str, float]
    model_version: str
    latency_ms: float
    created_at: str | None = None


class Consensus(Contract):
    label: str | None
    agreement: int
    of: int | UnsetType = UNSET  # how many classifiers answered (absent while none has)


class TraceEvent(Contract):
    event: str
    at: str | None = None
    since_upload_ms: float | UnsetType = UNSET
    since_previous_ms: float | UnsetType = UNSET
    from_descriptor_table: bool | UnsetType = UNSET


class Image(Contract):
    """One image: its status, the predictions of its bundle, their consensus (and its timeline)."""

    image_id: str
    status: Literal["pending", "complete", "failed"]
    predictions: dict[str, Prediction]
    consensus: Consensus
    object_key: str | None = None
    sha256: str | None = None
    uploaded_at: str | None = None
    model_version: str | None = None
    error: str | None = None
    trace: list[TraceEvent] | UnsetType = UNSET  # with ?trace=1


class Page(Contract):
    items: list[Image]
    limit: int
    offset: int
    next: str | None = None


# --- direct model calls --------------------------------------------------------------------------
class ExtractRequest(Contract):
    """A stored image, by id or by object key (under raw-images/)."""

    image_id: str | None = None
    object_key: str | None = None


class Descriptors(Contract):
    object_key: str
    model_version: str
    k: int
    descriptors: list[float]
    latency_ms: float


class PredictRequest(Contract):
    descriptors: list[float]


class PredictResult(Contract):
    classifier: str
    model_version: str
    label: str
    confidence: float
    probabilities: dict[str, float]
    latency_ms: float


# --- operations ------------------------------------------------------------------------------------
class Check(Contract):
    ok: bool
    error: str | UnsetType = UNSET
    version: str | UnsetType = UNSET
    backbone: str | UnsetType = UNSET
    k: int | UnsetType = UNSET
    extractor_loaded: bool | UnsetType = UNSET


class Liveness(Contract):
    status: Literal["alive"]
    uptime_s: float
    loop_lag_ms: float


class Health(Contract):
    status: Literal["ok", "degraded"]
    roles: list[str]
    checks: dict[str, Check]


class ClassifierStats(Contract):
    predictions_5m: int
    per_second_1m: float
    latency_p50_ms: float
    latency_p99_ms: float


class Agreement(Contract):
    images: int
    unanimous: int
    rate: float | None = None


class Stats(Contract):
    classifiers: dict[str, ClassifierStats]
    agreement: Agreement
    consumer_lag: dict[str, float]
    model_version: str | None = None


# --- label feedback and experiments ----------------------------------------------------------------
class FeedbackRequest(Contract):
    label: str


class Feedback(Contract):
    """A label stored for an image (the last one sent wins)."""

    image_id: str
    label: str
    received_at: str
    updates: int


class ClassifierAccuracy(Contract):
    images: int
    correct: int
    accuracy: float | None


class BundleAccuracy(Contract):
    version: str
    classifiers: dict[str, ClassifierAccuracy]


class LiveAccuracy(Contract):
    """Per bundle and classifier, over the labels that arrived within the window."""

    window_s: float
    bundles: list[BundleAccuracy]


class ExperimentClassifier(Contract):
    predictions: int
    compared: int  # predictions of images the serving bundle also answered (shadows)
    agreement: float | None  # share of those with the serving bundle's label
    labelled: int
    live_accuracy: float | None
    held_out_top1: float | None


class ExperimentBundle(Contract):
    version: str
    role: Literal["serving", "shadow", "other"]
    k: int | None
    reduction: str | None
    predictions: int
    agreement: float | None  # the three classifiers pooled
    labelled: int
    live_accuracy: float | None  # the three classifiers pooled
    held_out_top1: float | None  # mean of the three classifiers' held-out top-1 (from the manifest)
    classifiers: dict[str, ExperimentClassifier]


class Experiments(Contract):
    """The serving bundle and its shadows side by side over the window (and any other bundle that
    made predictions in it, e.g. the one serving before a promotion)."""

    window_s: float
    serving: str | None
    shadows: list[str]
    bundles: list[ExperimentBundle]


class Drift(Contract):
    """The serving descriptors of this worker's extractor against the bundle's training data."""

    available: bool
    reason: str | None
    bundle: str | None
    images: int
    psi_max: float | None
    psi: list[float]
    alert: float


class Series(Contract):
    t: list[float]  # epoch seconds, start of each step
    values: list[float | None]


class Timeseries(Contract):
    """Charts over time: from PostgreSQL (images completed per second, end to end p50 / p99,
    agreement, live accuracy per bundle) and from this worker's memory (consumer lag, drift)."""

    window_s: float
    step_s: float
    images_per_s: Series
    end_to_end_p50_ms: Series
    end_to_end_p99_ms: Series
    agreement: Series
    live_accuracy: dict[str, Series]
    consumer_lag: Series
    drift_psi_max: Series
