"""The Kafka cluster of ``imgstream stack up --brokers 3`` for the cluster scenarios: started by
the fixture when it is not running, its brokers killed, restarted and cut off by the tests, and
checked with Kafka's own tools (consumer groups, under-replicated partitions, the quorum)."""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from tools.stack.cluster import BROKER_PORT, CONTROLLER_PORT, KafkaCluster, KafkaNode, bootstrap, env


class Cluster:
    def __init__(self, settings) -> None:
        self.base = settings
        self.stack = KafkaCluster(settings)
        self.settings = self.stack.settings
        self.nodes: dict[int, KafkaNode] = {n.node_id: n for n in self.stack.nodes}
        # Kafka's tools log to stdout by the brokers' config; theirs: warnings only, to stderr
        self.tools_log4j = self.nodes[1].cluster_root / "tools-log4j.properties"
        self.tools_log4j.parent.mkdir(parents=True, exist_ok=True)
        self.tools_log4j.write_text(
            "log4j.rootLogger=WARN, stderr\nlog4j.appender.stderr=org.apache.log4j.ConsoleAppender\n"
            "log4j.appender.stderr.Target=System.err\nlog4j.appender.stderr.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n\n")

    def env(self) -> dict[str, str]:
        return env(self.base)

    # --- Kafka's own tools ------------------------------------------------------------------------
    def tool(self, cls: str, *args: str, timeout: float = 60) -> str:
        """Run one of Kafka's command-line tools (from the broker's jars) against the cluster."""
        node = self.nodes[1]
        java = [a if not a.startswith("-Dlog4j.configuration=") else f"-Dlog4j.configuration=file:{self.tools_log4j}"
                for a in node._java(cls, "--bootstrap-server", self.bootstrap_alive(), *args)]
        proc = subprocess.run(java, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(f"{cls} {' '.join(args)} failed: {proc.stderr[-2000:]}")
        return proc.stdout

    def bootstrap_alive(self) -> str:
        return ",".join(f"127.0.0.1:{BROKER_PORT + n}" for n, node in self.nodes.items() if node.proc.pid()) \
            or bootstrap()

    def active_controller(self) -> int:
        out = self.tool("org.apache.kafka.tools.MetadataQuorumCommand", "describe", "--status")
        return int(re.search(r"LeaderId:\s+(\d+)", out).group(1))

    def under_replicated(self) -> list[str]:
        out = self.tool("org.apache.kafka.tools.TopicCommand", "--describe", "--under-replicated-partitions")
        return [line for line in out.splitlines() if line.strip()]

    def group_lag(self, group: str) -> dict[tuple[str, int], tuple[int, int]]:
        """(topic, partition) -> (committed offset, log end offset) of ``group``, by Kafka's
        consumer-group tool."""
        out = self.tool("org.apache.kafka.tools.consumer.group.ConsumerGroupCommand", "--describe", "--group", group)
        rows = {}
        for line in out.splitlines():
            cols = line.split()
            if len(cols) >= 6 and cols[0] == group and cols[2].isdigit():
                committed = int(cols[3]) if cols[3].isdigit() else -1
                rows[(cols[1], int(cols[2]))] = (committed, int(cols[4]))
        return rows

    def wait_in_sync(self, timeout: float = 180) -> float:
        """Seconds until no partition is under-replicated."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if not self.under_replicated():
                return time.monotonic() - started
            time.sleep(1)
        raise AssertionError(f"partitions still under-replicated after {timeout}s: {self.under_replicated()[:5]}")

    async def leaders(self, topic: str) -> dict[int, int]:
        """partition -> the id of the broker leading it."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_alive(), request_timeout_ms=10000)
        await admin.start()
        try:
            (described,) = await admin.describe_topics([topic])
            return {p["partition"]: p["leader"] for p in described["partitions"]}
        finally:
            await admin.close()

    # --- what the scenarios do to a broker --------------------------------------------------------
    def kill9(self, node_id: int) -> None:
        self.nodes[node_id].proc.kill9()

    def stop(self, node_id: int) -> None:
        self.nodes[node_id].down()

    def start(self, node_id: int, timeout: float = 120) -> None:
        node = self.nodes[node_id]
        node.start()
        deadline = time.monotonic() + timeout
        while node.health() is not None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{node.name} not back after {timeout}s:\n{node.proc.log_tail()}")
            time.sleep(1)

    def cut(self, node_id: int) -> list[list[str]]:
        """Drop the traffic to and from the broker's client and controller ports on loopback."""
        rules = []
        for port in (BROKER_PORT + node_id, CONTROLLER_PORT + node_id):
            for side in ("--dport", "--sport"):
                rule = ["INPUT", "-i", "lo", "-p", "tcp", side, str(port), "-j", "DROP"]
                subprocess.run(["iptables", "-I", *rule], check=True)
                rules.append(rule)
        return rules

    @staticmethod
    def heal(rules: list[list[str]]) -> None:
        for rule in rules:
            subprocess.run(["iptables", "-D", *rule], check=False)


@pytest.fixture(scope="session")
def cluster(stack):
    """The three-broker cluster, up and in sync (started here if it is not running)."""
    c = Cluster(stack)
    c.stack.up()
    c.wait_in_sync()
    yield c


# the chaos tests' recorder: the cluster's figures go to the same report
from tests.chaos.conftest import pytest_sessionfinish, record  # noqa: E402,F401
