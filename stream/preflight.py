"""Start-up checks that the Kafka broker and Redis answer, quickly and before anything
heavy is imported or built, so a wrong address is one line within seconds (issue 14:
no broker took 17 s, a wrong Redis port 7.9 s, mostly importing torch and waiting out
kafka-python's 10 s bootstrap).

Each check blocks for at most `timeout_s` and raises an error whose message is the one
line the CLI prints. This module imports no torch, Faust or model code.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis

from stream.kafka.topics import BrokerUnreachable, admin_client
from stream.security import KafkaSecurity, redact_url, redis_options
from stream.settings import Settings


class RedisUnreachable(ConnectionError):
    """Redis did not answer, or refused this client's login; the message shows the
    URL with any password masked."""

    def __init__(self, url: str, reason: str = "") -> None:
        message = f"Redis unreachable at {redact_url(url)}"
        super().__init__(f"{message}: {reason}" if reason else message)


def check_broker(bootstrap_servers: str, *, security: KafkaSecurity, timeout_s: float) -> None:
    """Raise BrokerUnreachable unless a broker answers a bootstrap within `timeout_s`."""
    admin_client(bootstrap_servers, timeout_s, security=security).close()


def check_redis(url: str, timeout_s: float = 5.0, **client_options: Any) -> None:
    """Raise RedisUnreachable unless the server at `url` answers PING.

    `client_options` go to `Redis.from_url` (see stream.security.redis_options). A
    refused or missing password is named as such rather than as an unreachable host.
    """
    client = redis.Redis.from_url(
        url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, **client_options
    )
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        reason = (
            "it requires a password (STREAMREC_REDIS_PASSWORD, or in STREAMREC_REDIS_URL)"
            if "password" not in client_options and urlsplit(url).password is None
            else f"login refused ({exc})"
        )
        raise RedisUnreachable(url, reason) from exc
    except (redis.RedisError, OSError, ValueError) as exc:
        # redis-py's messages name the host and the cause (refused, timeout, TLS
        # verification), never the password.
        raise RedisUnreachable(url, str(exc).splitlines()[0] if str(exc) else "") from exc
    finally:
        client.close()


def check_services(settings: Settings) -> None:
    """The worker's preflight: the broker, then Redis, each within connect_timeout_s."""
    timeout_s = float(settings.connect_timeout_s)
    check_broker(
        settings.bootstrap_servers,
        security=KafkaSecurity.from_settings(settings),
        timeout_s=timeout_s,
    )
    check_redis(settings.redis_url, timeout_s, **redis_options(settings))


__all__ = ["BrokerUnreachable", "RedisUnreachable", "check_broker", "check_redis", "check_services"]
