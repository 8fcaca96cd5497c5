"""deploy/prometheus/alerts.yml: every metric it reads exists in the worker's registry, and (with
promtool at hand) the drift alert fires on a drifted stream and stays quiet on a normal one."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from app.core.metrics import REGISTRY
from tests.conftest import missing

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"


def _metric_names() -> set[str]:
    return {s.name for m in REGISTRY.collect() for s in m.samples} | {m.name for m in REGISTRY.collect()}


def test_every_metric_an_alert_reads_exists():
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} >= {"ImgstreamInputDrift", "ImgstreamLiveAccuracyLow"}
    known = _metric_names()
    for r in rules:
        used = set(re.findall(r"\b(imgstream_[a-z_]+)\b", r["expr"]))
        assert used and used <= known, f"{r['alert']} reads unknown metrics {used - known}"


PROMTOOL_TEST = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'imgstream_drift_psi_max{{bundle="b1", instance="w1"}}'
        values: '0.4x20'
      - series: 'imgstream_drift_psi_max{{bundle="b2", instance="w1"}}'
        values: '0.05x20'
    alert_rule_test:
      - eval_time: 15m
        alertname: ImgstreamInputDrift
        exp_alerts:
          - exp_labels: {{severity: warning, bundle: b1}}
            exp_annotations:
              summary: "Incoming images drifted from bundle b1's training data (PSI 0.40)"
              description: "See /drift and the dashboard's drift chart; retrain on recent labelled images or check the cameras upstream."
      - eval_time: 5m
        alertname: ImgstreamInputDrift
        exp_alerts: []
"""


def test_drift_alert_fires_only_on_a_drifted_bundle(tmp_path):
    if shutil.which("promtool") is None:  # make test installs it (bootstrap, IMGSTREAM_TEST_TOOLS)
        missing("promtool (Debian's prometheus package) not installed")
    subprocess.run(["promtool", "check", "rules", str(RULES)], check=True, capture_output=True)
    spec = tmp_path / "drift_test.yml"
    spec.write_text(PROMTOOL_TEST.format(rules=RULES))
    res = subprocess.run(["promtool", "test", "rules", str(spec)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
