"""Generated document sections. In docs/REFERENCE.md the settings table (from Settings' docstrings)
and the metrics table (from the project's Prometheus registry): ``imgstream docs`` rewrites them; a
test keeps them in sync. Reports that several commands contribute to (docs/RELIABILITY.md: the
chaos tests, the soak, the table-state measurements) are one marked section per command."""

from __future__ import annotations

import re
from pathlib import Path

from app.core.settings import Settings

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "REFERENCE.md"


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
    from app.core import metrics

    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for collector in list(metrics.REGISTRY._collector_to_names):  # noqa: SLF001 - our own registry
        for fam in collector.describe():
            if fam.name.startswith("imgstream_faust_"):  # Faust's sensor, once a worker app was built: one row below
                continue
            labels = ", ".join(getattr(collector, "_labelnames", ()))
            name = f"{fam.name}_total" if fam.type == "counter" else fam.name
            rows.append(f"| `{name}` | {fam.type} | {labels} | {fam.documentation} |")
    rows.append("| `imgstream_faust_*` | various | | Faust's own sensor: messages, events, commits, "
                "rebalances, table operations (faust.sensors.prometheus) |")
    return "\n".join(rows)


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with the part between ``<!-- name:begin -->`` and ``<!-- name:end -->`` replaced by
    ``body`` (the marked section appended when there is none)."""
    begin, end = f"<!-- {name}:begin -->\n", f"<!-- {name}:end -->"
    if begin not in text:
        return text.rstrip("\n") + f"\n\n{begin}{body.rstrip()}\n{end}\n"
    return re.sub(rf"({re.escape(begin)}).*?({re.escape(end)})", lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2),
                  text, flags=re.S)


def write_section(path: Path, name: str, body: str, title: str) -> None:
    """Replace (or add) one marked section of the generated document ``path``."""
    text = path.read_text() if path.exists() else f"# {title}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_section(text, name, body))


def render(text: str) -> str:
    for name, table in (("settings", settings_table()), ("metrics", metrics_table())):
        if f"<!-- {name}:begin -->" in text:
            text = replace_section(text, name, table)
    return text


def update(path: Path = REFERENCE) -> bool:
    """Rewrite the reference's tables and the Helm chart's generated parts; whether anything changed."""
    from tools import chart

    text = path.read_text()
    new = render(text)
    if new != text:
        path.write_text(new)
    return chart.update() or new != text
