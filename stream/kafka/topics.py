"""Topic administration with kafka-python: reachability check, topic creation with the
configs each topic's role needs, and the start check of existing topics' configs.

Every topic is created up front with the same partition count: Faust crashes with
`PartitionsMismatch` when a source topic and its table's changelog differ, and the
embedded broker auto-creates topics with 4 partitions whatever we configure.

Two roles (issue 14). *State* topics hold the latest value per key and are read from
the start: the user table's changelog, the item-vectors and admin topics, and the items
(catalogue) topic (issue 15). They are compacted; with the broker's default `delete`
policy a cluster drops them after 7 days and users or items idle that long vanish on the
next restart. *Stream* topics (clicks, the dead letters of clicks and of catalogue
records, recommendations, the by-user and item-delta hops) are read once and kept for a
retention period. Every topic admits records as large as the worker may write.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from stream.security import PLAINTEXT, KafkaSecurity, hide_client_secrets
from stream.settings import Settings

# Kafka's default retention, written out so that it is a decision and shows in the
# topic's config; change it per topic with kafka-configs (the worker never alters an
# existing topic's configs).
STREAM_RETENTION_MS = 7 * 24 * 3600 * 1000


def record_limit_bytes(max_event_bytes: int) -> int:
    """The largest record the worker writes: a forwarded click or a dead letter cut to
    STREAMREC_MAX_EVENT_BYTES, plus headers and framing (Faust's default request size
    is the floor). Both the topics' `max.message.bytes` and the worker's producer
    request size are this, so neither refuses what the other lets through."""
    return max(1_000_000, max_event_bytes + 65_536)


@dataclass(frozen=True)
class TopicSpec:
    """A topic to create and the configs its role needs (`NewTopic.topic_configs`)."""

    name: str
    configs: Mapping[str, str] = field(default_factory=dict)

    @property
    def compacted(self) -> bool:
        return "compact" in self.configs.get("cleanup.policy", "").split(",")


def worker_topics(settings: Settings) -> list[TopicSpec]:
    """Every topic the worker needs (`settings.topics()`), with its role's configs."""
    limit = {"max.message.bytes": str(record_limit_bytes(settings.max_event_bytes))}
    state = {"cleanup.policy": "compact", **limit}
    stream = {"cleanup.policy": "delete", "retention.ms": str(STREAM_RETENTION_MS), **limit}
    state_topics = {
        settings.changelog_topic,
        settings.item_vectors_topic,
        settings.admin_topic,
        settings.items_topic,
    }
    return [
        TopicSpec(name, state if name in state_topics else stream) for name in settings.topics()
    ]


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


class TopicNotCompacted(ValueError):
    """An existing state topic whose cleanup policy is not `compact`: one line naming
    the topic, what it has and the command that fixes it."""

    def __init__(self, topic: str, policy: str) -> None:
        super().__init__(
            f"topic {topic} has cleanup.policy={policy}, but the worker keeps state in it "
            "and needs cleanup.policy=compact (kafka-configs.sh --alter --entity-type "
            f"topics --entity-name {topic} --add-config cleanup.policy=compact)"
        )


def read_topic_configs(admin: KafkaAdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    """Each topic's configs as the broker reports them (name -> value).

    Asks for every config of each topic and keeps every source: the embedded broker
    reports a topic's configs as defaults, which kafka-python's default filter drops,
    and drops the connection when a request names keys (correction K8,
    docs/embedded-broker.md). A config the broker does not report is absent.
    """
    resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
    answer = admin.describe_configs(resources, config_filter="all")
    topics = answer.get("topic", {})
    return {
        name: {key: entry.get("value") for key, entry in topics.get(name, {}).items()}
        for name in names
    }


def check_compacted(
    configs: Mapping[str, Mapping[str, str | None]], specs: list[TopicSpec]
) -> None:
    """Raise TopicNotCompacted for the first state topic in `specs` whose reported
    `cleanup.policy` lacks `compact`. A policy the broker does not report is its
    default, `delete` on Apache Kafka."""
    for spec in specs:
        if not spec.compacted:
            continue
        policy = (
            configs.get(spec.name, {}).get("cleanup.policy")
            or "delete (none reported: the default)"
        )
        if "compact" not in policy.split(","):
            raise TopicNotCompacted(spec.name, policy)


def ensure_topics(
    bootstrap_servers: str,
    topics: Iterable[str | TopicSpec],
    partitions: int,
    *,
    security: KafkaSecurity = PLAINTEXT,
) -> list[str]:
    """Create the missing topics, each with its spec's configs (a bare name gets the
    broker's defaults); returns the names created. Idempotent; never alters an
    existing topic.

    Raises ValueError if an existing topic has a different partition count, since the
    worker's table would then crash at assignment time, and TopicNotCompacted if an
    existing state topic is not compacted.
    """
    specs = [t if isinstance(t, TopicSpec) else TopicSpec(t) for t in topics]
    specs = list({spec.name: spec for spec in specs}.values())
    admin = admin_client(bootstrap_servers, security=security)
    try:
        existing = set(admin.list_topics())
        wanted = [spec.name for spec in specs]
        created: list[str] = []
        for spec in specs:
            if spec.name in existing:
                continue
            try:
                admin.create_topics(
                    [NewTopic(spec.name, partitions, 1, topic_configs=dict(spec.configs))]
                )
                created.append(spec.name)
            except TopicAlreadyExistsError:
                pass  # another worker created it between our list and create
        present = [name for name in wanted if name not in created]
        state = [spec for spec in specs if spec.compacted and spec.name in present]
        if state:
            check_compacted(read_topic_configs(admin, [s.name for s in state]), state)
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
