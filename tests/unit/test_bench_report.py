"""The benchmark report renders what was measured: the per-role CPU table and its event-loop sum."""

from __future__ import annotations

from tools.bench.cpu import BACKBONE, EVENT_LOOP
from tools.bench.report import _roles_cpu


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
