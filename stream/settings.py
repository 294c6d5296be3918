"""Worker settings: the only module that reads environment variables.

Every setting has a `STREAMREC_<NAME>` variable (NAME is the field name upper-cased);
command-line flags override the environment, which overrides the defaults below.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

from model.base import EXCLUSION_POLICIES, HISTORY_MAX, MODEL_NAMES
from model.variants import parse_variants, variant_name

ENV_PREFIX = "STREAMREC_"
MODELS = MODEL_NAMES  # the recommenders a worker can run, named by the model layer
DEFAULT_EXCLUSION = "seen"  # STREAMREC_EXCLUDE's default, and `evaluate --exclude`'s
# How a worker runs the model over a batch (stream/worker/pipeline.py).
MODEL_STEPS = ("click", "batch")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")
# Settings that may be read from a file named by `<VARIABLE>_FILE` (Docker/Kubernetes
# secrets), so the value itself never sits in the environment or a compose file.
SECRETS = ("sasl_password", "redis_password")
FILE_SUFFIX = "_FILE"
REDIS_SCHEMES = ("redis", "rediss", "unix")

log = logging.getLogger(__name__)


class SettingsError(ValueError):
    """A setting has a value the worker cannot run with; the message names it."""


@dataclass(frozen=True)
class Settings:
    # Connections.
    bootstrap_servers: str = field(
        default="127.0.0.1:9092",
        metadata={"help": "Kafka bootstrap servers, host:port[,host:port]"},
    )
    redis_url: str = field(
        default="redis://127.0.0.1:6379/0", metadata={"help": "Redis URL for the vector store"}
    )
    redis_prefix: str = field(
        default="streamrec:", metadata={"help": "prefix of every Redis key the worker writes"}
    )
    connect_timeout_s: int = field(
        default=3,
        metadata={
            "help": "seconds the start-up checks wait for the Kafka broker and for Redis "
            "to answer before failing in one line (raise it for a slow network)"
        },
    )
    # Kafka and Redis security (README "Security"). Secrets never appear in repr or
    # --help; each may instead come from a file named by `<VARIABLE>_FILE`.
    security_protocol: str = field(
        default="PLAINTEXT",
        metadata={"help": f"Kafka security protocol: {', '.join(SECURITY_PROTOCOLS)}"},
    )
    sasl_mechanism: str = field(
        default="SCRAM-SHA-512",
        metadata={"help": f"Kafka SASL mechanism with SASL_*: {', '.join(SASL_MECHANISMS)}"},
    )
    sasl_username: str = field(default="", metadata={"help": "Kafka SASL user name"})
    sasl_password: str = field(
        default="",
        repr=False,
        metadata={"help": "Kafka SASL password (or STREAMREC_SASL_PASSWORD_FILE)"},
    )
    ssl_cafile: str = field(
        default="",
        metadata={
            "help": "CA bundle that signed the Kafka brokers' certificates (empty: the system CAs)"
        },
    )
    ssl_certfile: str = field(
        default="", metadata={"help": "client certificate (PEM) for Kafka mutual TLS"}
    )
    ssl_keyfile: str = field(default="", metadata={"help": "private key (PEM) of ssl_certfile"})
    redis_username: str = field(
        default="", metadata={"help": "Redis ACL user name (empty: the default user)"}
    )
    redis_password: str = field(
        default="",
        repr=False,
        metadata={
            "help": "Redis password, AUTH (or STREAMREC_REDIS_PASSWORD_FILE; or in redis_url)"
        },
    )
    redis_ssl_cafile: str = field(
        default="",
        metadata={"help": "CA bundle for a rediss:// (TLS) redis_url (empty: the system CAs)"},
    )
    user_ttl_s: int = field(
        default=604800,
        metadata={"help": "seconds a user vector stays in Redis after its last write"},
    )
    vector_flush_ms: int = field(
        default=50, metadata={"help": "how often refreshed vectors are flushed to Redis (ms)"}
    )
    # Topics.
    clicks_topic: str = field(default="clicks", metadata={"help": "input topic of click events"})
    recommendations_topic: str = field(
        default="recommendations", metadata={"help": "output topic of recommendation events"}
    )
    dlq_topic: str = field(
        default="clicks.dlq", metadata={"help": "dead-letter topic for rejected events"}
    )
    items_topic: str = field(
        default="items",
        metadata={
            "help": "catalogue topic: each item's latest record, keyed by item id "
            "(compacted; every worker reads it from the start)"
        },
    )
    items_dlq_topic: str = field(
        default="items.dlq", metadata={"help": "dead-letter topic for rejected catalogue records"}
    )
    partitions: int = field(
        default=4, metadata={"help": "partition count of every topic the worker creates"}
    )
    fetch_max_wait_ms: int = field(
        default=10,
        metadata={
            "help": "longest a consumer fetch waits for data; the embedded broker "
            "answers only when it ends (500 suits Apache Kafka); raised while "
            "a partition is behind and fetches come back empty"
        },
    )
    batch_size: int = field(
        default=256, metadata={"help": "most clicks a worker applies as one batch"}
    )
    batch_wait_ms: int = field(
        default=50,
        metadata={
            "help": "longest a batch gathers clicks already fetched for it (ms); a batch "
            "goes as soon as none is left, so clicks that arrived while the previous batch "
            "was applied go into the next one, and an idle worker takes a click at once"
        },
    )
    pipeline_batches: int = field(
        default=3,
        metadata={
            "help": "batches of one agent that may be in progress at once: the next batch "
            "is applied while the last one's sends wait for the broker and its user records "
            "are written (each batch's clicks are committed only once that is done, in "
            "order); 1 applies one batch at a time"
        },
    )
    app_id: str = field(
        default="streamrec", metadata={"help": "consumer group and internal topic prefix"}
    )
    # Web server (metrics and views).
    web_host: str = field(
        default="127.0.0.1", metadata={"help": "bind address of /metrics; loopback by default"}
    )
    web_port: int = field(default=6066, metadata={"help": "port of the worker's web server"})
    # Model and policy.
    model: str = field(default="torch", metadata={"help": f"recommender: {', '.join(MODELS)}"})
    dim: int = field(default=64, metadata={"help": "dimension of user and item vectors"})
    item_embedding_dim: int = field(
        default=0,
        metadata={
            "help": "dimension of the embeddings catalogue records carry (0: a record "
            "with an embedding is rejected)"
        },
    )
    top_k: int = field(default=10, metadata={"help": "items per recommendation event"})
    exclude: str = field(
        default=DEFAULT_EXCLUSION,
        metadata={
            "help": "what is never recommended: seen (recent items), last, none, or history "
            "(every item the user interacted with, up to STREAMREC_HISTORY_MAX)"
        },
    )
    history_max: int = field(
        default=HISTORY_MAX,
        metadata={
            "help": "distinct items a user's history keeps under STREAMREC_EXCLUDE=history "
            "(the oldest forgotten first)"
        },
    )
    model_step: str = field(
        default="batch",
        metadata={
            "help": "batch: learn each batch in one model call, then rank it (torch: in "
            "waves, about twice as fast, within noise of click on the README's "
            "figures); click: learn and rank one click at a time"
        },
    )
    seed: int = field(default=0, metadata={"help": "random seed of the model"})
    half_life_s: int = field(
        default=3600,
        metadata={
            "help": "popularity half-life of a fresh model, event-time seconds "
            "(a checkpoint keeps its own)"
        },
    )
    # 30 minutes suits click sessions; data whose users return days apart (ratings)
    # needs its own time scale: `streamrec evaluate --session-gap auto` prints one.
    session_gap_s: int = field(
        default=1800,
        metadata={
            "help": "longest pause between a user's clicks that still counts as an item "
            "transition, event-time seconds (a fresh model; a checkpoint keeps its own)"
        },
    )
    checkpoint: str = field(
        default="",
        metadata={"help": "model file from `streamrec train` to start from (empty: a fresh model)"},
    )
    checkpoint_sha256: str = field(
        default="",
        metadata={"help": "expected SHA-256 of the checkpoint file (empty: its .sha256 sidecar)"},
    )
    variants: str = field(
        default="",
        metadata={
            "help": "A/B variants by user, MODEL_OR_CHECKPOINT:WEIGHT,... (e.g. "
            "torch:90,covisit:10): every variant learns from every click, each user is "
            "served by one (empty: STREAMREC_MODEL or STREAMREC_CHECKPOINT alone)"
        },
    )
    experiment: str = field(
        default="default",
        metadata={
            "help": "salt of the variants' user split: the same salt gives every user the "
            "same variant on every worker and restart; a new one reshuffles them"
        },
    )
    max_event_bytes: int = field(
        default=65536, metadata={"help": "larger click values go to the DLQ as too_large"}
    )
    dedup_window: int = field(
        default=128, metadata={"help": "event ids remembered per user to skip repeats"}
    )
    # Memory bounds (stream/worker/retention.py).
    max_users: int = field(
        default=250000,
        metadata={
            "help": "most user contexts a worker keeps (0: no cap); past it the least "
            "recently active are evicted (about 2-5 kB each with torch)"
        },
    )
    user_idle_s: int = field(
        default=0,
        metadata={
            "help": "evict a user idle this many event-time seconds behind the newest "
            "click (0: never)"
        },
    )
    memory_cap_mb: int = field(
        default=0,
        metadata={
            "help": "resident memory cap (MB, 0: none); past it the user cap drops to "
            "90% of the users held"
        },
    )
    data_dir: str = field(
        default=".streamrec", metadata={"help": "local state directory of the worker"}
    )
    log_level: str = field(default="warning", metadata={"help": "worker log level"})

    def __post_init__(self) -> None:
        for name, choices in (
            ("model", MODELS),
            ("exclude", EXCLUSION_POLICIES),
            ("model_step", MODEL_STEPS),
        ):
            if getattr(self, name) not in choices:
                raise SettingsError(
                    f"{_variable(name)} must be one of {', '.join(choices)}, "
                    f"not {getattr(self, name)!r}"
                )
        for name in (
            "partitions",
            "dim",
            "top_k",
            "max_event_bytes",
            "dedup_window",
            "vector_flush_ms",
            "fetch_max_wait_ms",
            "batch_size",
            "batch_wait_ms",
            "pipeline_batches",
            "half_life_s",
            "history_max",
            "connect_timeout_s",
            "session_gap_s",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(
                    f"{_variable(name)} must be at least 1, not {getattr(self, name)}"
                )
        if self.variants:
            self._check_variants()
        for name in ("max_users", "user_idle_s", "memory_cap_mb", "item_embedding_dim"):
            if getattr(self, name) < 0:
                raise SettingsError(
                    f"{_variable(name)} must be 0 (off) or more, not {getattr(self, name)}"
                )
        if not 0 < self.web_port < 65536:
            raise SettingsError(f"{_variable('web_port')} must be a TCP port, not {self.web_port}")
        self._check_security()

    def _check_variants(self) -> None:
        """STREAMREC_VARIANTS parses, names models or checkpoint files that exist, and
        is not combined with STREAMREC_CHECKPOINT."""
        variable = _variable("variants")
        if self.checkpoint:
            raise SettingsError(
                f"set {variable} or {_variable('checkpoint')}, not both: a checkpoint can "
                "be one of the variants"
            )
        try:
            parsed = parse_variants(self.variants)
        except ValueError as exc:
            raise SettingsError(f"{variable}: {exc}") from None
        names = []
        for what, _ in parsed:
            if what not in MODELS and not os.path.isfile(what):
                raise SettingsError(
                    f"{variable}: {what!r} is neither a model ({', '.join(MODELS)}) nor a "
                    "checkpoint file"
                )
            names.append(variant_name(what))
        if len(set(names)) < len(names):
            raise SettingsError(
                f"{variable}: two variants are named alike ({', '.join(names)}); a "
                "checkpoint's variant is named by its file name without the extension"
            )

    def _check_security(self) -> None:
        """Reject combinations that would connect with less protection than asked for
        (credentials or CA files given but silently unused) or cannot connect at all."""
        protocol = self.security_protocol
        if protocol not in SECURITY_PROTOCOLS:
            raise SettingsError(
                f"{_variable('security_protocol')} must be one of "
                f"{', '.join(SECURITY_PROTOCOLS)}, not {protocol!r}"
            )
        if self.sasl_mechanism not in SASL_MECHANISMS:
            raise SettingsError(
                f"{_variable('sasl_mechanism')} must be one of {', '.join(SASL_MECHANISMS)}, "
                f"not {self.sasl_mechanism!r}"
            )
        if protocol.startswith("SASL_"):
            for name in ("sasl_username", "sasl_password"):
                if not getattr(self, name):
                    raise SettingsError(
                        f"security_protocol {protocol} needs {name} ({ENV_PREFIX}{name.upper()})"
                    )
        else:
            for name in ("sasl_username", "sasl_password"):
                if getattr(self, name):
                    raise SettingsError(
                        f"{name} is set but security_protocol is {protocol}: "
                        "use SASL_SSL (or SASL_PLAINTEXT) to send it"
                    )
        if not protocol.endswith("SSL"):
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                if getattr(self, name):
                    raise SettingsError(
                        f"{name} is set but security_protocol is {protocol}: use SSL or SASL_SSL"
                    )
        if self.ssl_keyfile and not self.ssl_certfile:
            raise SettingsError("ssl_keyfile is set without ssl_certfile")
        redis = urlsplit(self.redis_url)
        if redis.scheme not in REDIS_SCHEMES:
            raise SettingsError(
                f"redis_url must start with redis://, rediss:// (TLS) or unix://, "
                f"not {redis.scheme or self.redis_url!r}"
            )
        if self.redis_password and redis.password:
            raise SettingsError(
                "the Redis password is in both redis_url and redis_password: give it once"
            )
        if self.redis_username and redis.username:
            raise SettingsError(
                "the Redis user is in both redis_url and redis_username: give it once"
            )
        if self.redis_ssl_cafile and redis.scheme != "rediss":
            raise SettingsError("redis_ssl_cafile is set but redis_url is not rediss:// (TLS)")

    @property
    def changelog_topic(self) -> str:
        """Faust's name for the user-context table's changelog."""
        return f"{self.app_id}-user_contexts-changelog"

    @property
    def by_user_topic(self) -> str:
        """Internal topic that routes validated clicks by user id."""
        return f"{self.app_id}-{self.clicks_topic}-by-user"

    @property
    def item_deltas_topic(self) -> str:
        """Internal topic that routes item-vector changes to each item's owner."""
        return f"{self.app_id}-item-deltas"

    @property
    def item_vectors_topic(self) -> str:
        """Internal topic of the owners' canonical item vectors, read by every worker."""
        return f"{self.app_id}-item-vectors"

    @property
    def admin_topic(self) -> str:
        """Internal topic of `streamrec model load/rollback`, read whole by every worker
        (stream/worker/swap.py)."""
        return f"{self.app_id}-admin"

    def topics(self) -> list[str]:
        """Every topic the worker needs, all with `partitions` partitions."""
        return [
            self.clicks_topic,
            self.recommendations_topic,
            self.dlq_topic,
            self.items_topic,
            self.items_dlq_topic,
            self.by_user_topic,
            self.changelog_topic,
            self.item_deltas_topic,
            self.item_vectors_topic,
            self.admin_topic,
        ]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then `STREAMREC_*` variables, then non-None `overrides` (flags)."""
        environ = os.environ if environ is None else environ
        for warning in unknown_variables(environ):
            if warning not in _warned:
                _warned.add(warning)
                log.warning(warning)
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if f.name in SECRETS:
                raw = _secret(f.name, raw, environ)
            if raw is not None:
                values[f.name] = _parse(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The `STREAMREC_*` variables that reproduce these settings in a child process.

        They include the secrets (a child must connect too): hand them to a process's
        environment, never to a log.
        """
        return {ENV_PREFIX + f.name.upper(): str(getattr(self, f.name)) for f in fields(self)}

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _variable(name: str) -> str:
    """The variable that sets field `name`: what a user typed, so what errors name."""
    return ENV_PREFIX + name.upper()


