"""Kafka and Redis security settings reach every client, and secrets never show.

The contract test runs one table of expectations against every Kafka client factory
the product has (kafka-python admin/producer/consumer, the aiokafka vector follower,
Faust's app), with the client classes replaced by recorders: no network.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import certifi
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from model.registry import build_recommender
from serving.faiss_index import FaissIndex
from stream.items import sync as item_sync
from stream.kafka import consumer, producer, topics
from stream.kafka import follower as follower_module
from stream.preflight import RedisUnreachable
from stream.security import PLAINTEXT, KafkaSecurity, TLSConfigError, redact_url, redis_options
from stream.settings import Settings, SettingsError
from stream.worker.app import create_worker

SECURITY_KEYS = {
    "security_protocol", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password",
    "ssl_context",
}  # fmt: skip
PASSWORD = "pa55-never-shown"
CA = certifi.where()

SASL_SSL = {
    "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256",
    "sasl_username": "streamrec", "sasl_password": PASSWORD, "ssl_cafile": CA,
}  # fmt: skip
CASES: dict[str, dict[str, str]] = {
    "PLAINTEXT": {},
    "SSL": {"security_protocol": "SSL", "ssl_cafile": CA},
    "SASL_PLAINTEXT": {
        "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "streamrec", "sasl_password": PASSWORD,
    },
    "SASL_SSL": SASL_SSL,
}  # fmt: skip


def expected_options(case: dict[str, str]) -> dict[str, Any]:
    """What a client must be given for `case`: nothing at all for PLAINTEXT."""
    protocol = case.get("security_protocol", "PLAINTEXT")
    if protocol == "PLAINTEXT":
        return {}
    expected: dict[str, Any] = {"security_protocol": protocol}
    if protocol.startswith("SASL_"):
        expected |= {
            "sasl_mechanism": case["sasl_mechanism"],
            "sasl_plain_username": case["sasl_username"],
            "sasl_plain_password": case["sasl_password"],
        }
    return expected


class Recorder:
    """Stands in for a client class: records the keyword arguments it was built with."""

    def __init__(self) -> None:
        self.kwargs: dict[str, Any] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.kwargs = kwargs
        return self

    async def start(self) -> None:
        raise _Built  # the follower's first await: stop before any network use

    def close(self) -> None:
        pass


class _Built(Exception):
    pass


def _admin(monkeypatch: pytest.MonkeyPatch, security: KafkaSecurity) -> dict[str, Any]:
    recorder = Recorder()
    monkeypatch.setattr(topics, "KafkaAdminClient", recorder)
    topics.admin_client("k:9092", security=security)
    return recorder.kwargs


def _producer(monkeypatch: pytest.MonkeyPatch, security: KafkaSecurity) -> dict[str, Any]:
    recorder = Recorder()
    monkeypatch.setattr(producer, "KafkaProducer", recorder)
    producer.make_producer("k:9092", security=security)
    return recorder.kwargs


def _consumer(monkeypatch: pytest.MonkeyPatch, security: KafkaSecurity) -> dict[str, Any]:
    recorder = Recorder()
    monkeypatch.setattr(consumer, "KafkaConsumer", recorder)
    consumer.make_consumer("k:9092", ["t"], security=security)
    return recorder.kwargs


def _follower(monkeypatch: pytest.MonkeyPatch, security: KafkaSecurity) -> dict[str, Any]:
    recorder = Recorder()
    monkeypatch.setattr(follower_module, "AIOKafkaConsumer", recorder)
    follower = item_sync.VectorFollower("k:9092", "v", 2, lambda _: None, security=security)
    with pytest.raises(_Built):
        asyncio.run(follower.run())
    return recorder.kwargs


FACTORIES: dict[str, Callable[[pytest.MonkeyPatch, KafkaSecurity], dict[str, Any]]] = {
    "kafka-python admin": _admin,
    "kafka-python producer": _producer,
    "kafka-python consumer": _consumer,
    "aiokafka topic follower (item vectors, catalogue)": _follower,
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("factory", sorted(FACTORIES))
def test_every_kafka_client_factory_gets_the_security_options(
    monkeypatch: pytest.MonkeyPatch, factory: str, case: str
) -> None:
    settings = Settings(**CASES[case])  # type: ignore[arg-type]
    kwargs = FACTORIES[factory](monkeypatch, KafkaSecurity.from_settings(settings))
    assert kwargs["bootstrap_servers"] == ["k:9092"]
    given = {key: kwargs[key] for key in SECURITY_KEYS if key in kwargs}
    context = given.pop("ssl_context", None)
    assert given == expected_options(CASES[case])
    if case.endswith("SSL"):
        assert isinstance(context, ssl.SSLContext)
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    else:
        assert context is None


def test_factories_default_to_plaintext(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    monkeypatch.setattr(producer, "KafkaProducer", recorder)
    producer.make_producer("k:9092")  # no security argument: as before this module
    assert not SECURITY_KEYS & set(recorder.kwargs)


@pytest.mark.parametrize("case", sorted(CASES))
def test_faust_app_gets_the_credentials(tmp_path: Path, case: str) -> None:
    settings = Settings(data_dir=str(tmp_path), model="popularity", **CASES[case])  # type: ignore[arg-type]
    index = FaissIndex(settings.dim)
    recommender = build_recommender("popularity", dim=settings.dim, seed=0, index=index)
    app = create_worker(settings, recommender, index).app
    # What Faust's aiokafka driver passes to its producer, consumer and admin client.
    options = dict(credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context))
    context = options.pop("ssl_context", None)
    if case == "PLAINTEXT":
        assert app.conf.broker_credentials is None
        assert options == {"security_protocol": "PLAINTEXT"}
    else:
        assert options == expected_options(CASES[case])
    assert isinstance(context, ssl.SSLContext) == case.endswith("SSL")


# ---- validation: one-line errors naming the problem -----------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"security_protocol": "TLS"}, "STREAMREC_SECURITY_PROTOCOL must be one of"),
        ({"sasl_mechanism": "SCRAM-SHA-1"}, "STREAMREC_SASL_MECHANISM must be one of"),
        ({"security_protocol": "SASL_SSL", "sasl_password": "x"}, "SASL_SSL needs sasl_username"),
        ({"security_protocol": "SASL_PLAINTEXT", "sasl_username": "u"}, "needs sasl_password"),
        ({"sasl_username": "u", "sasl_password": "x"}, "sasl_username is set but security_pr"),
        ({"ssl_cafile": CA}, "ssl_cafile is set but security_protocol is PLAINTEXT"),
        ({"security_protocol": "SSL", "ssl_keyfile": "k.pem"}, "ssl_keyfile is set without"),
        ({"redis_url": "http://r:6379"}, "redis_url must start with"),
        ({"redis_url": "redis://:a@r/0", "redis_password": "b"}, "redis_url and redis_password"),
        ({"redis_url": "redis://u@r/0", "redis_username": "v"}, "redis_url and redis_username"),
        ({"redis_ssl_cafile": CA}, "redis_url is not rediss://"),
    ],
)  # fmt: skip
def test_bad_security_settings_name_the_problem(values: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message) as caught:
        Settings(**values)  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)


def test_secrets_come_from_files(tmp_path: Path) -> None:
    secret = tmp_path / "sasl_password"
    secret.write_text(PASSWORD + "\n")  # as `echo` writes it
    env = {
        "STREAMREC_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "STREAMREC_SASL_USERNAME": "u",
        "STREAMREC_SASL_PASSWORD_FILE": str(secret),
        "STREAMREC_REDIS_PASSWORD_FILE": str(secret),
    }  # fmt: skip
    settings = Settings.from_env(env)
    assert settings.sasl_password == PASSWORD
    assert settings.redis_password == PASSWORD


def test_secret_file_errors_are_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    variable = "STREAMREC_REDIS_PASSWORD_FILE"
    with pytest.raises(SettingsError, match=f"{variable}: cannot read {missing}"):
        Settings.from_env({"STREAMREC_REDIS_PASSWORD_FILE": str(missing)})
    both = {"STREAMREC_REDIS_PASSWORD": "a", "STREAMREC_REDIS_PASSWORD_FILE": str(missing)}
    with pytest.raises(SettingsError, match="not both"):
        Settings.from_env(both)


def test_secrets_never_show(tmp_path: Path) -> None:
    settings = Settings(**SASL_SSL, redis_password=PASSWORD)  # type: ignore[arg-type]
    security = KafkaSecurity.from_settings(settings)
    shown = [
        repr(settings),
        repr(security),
        security.describe(),
        repr(security.faust_credentials()),
        str(topics.BrokerUnreachable("k:9092", security)),
        str(RedisUnreachable(f"redis://u:{PASSWORD}@r:6379/0", "refused")),
    ]
    for text in shown:
        assert PASSWORD not in text, text
    assert "SASL_SSL (SCRAM-SHA-256 as streamrec)" in shown[4]
    # A child process must still connect: to_env carries the secret to its environment.
    assert Settings.from_env(settings.to_env()) == settings


def test_plaintext_unreachable_message_is_unchanged() -> None:
    assert str(topics.BrokerUnreachable("k:9092")) == "Kafka broker unreachable at k:9092"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:secret@r:6379/0", "redis://:***@r:6379/0"),
        ("rediss://user:secret@r/1", "rediss://user:***@r/1"),
        ("redis://[::1]:6379/0", "redis://[::1]:6379/0"),
        ("redis://:secret@[::1]:6379", "redis://:***@[::1]:6379"),
        ("redis://r:6379/0", "redis://r:6379/0"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redis_options() -> None:
    assert redis_options(Settings()) == {}
    settings = Settings(
        redis_url="rediss://r:6380/0",
        redis_username="app",
        redis_password=PASSWORD,
        redis_ssl_cafile=CA,
    )
    assert redis_options(settings) == {
        "username": "app", "password": PASSWORD, "ssl_ca_certs": CA,
    }  # fmt: skip


def test_plaintext_has_no_tls_or_credentials() -> None:
    assert PLAINTEXT.client_options() == {}
    assert PLAINTEXT.ssl_context() is None
    assert PLAINTEXT.faust_credentials() is None


def test_unreadable_ca_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    with pytest.raises(TLSConfigError, match=f"ssl_cafile {missing}"):
        KafkaSecurity(protocol="SSL", cafile=str(missing)).client_options()
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(TLSConfigError, match=f"ssl_cafile {garbage}"):
        KafkaSecurity(protocol="SSL", cafile=str(garbage)).ssl_context()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_client_certificate_is_loaded(tmp_path: Path) -> None:
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=streamrec-client", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    security = KafkaSecurity(protocol="SSL", cafile=CA, certfile=str(cert), keyfile=str(key))
    assert isinstance(security.ssl_context(), ssl.SSLContext)
    with pytest.raises(TLSConfigError, match="ssl_certfile/ssl_keyfile"):
        KafkaSecurity(protocol="SSL", certfile=str(cert), keyfile=str(cert)).ssl_context()


def test_kafka_admin_debug_log_hides_the_sasl_password(caplog: pytest.LogCaptureFixture):
    # kafka-python's admin client logs its whole configuration at DEBUG before it
    # connects; through topics.admin_client the SASL password never reaches the log
    # (the username may). Nothing listens on port 1, so it then fails as unreachable.
    sasl = KafkaSecurity(protocol="SASL_PLAINTEXT", username="svc", password="s3cret-pw")
    with caplog.at_level(logging.DEBUG, logger="kafka"), pytest.raises(topics.BrokerUnreachable):
        topics.admin_client("127.0.0.1:1", timeout_s=0.5, security=sasl)
    assert "Starting KafkaAdminClient" in caplog.text and "'svc'" in caplog.text
    assert "s3cret-pw" not in caplog.text
