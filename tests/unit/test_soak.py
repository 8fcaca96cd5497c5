"""The bench's pure parts: the soak's distinct uploads and growth summary, py-spy's summary."""

import hashlib
import io

import pytest
from PIL import Image

from tools.bench.images import DistinctImages
from tools.bench.soak import Sample, summarize


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, "JPEG")
    return buf.getvalue()


def test_distinct_images_differ_in_bytes_but_decode_to_the_same_pixels():
    images = DistinctImages([_jpeg()], "run")
    a, b = images[0], images[1]
    assert hashlib.sha256(a).digest() != hashlib.sha256(b).digest()
    pa, pb = Image.open(io.BytesIO(a)), Image.open(io.BytesIO(b))
    assert pa.tobytes() == pb.tobytes() and pa.size == (8, 8)
    assert images[5] == DistinctImages([_jpeg()], "run")[5]  # deterministic


def _sample(t, rss, lag=0, p99=100.0):
    return Sample(t, {"worker": {"rss_mb": rss, "pss_mb": rss}}, lag, 10, 50.0, p99)


def test_growth_is_measured_from_the_end_of_the_warm_up_on_medians():
    samples = [_sample(t, rss) for t, rss in ((0, 100), (30, 400), (60, 500), (90, 500), (120, 510),
                                               (150, 520), (180, 525), (210, 9999), (240, 525))]
    sm = summarize(samples, warmup=60)
    g = sm["memory"]["worker"]["rss_mb"]
    assert g["start"] == 500 and g["end"] == 525  # one outlier sample does not decide it
    assert abs(g["growth_pct"] - 5.0) < 1e-9
    assert sm["lag_max"] == 0 and sm["e2e_p99_ms_max"] == 100.0


def test_a_run_shorter_than_its_warm_up_has_no_summary():
    assert summarize([_sample(0, 1), _sample(30, 1)], warmup=300) == {}


def test_py_spy_summary_counts_the_main_threads_busy_share_and_its_frames():
    from tools.bench import profile

    raw = "\n".join([
        "thread (100);run_forever (asyncio/base_events.py:608);_run_once (asyncio/base_events.py:1922);"
        "put_object (/x/site-packages/aiobotocore/client.py:10) 30",
        "thread (100);run_forever (asyncio/base_events.py:608);upload (/repo/app/views/api.py:5) 20",
        "thread (200);run (/repo/models/extractor.py:30) 80",
        "thread (300): onnx_1;run (/repo/models/extractor.py:30) 10",
    ])
    s = profile.summarize(raw, main_tid=100, seconds=1.0)
    assert s["event_loop_busy"] == pytest.approx(0.5)
    assert s["other_threads_busy"] == [pytest.approx(0.8), pytest.approx(0.1)]
    assert s["other_threads"] == [("200", pytest.approx(0.8)), ("onnx_1", pytest.approx(0.1))]
    assert s["top_own"][0] == ("put_object (aiobotocore/client.py)", pytest.approx(0.3))
    assert dict(s["top_inclusive"])["run_forever (asyncio/base_events.py)"] == pytest.approx(0.5)
