"""The leaner Faust sensor exports exactly what Faust's own Prometheus sensor exports."""

from __future__ import annotations

from types import SimpleNamespace

from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from faust.types import TP
from prometheus_client import CollectorRegistry, generate_latest

from app.core.metrics import FaustSensor


class Agent:
    pass


class Stream:
    shortlabel = "Stream: Topic: images-input-stream"
    task_owner = Agent()


STREAM = Stream()


def _drive(sensor, rounds: int) -> None:
    table = SimpleNamespace(name="descriptors")
    for i in range(rounds):
        for tp in (TP("images-input-stream", 0), TP("images-input-stream", 1), TP("image-features-stream", 0)):
            message = SimpleNamespace(time_in=None)
            sensor.on_message_in(tp, 10 * i + tp.partition, message)
            sensor.on_stream_event_in(tp, 10 * i, STREAM, None)
        sensor.on_send_initiated(None, "image-features-stream", None, 36, 120)
        sensor.on_table_get(table, b"k")
        sensor.on_table_set(table, b"k", b"v")
        sensor.on_table_del(table, b"k")


def _exported(sensor_class) -> str:
    registry = CollectorRegistry()
    sensor = sensor_class(FaustMetrics.create(registry, "t"))
    _drive(sensor, 3)
    sensor._clear_partition_related_metrics()  # what a rebalance does  # noqa: SLF001
    _drive(sensor, 2)
    # every sample but the ``_created`` timestamps, which differ between any two registries
    return "\n".join(line for line in generate_latest(registry).decode().splitlines() if "_created" not in line)


def test_the_same_metrics_and_values_as_fausts_sensor():
    ours, fausts = _exported(FaustSensor), _exported(PrometheusMonitor)
    assert 't_messages_received_per_topics_partition{partition="1",topic="images-input-stream"} 11.0' in ours
    assert 't_total_events_per_stream_total{stream="stream.topic_images-input-stream.events"} 15.0' in ours
    assert ours == fausts


def test_partition_metrics_come_back_after_a_rebalance_clears_them():
    registry = CollectorRegistry()
    sensor = FaustSensor(FaustMetrics.create(registry, "t"))
    _drive(sensor, 1)
    sensor._clear_partition_related_metrics()  # noqa: SLF001
    assert "t_messages_received_per_topics_partition{" not in generate_latest(registry).decode()
    _drive(sensor, 1)
    assert "t_messages_received_per_topics_partition{" in generate_latest(registry).decode()