# Each unknown variable is reported once per process, however often settings are read.
_warned: set[str] = set()


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One warning line per `STREAMREC_*` variable that is not a setting (a misspelled
    one would otherwise be silently ignored), naming the closest real one."""
    known = [variable for variable, _default, _help in describe()] + secret_file_variables()
    # Compared without the shared prefix, which would make every name look close.
    names = {variable.removeprefix(ENV_PREFIX): variable for variable in known}
    warnings = []
    for variable in sorted(v for v in environ if v.startswith(ENV_PREFIX) and v not in known):
        close = difflib.get_close_matches(variable.removeprefix(ENV_PREFIX), names, n=1)
        hint = f"did you mean {names[close[0]]}?" if close else "see `streamrec worker --help`"
        warnings.append(f"unknown setting {variable} ignored; {hint}")
    return warnings


def _parse(f: dataclasses.Field[Any], raw: str) -> Any:
    if f.type in ("int", int):
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(
                f"{ENV_PREFIX}{f.name.upper()} must be a whole number, not {raw!r}"
            ) from None
    return raw


def _secret(name: str, raw: str | None, environ: Mapping[str, str]) -> str | None:
    """A secret's value from its variable, or else from the file its `_FILE` variable
    names (trailing line breaks dropped, as editors and `echo` add them)."""
    variable = ENV_PREFIX + name.upper()
    path = environ.get(variable + FILE_SUFFIX)
    if path is None:
        return raw
    if raw is not None:
        raise SettingsError(f"set {variable} or {variable}{FILE_SUFFIX}, not both")
    try:
        with open(path, encoding="utf-8") as file:
            value = file.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise SettingsError(f"{variable}{FILE_SUFFIX}: cannot read {path}: {reason}") from None
    return value.rstrip("\r\n")


def secret_file_variables() -> list[str]:
    """The `<VARIABLE>_FILE` variables that `from_env` also reads."""
    return [ENV_PREFIX + name.upper() + FILE_SUFFIX for name in SECRETS]


def describe() -> list[tuple[str, str, str]]:
    """(variable, default, help) for every setting: the README table and `--help`."""
    return [
        (ENV_PREFIX + f.name.upper(), str(f.default), f.metadata.get("help", ""))
        for f in fields(Settings)
    ]
