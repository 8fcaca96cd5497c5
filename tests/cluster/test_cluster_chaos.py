"""The pipeline on a three-broker Kafka cluster (replication factor 3, min.insync.replicas 2, an
idempotent producer), with the sweeper off, while brokers die, restart and lose the network under
continuous uploads. Every scenario must end with every accepted upload answered once (0 lost, 0
doubled), Kafka's consumer-group tool showing every group's committed offsets at the log end, and
no partition under-replicated. Figures go to test-output/reliability.json like the chaos tests'."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

import pytest

from tests.chaos.conftest import Uploader, assert_none_lost_or_doubled, measure, until_accepted
from tests.workers import Worker, images_from, isolated_env

pytestmark = pytest.mark.cluster


async def _caught_up(cluster, group: str, topics: list[str], timeout: float = 90) -> dict:
    """Wait until Kafka's consumer-group tool shows ``group`` committed at the log end of ``topics``."""
    deadline = time.monotonic() + timeout
    while True:
        lag = await asyncio.to_thread(cluster.group_lag, group)
        behind = {tp: v for tp, v in lag.items() if tp[0] in topics and v[0] != v[1]}
        if lag and not behind and {t for t, _ in lag} >= set(topics):
            return lag
        if time.monotonic() > deadline:
            raise AssertionError(f"group {group} not at the log end after {timeout}s: {behind or lag}")
        await asyncio.sleep(2)


async def _scenario(cluster, sample_images, tmp_path, disrupt, n: int = 300, concurrency: int = 4,
                    pace: float = 0.25) -> tuple[dict, Uploader]:
    """A worker on private topics of the cluster; ``n`` uploads from ``concurrency`` clients, each
    pausing ``pace`` seconds between two (a continuous load that outlasts the disruption), and
    ``disrupt(uploader, env)`` once 30 were accepted."""
    unique = uuid.uuid4().hex[:8]
    env = isolated_env(unique, IMGSTREAM_KAFKA_SESSION_TIMEOUT="10", **cluster.env())
    worker = Worker(env, log_dir=tmp_path).start()
    uploader = Uploader(images_from(sample_images, n, unique), concurrency=concurrency, patience=240, pace=pace)
    try:
        await asyncio.to_thread(worker.wait_healthy)
        task = asyncio.create_task(uploader.run(lambda: worker.url))
        await until_accepted(uploader, task, 30)
        extra = await disrupt(uploader, env) or {}
        await task
        fig = await measure(cluster.settings, env, uploader, timeout=240)
        fig["in_sync_after_s"] = round(await asyncio.to_thread(cluster.wait_in_sync), 1)
        await _caught_up(cluster, env["IMGSTREAM_APP_ID"], [env["IMGSTREAM_INPUT_TOPIC"],
                                                             env["IMGSTREAM_FEATURES_TOPIC"]])
        fig["groups_at_log_end"] = True
        fig.update(extra)
    finally:
        worker.stop()
    assert not await asyncio.to_thread(cluster.under_replicated)
    return fig, uploader


def _busiest(leaders: dict[int, int]) -> int:
    return Counter(leaders.values()).most_common(1)[0][0]


async def test_the_input_topics_leader_killed_and_restarted_loses_nothing(cluster, sample_images, tmp_path, record):
    async def disrupt(uploader, env):
        victim = _busiest(await cluster.leaders(env["IMGSTREAM_INPUT_TOPIC"]))
        cluster.kill9(victim)
        await asyncio.sleep(15)
        await asyncio.to_thread(cluster.start, victim)
        return {"killed_broker": victim}

    fig, _ = await _scenario(cluster, sample_images, tmp_path, disrupt)
    record("cluster_leader_kill9", **fig)
    assert_none_lost_or_doubled(fig)


async def test_a_rolling_restart_of_every_broker_loses_nothing(cluster, sample_images, tmp_path, record):
    async def disrupt(uploader, env):
        waits = []
        for node_id in sorted(cluster.nodes):
            await asyncio.to_thread(cluster.stop, node_id)
            await asyncio.to_thread(cluster.start, node_id)
            waits.append(round(await asyncio.to_thread(cluster.wait_in_sync), 1))
        return {"in_sync_after_each_s": waits}

    fig, _ = await _scenario(cluster, sample_images, tmp_path, disrupt, n=400)
    record("cluster_rolling_restart", **fig)
    assert_none_lost_or_doubled(fig)


async def test_the_active_controller_killed_loses_nothing(cluster, sample_images, tmp_path, record):
    async def disrupt(uploader, env):
        victim = await asyncio.to_thread(cluster.active_controller)
        cluster.kill9(victim)
        await asyncio.sleep(10)
        elected = await asyncio.to_thread(cluster.active_controller)
        await asyncio.to_thread(cluster.start, victim)
        return {"killed_controller": victim, "new_controller": elected}

    fig, _ = await _scenario(cluster, sample_images, tmp_path, disrupt)
    record("cluster_controller_kill9", **fig)
    assert_none_lost_or_doubled(fig)
    assert fig["new_controller"] != fig["killed_controller"]


async def test_two_brokers_down_refuses_uploads_and_one_back_resumes(cluster, sample_images, tmp_path, record):
    async def disrupt(uploader, env):
        down = [n for n in sorted(cluster.nodes)][1:]
        for node_id in down:
            await asyncio.to_thread(cluster.stop, node_id)
        before = dict(uploader.refused)
        await asyncio.sleep(40)  # every upload now waits for a quorum of replicas it cannot have
        refused = {k: v - before.get(k, 0) for k, v in uploader.refused.items() if v != before.get(k, 0)}
        await asyncio.to_thread(cluster.start, down[0])
        await asyncio.to_thread(cluster.start, down[1])
        return {"refused_while_two_down": refused}

    fig, _ = await _scenario(cluster, sample_images, tmp_path, disrupt, n=240, concurrency=2, pace=0.5)
    record("cluster_two_brokers_down", **fig)
    assert_none_lost_or_doubled(fig)
    assert any(k.startswith("503") for k in fig["refused_while_two_down"]), fig["refused_while_two_down"]


async def test_a_broker_cut_off_by_the_network_for_30s_loses_nothing(cluster, sample_images, tmp_path, record):
    async def disrupt(uploader, env):
        victim = 2
        rules = await asyncio.to_thread(cluster.cut, victim)
        cut_at = time.time()
        try:
            await asyncio.sleep(30)
        finally:
            cluster.heal(rules)
        healed_at = time.time()
        during = [t for t in uploader.accepted_at if cut_at <= t <= healed_at + 30]
        gaps = [b - a for a, b in zip([cut_at, *during], during, strict=False)]
        synced = await asyncio.to_thread(cluster.wait_in_sync)
        return {"cut_broker": victim, "cut_s": 30, "longest_producer_stall_s": round(max(gaps, default=30.0), 1),
                "back_in_sync_after_heal_s": round(time.time() - healed_at, 1) if synced is not None else None}

    fig, _ = await _scenario(cluster, sample_images, tmp_path, disrupt, n=240, concurrency=2, pace=0.5)
    record("cluster_network_cut_30s", **fig)
    assert_none_lost_or_doubled(fig)
