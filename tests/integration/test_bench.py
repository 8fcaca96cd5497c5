"""`imgstream bench --quick` runs against the real stack and writes its report. No timing is asserted:
speed is what the benchmark measures, not what a test can promise on a noisy machine."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_quick_bench_writes_report_plot_and_json(stack, dataset, tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    proc = subprocess.run([sys.executable, "-m", "app.ops.cli", "bench", "--quick", "--data", str(dataset), "--out", str(out),
                           "--baseline", "HEAD"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    for section in ("against the hardware limit", "Open-loop latency", "Sizes and per-prediction cost", "Peers",
                    "Memory", "GPU:", "CPU:"):
        assert section in text
    assert out.with_suffix(".png").stat().st_size > 10_000
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["imgstream"]["saturation"]["images"] == 160
    assert [o["fraction"] for o in result["imgstream"]["open_loop"]] == [0.1, 0.5, 0.8]
    assert all(o["accepted"] == o["sent"] for o in result["imgstream"]["open_loop"])
    assert result["before"]["images"] == 60 and result["sync"]["images_per_s"] > 0
    # the CPU budget covers the worker and every local service, and explains the ratio
    cpu = result["imgstream"]["saturation"]["cpu"]
    assert {"worker", "kafka", "postgres", "s3", "load generator (bench process)"} <= set(cpu["ms_per_image"])
    assert cpu["ms_per_image"]["worker"] > 0 and cpu["total_ms_per_image"] >= cpu["ms_per_image"]["worker"]
    assert "Where the CPU went" in text
    # the broker's JIT compiler threads, part of Kafka's share
    assert 0 <= cpu["kafka_jit_ms_per_image"] <= cpu["ms_per_image"]["kafka"]
    assert "JIT compiler threads took" in text
    # the median of three passes, and the worker's CPU by thread role (pool threads named at the OS)
    assert len(result["imgstream"]["saturation"]["passes_images_per_s"]) == 3
    # each pass also against a limit measured just before it
    paired = result["imgstream"]["saturation"]["paired_limits"]
    assert len(paired["limits_images_per_s"]) == 3 and all(x > 0 for x in paired["limits_images_per_s"])
    assert paired["ratios"] == [r / x for r, x in zip(result["imgstream"]["saturation"]["passes_images_per_s"],
                                                       paired["limits_images_per_s"], strict=True)]
    assert "each against the limit measured just before it" in text
    threads = cpu["threads_ms_per_image"]
    assert threads["backbone (onnx*, decode* threads)"] > 0 and threads["event loop (main thread)"] > 0
    assert "Outside the backbone's own work: the worker" in text
    lim = result["limit"]
    assert lim["images_per_s"] == max(lim["extractor"]["images_per_s"], lim["ort_default"]["images_per_s"])
    assert lim["extractor"]["parallel_chunks"] >= 1 and lim["cpu_ms_per_image"] > 0
    # the event loop's levers side by side, and py-spy's view of the loop at saturation
    assert list(result["levers"]) == ["asyncio + aioboto3", "uvloop + aioboto3", "asyncio + obstore", "uvloop + obstore",
                                         "asyncio + obstore, one extractor batch in flight",
                                         "asyncio + obstore, two extractor batches in flight",
                                         "asyncio + obstore, one agent per classifier",
                                         "asyncio + obstore, classifiers on LightGBM"]
    assert all(v["images_per_s"] > 0 and v["cpu"]["ms_per_image"]["worker"] > 0 for v in result["levers"].values())
    loop = result["imgstream"]["event_loop_profile"]
    assert 0 < loop["event_loop_busy"] <= 1.05 and loop["top_own"] and "## 12. The event loop" in text
    # photos: every size through the pipeline, the baseline's workers (a worktree at HEAD) too
    photos = result["photos"]
    assert list(photos["sizes"]) == ["640x480", "1920x1080", "4032x3024"] and photos["baseline"].startswith("HEAD")
    for name, row in photos["sizes"].items():
        assert row["imgstream"]["saturation"]["images"] == 48 and row["baseline"]["saturation"]["images"] == 48, name
        assert row["imgstream"]["open_loop"][0]["accepted"] == row["imgstream"]["open_loop"][0]["sent"], name
        assert row["limit"]["images_per_s"] > 0 and row["sync"]["images_per_s"] > 0, name
    shadows = result["shadows"]
    assert list(shadows["configs"]) == ["none", "one shadow (k = 10)", "two shadows (k = 10 and 50)"]
    for (name, cfg), versions in zip(shadows["configs"].items(), ([], shadows["shadows"][:1], shadows["shadows"]),
                                     strict=True):
        # every image classified by the serving bundle and by each shadow, three rows each
        assert cfg["rows"] == {v: 3 * 160 for v in [shadows["serving"], *versions]}, name
    assert "## 13. Shadow bundles" in text
    assert photos["sizes"]["4032x3024"]["mean_bytes"] > 1_000_000
    assert "does not fit Kafka" in photos["sizes"]["4032x3024"]["before"]["skipped"]
    assert photos["sizes"]["640x480"]["before"]["images"] == 24
    # the payload-signing lever on the largest photo, its own worker with every body signed
    assert photos["signing"] == "auto" and photos["signs"] is False  # the local S3 is on loopback
    assert [n for n, r in photos["sizes"].items() if "signed" in r] == ["4032x3024"]
    assert photos["sizes"]["4032x3024"]["signed"]["saturation"]["images"] == 48
    assert "| signed |" in text
    assert "## 10. Photos" in text and "Baseline: the same phase run by workers checked out at `HEAD" in text
