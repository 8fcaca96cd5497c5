"""The benchmark report renders what was measured: the per-role CPU table and its event-loop sum."""

from __future__ import annotations

from tools.bench.cpu import BACKBONE, EVENT_LOOP, S3_CLIENT
from tools.bench.report import _loop_profile, _one_decode, _roles_cpu, _signing


def test_roles_cpu_lists_each_role_and_sums_the_event_loops_by_stage():
    by_role = {
        "front": {EVENT_LOOP: 0.7, BACKBONE: 0.25},
        "extractor": {EVENT_LOOP: 0.9, BACKBONE: 13.5},
        "classifier-fast": {EVENT_LOOP: 0.3, BACKBONE: 0.0},
        "classifier-balanced": {EVENT_LOOP: 0.35, BACKBONE: 0.0},
        "classifier-accurate": {EVENT_LOOP: 0.4, BACKBONE: 0.0},
    }
    text = "\n".join(_roles_cpu(by_role))
    assert "| `extractor` | 0.90 | 13.50 | 14.40 |" in text
    assert f"| role | {EVENT_LOOP} | {BACKBONE} | all threads |" in text
    assert "Event loops of all roles together: 2.65 CPU ms per image" in text
    assert "the HTTP front 0.70, the extractor 0.90, the three classifiers 1.05" in text


def test_roles_cpu_is_absent_when_the_phase_did_not_run():
    assert _roles_cpu({}) == []


def test_signing_reports_its_direct_cost_apart_from_the_host_speed():
    def sat(rate, worker, backbone, client, server):
        return {"images_per_s": rate, "cpu": {"total_ms_per_image": worker + server,
                                              "ms_per_image": {"worker": worker, "s3": server},
                                              "threads_ms_per_image": {BACKBONE: backbone, S3_CLIENT: client}}}
    text = "\n".join(_signing("auto", False, sat(30.0, 45.0, 34.0, 0.75, 9.0), sat(24.0, 57.0, 41.0, 2.25, 14.0)))
    assert "IMGSTREAM_S3_PAYLOAD_SIGNING=auto: unsigned on this endpoint" in text
    assert "| as configured (auto) | 30.0 | 54.0 | 45.0 | 34.0 | 0.8 | 9.0 |" in text
    assert "| signed | 24.0 | 71.0 | 57.0 | 41.0 | 2.2 | 14.0 |" in text
    # 2.25 + 14.0 - (0.75 + 9.0): the client's hashing and the server's check, not the slower backbone
    assert "Signed: 0.80x the throughput" in text and "S3 server): +6.5 CPU ms per photo" in text


def test_one_decode_reports_the_share_of_crops_taken_from_the_upload_handler():
    text = "\n".join(_one_decode({"upload": 1500.0, "fetched": 64.0}))
    assert "of the 1564 images this worker's extractor took" in text and "96 % used the crop" in text
    assert "64 were fetched back from S3" in text
    assert _one_decode({}) == [] and _one_decode(None) == []  # a baseline worker without the metric


def test_loop_profile_sets_py_spys_busy_share_beside_the_main_threads_measured_cpu():
    profile = {"seconds": 4.5, "event_loop_busy": 0.54, "other_threads": [["onnx_0", 0.9]],
               "top_own": [["select", 0.12]], "top_inclusive": [["select", 0.12]]}
    sat = {"images_per_s": 140.0, "cpu": {"threads_ms_per_image": {EVENT_LOOP: 1.5}}}
    text = "\n".join(_loop_profile(profile, sat))
    assert "busy **54 %**" in text
    assert "the main thread used 1.50 CPU ms per image, 21 % of one core at 140.0 images/s" in text
    assert "the main thread used" not in "\n".join(_loop_profile(profile, {"images_per_s": 140.0}))
