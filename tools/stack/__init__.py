"""The local stack: real Apache Kafka (KRaft), PostgreSQL and an S3 server on 127.0.0.1.

``imgstream stack up`` installs what is missing (Kafka jars from Maven Central through
``deploy/kafka/pom.xml``, PostgreSQL from Debian's packages, versitygw with ``go install``), starts
each service bound to loopback with its data, logs and pid file under ``settings.state_dir``, waits
for a real health check, then creates the bucket, the database and schema, and the topics.
``down`` stops only the processes whose pid files it wrote.
"""

from tools.stack.services import SERVICES, Service, down, status, up

__all__ = ["SERVICES", "Service", "down", "status", "up"]
