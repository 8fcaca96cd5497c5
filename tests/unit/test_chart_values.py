"""The Helm chart's values against the worker, without helm: the generated parts are current, the
chart's roles are the worker's roles, and every setting is reachable from values.yaml."""

import json

import yaml

from app.core.settings import ROLES, Settings
from tools import chart


def _values() -> dict:
    return yaml.safe_load((chart.CHART / "values.yaml").read_text())


def test_generated_parts_are_current():
    text = (chart.CHART / "values.yaml").read_text()
    assert chart.render_values(text) == text, "run `imgstream docs`"
    assert (chart.CHART / "values.schema.json").read_text() == chart.render_schema(), "run `imgstream docs`"


def test_the_charts_roles_are_the_workers_roles():
    values = _values()
    assert list(values["roles"]) == list(ROLES)
    assert list(values["measured"]["peakRssMb"]) == list(ROLES)
    schema = json.loads((chart.CHART / "values.schema.json").read_text())
    assert schema["properties"]["roles"]["required"] == list(ROLES)


def test_every_setting_is_reachable_from_values():
    values = _values()
    reachable = set(values["settings"]) | set(values["secrets"]) | set(chart.PER_POD)
    assert reachable == set(Settings.model_fields)
    # each with its documentation as a comment right above it
    lines = (chart.CHART / "values.yaml").read_text().splitlines()
    for name in values["settings"]:
        (i,) = [n for n, line in enumerate(lines) if line.startswith(f"  {name}: ")]
        assert lines[i - 1].startswith("  # "), name


def test_default_settings_values_parse_as_the_worker_would_read_them():
    """The ConfigMap hands each value to the worker as a string: every default must parse back."""
    values = _values()["settings"]
    env = {name: (",".join(v) if isinstance(v, list) else json.dumps(v) if not isinstance(v, str) else v)
           for name, v in values.items() if v is not None}
    s = Settings(**env)
    assert str(s.state_dir) == "/var/lib/imgstream" and s.log_json is True
    assert s.topic_partitions == Settings().topic_partitions and s.onnx_providers == Settings().onnx_providers
