"""Kafka and Redis connection security: one place that turns the settings into each
client's options (issue #6, "safe by default").

Every Kafka client the product builds takes a `KafkaSecurity`: kafka-python's admin
client, producer and consumer (stream/kafka/topics.py, producer.py, consumer.py), aiokafka's
consumer in the vector follower (stream/items/sync.py) and Faust's own producer,
consumer and admin (`broker_credentials`, stream/worker/app.py). The default, PLAINTEXT, adds
no option at all, so a plaintext client is built exactly as before.
tests/unit/test_security.py checks each of them against one table of expectations.

Redis takes its user, password and TLS CA as keyword options of `Redis.from_url`;
`redis_options` builds them, and `redact_url` hides a password written into a URL
before the URL appears in an error message. `hide_client_secrets` keeps the Kafka
password out of kafka-python's debug log.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from stream.settings import Settings, SettingsError


class TLSConfigError(SettingsError):
    """A CA, certificate or key file cannot be read or parsed; the message names it."""


@dataclass(frozen=True)
class KafkaSecurity:
    """How a Kafka client authenticates and encrypts; validated by `Settings`.

    `protocol` is one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL. The password is kept
    out of `repr`, so a logged or printed KafkaSecurity never shows it.
    """

    protocol: str = "PLAINTEXT"
    mechanism: str = "SCRAM-SHA-512"
    username: str = ""
    password: str = field(default="", repr=False)
    cafile: str = ""
    certfile: str = ""
    keyfile: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> KafkaSecurity:
        return cls(
            protocol=settings.security_protocol,
            mechanism=settings.sasl_mechanism,
            username=settings.sasl_username,
            password=settings.sasl_password,
            cafile=settings.ssl_cafile,
            certfile=settings.ssl_certfile,
            keyfile=settings.ssl_keyfile,
        )

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """A verifying TLS context (hostname checked) for SSL and SASL_SSL, else None.

        Raises TLSConfigError naming the file when a CA, certificate or key is missing
        or unreadable. Built fresh on each call; cheap next to a connection.
        """
        if not self.uses_tls:
            return None
        try:
            context = ssl.create_default_context(cafile=self.cafile or None)
        except (OSError, ssl.SSLError) as exc:
            raise TLSConfigError(f"ssl_cafile {self.cafile}: {_reason(exc)}") from None
        if self.certfile:
            try:
                context.load_cert_chain(self.certfile, self.keyfile or None)
            except (OSError, ssl.SSLError) as exc:
                files = " / ".join(f for f in (self.certfile, self.keyfile) if f)
                raise TLSConfigError(f"ssl_certfile/ssl_keyfile {files}: {_reason(exc)}") from None
        return context

    def client_options(self) -> dict[str, Any]:
        """Keyword options for kafka-python's KafkaAdminClient, KafkaProducer and
        KafkaConsumer and for aiokafka's clients (both spell them the same way and both
        take a prepared `ssl_context`); empty for PLAINTEXT."""
        if self.protocol == "PLAINTEXT":
            return {}
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.uses_sasl:
            options |= {
                "sasl_mechanism": self.mechanism,
                "sasl_plain_username": self.username,
                "sasl_plain_password": self.password,
            }
        if self.uses_tls:
            options["ssl_context"] = self.ssl_context()
        return options

    def faust_credentials(self) -> Any:
        """The `broker_credentials` of a faust.App, or None for PLAINTEXT (Faust's
        default). Faust hands these to aiokafka for its producer, consumer and admin."""
        import faust

        if self.uses_sasl:
            return faust.SASLCredentials(
                username=self.username,
                password=self.password,
                mechanism=self.mechanism,
                ssl_context=self.ssl_context(),  # None for SASL_PLAINTEXT
            )
        if self.uses_tls:
            return faust.SSLCredentials(self.ssl_context())
        return None

    def describe(self) -> str:
        """A log- and error-safe summary, e.g. `SASL_SSL (SCRAM-SHA-512 as streamrec)`."""
        if self.uses_sasl:
            return f"{self.protocol} ({self.mechanism} as {self.username})"
        return self.protocol


PLAINTEXT = KafkaSecurity()


def redis_options(settings: Settings) -> dict[str, Any]:
    """Keyword options for `redis.Redis.from_url(settings.redis_url, ...)`: the user,
    password and TLS CA from the settings; empty when none is set (a password inside
    the URL is read by redis-py itself)."""
    options: dict[str, Any] = {}
    if settings.redis_username:
        options["username"] = settings.redis_username
    if settings.redis_password:
        options["password"] = settings.redis_password
    if settings.redis_ssl_cafile:
        options["ssl_ca_certs"] = settings.redis_ssl_cafile
    return options


_SECRET_OPTIONS = ("sasl_plain_password", "ssl_password")


class _RedactSecretOptions(logging.Filter):
    """Hides secret options in a record whose argument is a client's options:
    kafka-python's admin client logs its whole configuration at DEBUG level, the
    SASL password included (logging keeps a lone mapping argument as `args`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, dict):
            record.args = {
                k: "***" if k in _SECRET_OPTIONS and v else v for k, v in record.args.items()
            }
        return True


_REDACTOR = _RedactSecretOptions()


def hide_client_secrets() -> None:
    """Install the redacting filter on kafka-python's admin client logger
    (idempotent: a logger holds a filter once). Correction S1 in the table of
    stream/kafka/__init__.py; checked on kafka-python 3.0.12."""
    logging.getLogger("kafka.admin.client").addFilter(_REDACTOR)


def redact_url(url: str) -> str:
    """`url` with any password replaced by `***`, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _reason(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return exc.strerror or str(exc)
