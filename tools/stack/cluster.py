"""A Kafka cluster of three brokers on 127.0.0.1 (``imgstream stack up --brokers 3``), beside the
single broker of ``make run``.

Each node is a combined broker and controller (KRaft, ``process.roles=broker,controller``): the
three form the controller quorum, so any one may die and the other two keep a leader. Node n
listens on 127.0.0.1:29091+n for clients and 29191+n for the quorum, keeps its data, log and pid
file under ``<state_dir>/cluster/kafka-<n>``, and every node defaults topics to three replicas with
``min.insync.replicas=2`` (``__consumer_offsets`` and Faust's changelogs included). The worker's
settings for the cluster are written to ``<state_dir>/cluster/imgstream.env``. PostgreSQL and S3
stay the local stack's.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from app.core.settings import Settings
from tools.base.errors import ToolingError
from tools.base.process import wait_until
from tools.stack.services import Kafka, kafka_cluster_id
from tools.stack.secure import write_private

BROKERS = 3
BROKER_PORT = 29091  # + node id
CONTROLLER_PORT = 29191  # + node id
REPLICAS, MIN_INSYNC = 3, 2


def root(base: Settings) -> Path:
    return base.state_dir.resolve() / "cluster"


def bootstrap(nodes: int = BROKERS) -> str:
    return ",".join(f"127.0.0.1:{BROKER_PORT + n}" for n in range(1, nodes + 1))


def env(base: Settings, nodes: int = BROKERS) -> dict[str, str]:
    """The worker's settings for the cluster (the rest: the base settings')."""
    return {"IMGSTREAM_KAFKA_BOOTSTRAP": bootstrap(nodes), "IMGSTREAM_TOPIC_REPLICAS": str(REPLICAS),
            "IMGSTREAM_KAFKA_MIN_INSYNC_REPLICAS": str(MIN_INSYNC), "IMGSTREAM_KAFKA_IDEMPOTENT_PRODUCER": "true"}


def cluster_settings(base: Settings, nodes: int = BROKERS) -> Settings:
    return base.model_copy(update={"kafka_bootstrap": bootstrap(nodes), "topic_replicas": REPLICAS,
                                   "kafka_min_insync_replicas": MIN_INSYNC, "kafka_idempotent_producer": True})


class KafkaNode(Kafka):
    """One node of the cluster: broker and controller, voter of a quorum of ``nodes``."""

    def __init__(self, base: Settings, node_id: int, nodes: int = BROKERS) -> None:
        self.node_id, self.nodes = node_id, nodes
        self.cluster_root = root(base)
        node_settings = cluster_settings(base, nodes).model_copy(update={
            "state_dir": self.cluster_root, "kafka_bootstrap": f"127.0.0.1:{BROKER_PORT + node_id}"})
        super().__init__(node_settings, name=f"kafka-{node_id}")

    def _properties(self) -> list[str]:
        voters = ",".join(f"{n}@127.0.0.1:{CONTROLLER_PORT + n}" for n in range(1, self.nodes + 1))
        return [
            "process.roles=broker,controller",
            f"node.id={self.node_id}",
            f"controller.quorum.voters={voters}",
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{CONTROLLER_PORT + self.node_id}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={self.dir / 'data'}",
            f"num.partitions={self.settings.topic_partitions}",
            "auto.create.topics.enable=false",
            f"default.replication.factor={REPLICAS}",
            f"min.insync.replicas={MIN_INSYNC}",
            f"offsets.topic.replication.factor={REPLICAS}",
            "offsets.topic.num.partitions=8",
            f"transaction.state.log.replication.factor={REPLICAS}",
            f"transaction.state.log.min.isr={MIN_INSYNC}",
            # a leader that comes back takes its partitions back (spreads the load again)
            "auto.leader.rebalance.enable=true",
            "leader.imbalance.check.interval.seconds=30",
            # never elect a replica that missed confirmed writes
            "unclean.leader.election.enable=false",
            "group.initial.rebalance.delay.ms=0",
            "log.retention.check.interval.ms=60000",
            "",
        ]

    def _cluster_id(self) -> str:
        """One id for every node of the cluster, made by the first node formatted."""
        path = self.cluster_root / "cluster.id"
        if not path.exists():
            write_private(path, kafka_cluster_id())
        return path.read_text().strip()

    def provision(self) -> None:  # the cluster creates the topics once, not each node
        pass


class KafkaCluster:
    """The three nodes, started together (a node alone has no quorum, so none is healthy alone)."""

    name = "kafka-cluster"

    def __init__(self, base: Settings, nodes: int = BROKERS) -> None:
        self.base, self.nodes = base, [KafkaNode(base, n, nodes) for n in range(1, nodes + 1)]
        self.settings = cluster_settings(base, nodes)

    def install(self) -> None:
        self.nodes[0].install()

    def up(self) -> str:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            ok, reason = wait_until(node._alive_and_healthy, node.start_timeout)
            if not ok:
                raise ToolingError(f"{node.name} did not become healthy: {reason}\n--- {node.proc.log_file} ---\n"
                                   f"{node.proc.log_tail()}")
        from app.stream import broker

        asyncio.run(broker.ensure_topics(self.settings))
        write_private(root(self.base) / "imgstream.env", "".join(f"{k}={v}\n" for k, v in env(self.base).items()))
        return f"{len(self.nodes)} brokers on {bootstrap(len(self.nodes))}"

    def down(self) -> str:
        return ", ".join(f"{n.name} {n.down()}" for n in reversed(self.nodes))

    def status(self) -> list[tuple[str, int | None, str]]:
        return [(n.name, *n.status()) for n in self.nodes]
