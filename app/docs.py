"""Generated README sections: the settings table (from Settings' docstrings) and the metrics table
(from the project's Prometheus registry). ``imgstream docs`` rewrites them; a test keeps them in sync."""

from __future__ import annotations

import re
from pathlib import Path

from app.settings import Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def settings_table() -> str:
    rows = ["| env var | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if hasattr(default, "get_secret_value"):
            default = "(secret)"
        elif isinstance(default, tuple):
            default = ",".join(default)
        elif name == "cache_dir":
            default = "~/.cache/imgstream"
        desc = " ".join((field.description or "").split()).replace("|", "\\|")
        rows.append(f"| `IMGSTREAM_{name.upper()}` | `{default}` | {desc} |")
    return "\n".join(rows)


def metrics_table() -> str:
    from app import metrics

    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for collector in list(metrics.REGISTRY._collector_to_names):  # noqa: SLF001 - our own registry
        for fam in collector.describe():
            labels = ", ".join(getattr(collector, "_labelnames", ()))
            name = f"{fam.name}_total" if fam.type == "counter" else fam.name
            rows.append(f"| `{name}` | {fam.type} | {labels} | {fam.documentation} |")
    rows.append("| `imgstream_faust_*` | various | | Faust's own sensor: messages, events, commits, "
                "rebalances, table operations (faust.sensors.prometheus) |")
    return "\n".join(rows)


def render(text: str) -> str:
    for name, table in (("settings", settings_table()), ("metrics", metrics_table())):
        text = re.sub(rf"(<!-- {name}:begin -->\n).*?(<!-- {name}:end -->)",
                      lambda m, t=table: m.group(1) + t + "\n" + m.group(2), text, flags=re.S)
    return text


def update(path: Path = README) -> bool:
    text = path.read_text()
    new = render(text)
    if new != text:
        path.write_text(new)
    return new != text
