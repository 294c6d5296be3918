"""Topic administration with kafka-python: reachability check and topic creation.

Every topic is created up front with the same partition count: Faust crashes with
`PartitionsMismatch` when a source topic and its table's changelog differ, and the
embedded broker auto-creates topics with 4 partitions whatever we configure.
"""

from __future__ import annotations

from collections.abc import Iterable

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from stream.security import PLAINTEXT, KafkaSecurity, hide_client_secrets


class BrokerUnreachable(ConnectionError):
    """No broker answered, or none accepted this client's security settings.

    kafka-python reports a refused login or TLS handshake as a bootstrap timeout, like
    a broker that is down; with security on, the message says so and what was used
    (never the password).
    """

    def __init__(self, bootstrap_servers: str, security: KafkaSecurity = PLAINTEXT) -> None:
        message = f"Kafka broker unreachable at {bootstrap_servers}"
        if security.protocol != "PLAINTEXT":
            message += (
                f" over {security.describe()}: is it up, does that listener speak "
                f"{security.protocol}, and are the credentials and CA right?"
            )
        super().__init__(message)
        self.bootstrap_servers = bootstrap_servers


def admin_client(
    bootstrap_servers: str, timeout_s: float = 10.0, *, security: KafkaSecurity = PLAINTEXT
) -> KafkaAdminClient:
    """An admin client; raises BrokerUnreachable instead of kafka-python's errors."""
    options = security.client_options()  # a bad CA file fails here, with its name
    hide_client_secrets()
    try:
        return KafkaAdminClient(
            bootstrap_servers=bootstrap_servers.split(","),
            client_id="streamrec-admin",
            request_timeout_ms=int(timeout_s * 1000),
            bootstrap_timeout_ms=int(timeout_s * 1000),
            **options,
        )
    except (KafkaError, OSError, ValueError) as exc:
        raise BrokerUnreachable(bootstrap_servers, security) from exc


class UnknownTopic(ValueError):
    def __init__(self, topic: str, bootstrap_servers: str) -> None:
        super().__init__(
            f"topic {topic!r} does not exist at {bootstrap_servers} "
            "(a worker creates its topics on start)"
        )


def require_topic(
    bootstrap_servers: str, topic: str, *, security: KafkaSecurity = PLAINTEXT
) -> None:
    """Raise UnknownTopic unless `topic` exists (BrokerUnreachable if no broker)."""
    admin = admin_client(bootstrap_servers, security=security)
    try:
        if topic not in set(admin.list_topics()):
            raise UnknownTopic(topic, bootstrap_servers)
    finally:
        admin.close()


def ensure_topics(
    bootstrap_servers: str,
    names: Iterable[str],
    partitions: int,
    *,
    security: KafkaSecurity = PLAINTEXT,
) -> list[str]:
    """Create the missing topics; returns the names created. Idempotent.

    Raises ValueError if an existing topic has a different partition count, since the
    worker's table would then crash at assignment time.
    """
    admin = admin_client(bootstrap_servers, security=security)
    try:
        existing = set(admin.list_topics())
        wanted = list(dict.fromkeys(names))
        missing = [name for name in wanted if name not in existing]
        created: list[str] = []
        for name in missing:
            try:
                admin.create_topics([NewTopic(name, partitions, 1)])
                created.append(name)
            except TopicAlreadyExistsError:
                pass  # another worker created it between our list and create
        present = [name for name in wanted if name not in created]
        if present:
            for description in admin.describe_topics(present):
                count = len(description["partitions"])
                if count != partitions:
                    # kafka-python 3 names the topic "name" (2.x: "topic").
                    topic = description.get("name", description.get("topic"))
                    raise ValueError(
                        f"topic {topic} has {count} partitions; "
                        f"the worker is configured for {partitions} (STREAMREC_PARTITIONS)"
                    )
        return created
    finally:
        admin.close()
