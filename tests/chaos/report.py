"""RELIABILITY.md from the chaos tests' figures.

The chaos tests write test-output/reliability.json and test-output/RELIABILITY.md; after a full
run, ``python -m tests.chaos.report`` writes docs/RELIABILITY.md from the JSON (a subset run never
rewrites the tracked document by itself)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

DESCRIPTIONS = {
    "worker_kill9": "`kill -9` of the only worker in the middle of 500 uploads, then a restart",
    "kill9_five_cycles": "five `kill -9` / restart cycles of the only worker under continuous uploads",
    "kill9_wide_seek_window": "`kill -9`, 100 uploads queued, restart with the recovery seek held 3 s "
                              "(the window of Faust's recovery race, widened by a test-only hook)",
    "scale_up_down": "1 -> 2 -> 3 workers under load, then 3 -> 2 (SIGTERM), 2 -> 1 (`kill -9`), the "
                     "last first worker replaced by a new one (SIGTERM)",
    "restart_on_newer_bundle": "a worker on a newer bundle joins mid-stream and the old one stops (SIGTERM)",
    "kafka_restart": "the Kafka broker stopped for 5 s and started again mid-run",
    "postgres_outage": "PostgreSQL stopped for 30 s, then started again",
    "s3_outage": "the S3 server stopped for 10 s (uploads meanwhile: 503 + Retry-After), then started again",
    "two_workers_one_killed": "two workers on 4 partitions; one killed with `kill -9`; the other takes over",
    "cluster_leader_kill9": "three brokers: `kill -9` of the broker leading most input partitions under continuous "
                            "uploads, restarted 15 s later",
    "cluster_rolling_restart": "three brokers restarted one at a time (SIGTERM, start, back in sync before the next) "
                               "under continuous uploads",
    "cluster_controller_kill9": "three brokers: `kill -9` of the active KRaft controller, restarted after the quorum "
                                "elected another",
    "cluster_two_brokers_down": "two of three brokers stopped for 40 s (below min.insync.replicas: uploads refused "
                                "with 503), then both started",
    "cluster_network_cut_30s": "three brokers: one broker's client and controller ports cut off on loopback for 30 s "
                               "(iptables DROP both ways) under continuous uploads",
}
CLUSTER_FIGURES = {
    "in_sync_after_s": "no partition under-replicated after (s)",
    "in_sync_after_each_s": "back in sync after each restart (s)",
    "groups_at_log_end": "consumer groups at the log end (Kafka's tool)",
    "longest_producer_stall_s": "longest gap between two accepted uploads while cut (s)",
    "back_in_sync_after_heal_s": "back in sync after the cut healed (s)",
    "refused_while_two_down": "refused while two were down",
    "new_controller": "controller elected",
}


def write(records: list[dict], path: Path) -> None:
    """The chaos section of ``path`` (the soak's and the table measurements' stay as they are)."""
    from tools.docs import write_section

    lines = [
        "## Chaos tests",
        "",
        f"Figures of the chaos tests (`tests/chaos`, part of `make test` and CI), run on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with the sweeper off "
        "(`IMGSTREAM_RESEND_AFTER_S=0`): whatever completed, the stream completed by itself. Each test breaks "
        "something on purpose while images are uploaded, then waits for and counts the predictions of every "
        "upload that was accepted (HTTP 202).",
        "",
        "| test | what breaks | sent | accepted | refused meanwhile | complete | lost | doubled | "
        "worst upload-to-prediction (s) | extractor re-runs | classifier re-runs (fast/balanced/accurate) | "
        "sweeper re-sends |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        refused = ", ".join(f"{k}: {v}" for k, v in sorted(r.get("refused", {}).items())) or "none"
        if "accepted_during_outage" in r:
            refused += f"; accepted during the outage: {r['accepted_during_outage']}"
        c = r.get("classifier_reruns", {})
        lines.append(
            f"| `{r['test']}` | {DESCRIPTIONS.get(r['test'], '')} | {r['sent']} | {r['accepted']} | {refused} | "
            f"{r['complete']} | {r['lost']} | {r['doubled']} | {r.get('worst_latency_s', 0):.1f} | "
            f"{r.get('extractor_reruns', 0)} | {c.get('fast', 0)}/{c.get('balanced', 0)}/{c.get('accurate', 0)} | "
            f"{r.get('input_resends', 0)} |")
    cluster = [r for r in records if r["test"].startswith("cluster_")]
    if cluster:
        lines += ["", "On the three-broker cluster (`imgstream stack up --brokers 3`; replication factor 3, "
                  "min.insync.replicas 2, idempotent producer), also:", "",
                  "| test | " + " | ".join(CLUSTER_FIGURES.values()) + " |",
                  "|---|" + "---|" * len(CLUSTER_FIGURES)]
        for r in cluster:
            cells = [", ".join(f"{k}: {v}" for k, v in r[k].items()) if isinstance(r.get(k), dict)
                     else str(r[k]) if k in r else "" for k in CLUSTER_FIGURES]
            lines.append(f"| `{r['test']}` | " + " | ".join(cells) + " |")
    lines += [
        "",
        "How the columns are measured:",
        "",
        "- *complete*: accepted images with the three predictions of one bundle in PostgreSQL; *lost*: accepted "
        "images without them when the test gave up waiting.",
        "- *doubled*: accepted images answered by more than one bundle. The primary key (image_id, classifier, "
        "model_version) makes a second row for one bundle impossible, so this is the double that can happen.",
        "- *re-runs* are redeliveries, allowed and counted: descriptor messages per image beyond one on the "
        "features topic (the extractor ran again for it), and classifier executions per (image, classifier) "
        "beyond one (`predictions.attempts`, counted by the idempotent insert).",
        "- *sweeper re-sends*: input events per image beyond one on the input topic; 0 with the sweeper off. The "
        "sweeper's own tests are in `tests/integration/test_sweeper.py`.",
        "",
    ]
    write_section(path, "chaos", "\n".join(lines), title="Reliability")


def main(argv: list[str]) -> None:
    repo = Path(__file__).resolve().parents[2]
    source = Path(argv[0]) if argv else repo / "test-output" / "reliability.json"
    target = Path(argv[1]) if len(argv) > 1 else repo / "docs" / "RELIABILITY.md"
    write(json.loads(source.read_text()), target)
    print(f"{target} written from {source}")


if __name__ == "__main__":
    main(sys.argv[1:])
