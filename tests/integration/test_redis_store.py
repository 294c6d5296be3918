"""`RedisVectorStore` against a real Redis-protocol server (the embedded Valkey).

One server for the module; every test writes under its own key prefix.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest

from serving.redis_store import RedisVectorStore
from stream.dev.services import free_port, redis_binary, spawn, stop, wait_for_port

pytestmark = pytest.mark.integration

T = TypeVar("T")
USER_TTL_S = 600


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir: Path = tmp_path_factory.mktemp("valkey")
    port = free_port()
    process = spawn(
        [
            redis_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--daemonize",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        log_path=workdir / "valkey.log",
    )
    try:
        wait_for_port("127.0.0.1", port, 15, process)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(process)


def unique_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}:"


def with_store(
    url: str,
    body: Callable[[RedisVectorStore], Awaitable[T]],
    *,
    prefix: str | None = None,
    user_ttl_s: int = USER_TTL_S,
) -> T:
    """Run `body` with a fresh store (and event loop); the client is always closed."""

    async def main() -> T:
        store = RedisVectorStore.from_url(
            url, prefix=prefix or unique_prefix(), user_ttl_s=user_ttl_s
        )
        try:
            await store.ping()
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


def vec(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def assert_stored(got: tuple[np.ndarray, int] | None, vector: np.ndarray, version: int) -> None:
    assert got is not None, "nothing stored"
    stored, stored_version = got
    assert stored.dtype == np.float32
    np.testing.assert_array_equal(stored, vector)
    assert stored_version == version


def test_put_then_get_returns_the_same_vector_and_version(redis_url: str) -> None:
    vector = np.random.default_rng(0).standard_normal(64).astype(np.float32)

    async def body(store: RedisVectorStore) -> None:
        assert await store.put_vectors(items={"i1": vector}, users={}, version=7) == 1
        assert_stored(await store.get_item("i1"), vector, 7)
        # Bytes in Redis are little-endian float32, as the layout documents.
        raw = await store._client.hget(store.item_key("i1"), "v")
        assert raw == vector.astype("<f4").tobytes()

    with_store(redis_url, body)


def test_unknown_ids_are_none(redis_url: str) -> None:
    async def body(store: RedisVectorStore) -> None:
        assert await store.get_item("never-written") is None
        assert await store.get_user("never-written") is None

    with_store(redis_url, body)


def test_float64_input_is_stored_as_float32(redis_url: str) -> None:
    async def body(store: RedisVectorStore) -> None:
        await store.put_vectors(items={"i1": np.array([0.1, 2.5, -3.0])}, users={}, version=1)
        assert_stored(await store.get_item("i1"), vec(0.1, 2.5, -3.0), 1)

    with_store(redis_url, body)


@pytest.mark.parametrize("stale_version", [4, 5], ids=["lower", "equal"])
def test_stale_write_does_not_overwrite(redis_url: str, stale_version: int) -> None:
    async def body(store: RedisVectorStore) -> None:
        assert (
            await store.put_vectors(items={"i1": vec(1, 2)}, users={"u1": vec(3, 4)}, version=5)
            == 2
        )
        written = await store.put_vectors(
            items={"i1": vec(9, 9)}, users={"u1": vec(9, 9)}, version=stale_version
        )
        assert written == 0
        assert_stored(await store.get_item("i1"), vec(1, 2), 5)
        assert_stored(await store.get_user("u1"), vec(3, 4), 5)
        # A newer version does overwrite.
        assert await store.put_vectors(items={"i1": vec(7, 8)}, users={}, version=6) == 1
        assert_stored(await store.get_item("i1"), vec(7, 8), 6)

    with_store(redis_url, body)


def test_put_counts_only_the_keys_it_wrote(redis_url: str) -> None:
    async def body(store: RedisVectorStore) -> None:
        await store.put_vectors(items={"old": vec(1)}, users={}, version=10)
        written = await store.put_vectors(
            items={"old": vec(2), "new": vec(3)}, users={"u": vec(4)}, version=10
        )
        assert written == 2  # "old" at version 10 is stale; "new" and "u" are written
        assert_stored(await store.get_item("old"), vec(1), 10)
        assert_stored(await store.get_item("new"), vec(3), 10)
        assert_stored(await store.get_user("u"), vec(4), 10)

    with_store(redis_url, body)


def test_items_and_users_in_one_call(redis_url: str) -> None:
    rng = np.random.default_rng(1)
    items = {f"i{n}": rng.standard_normal(8).astype(np.float32) for n in range(5)}
    users = {f"u{n}": rng.standard_normal(8).astype(np.float32) for n in range(3)}

    async def body(store: RedisVectorStore) -> None:
        assert await store.put_vectors(items=items, users=users, version=1) == 8
        for item_id, vector in items.items():
            assert_stored(await store.get_item(item_id), vector, 1)
            assert await store.get_user(item_id) is None  # items are not users
        for user_id, vector in users.items():
            assert_stored(await store.get_user(user_id), vector, 1)
            assert await store.get_item(user_id) is None

    with_store(redis_url, body)


def test_nothing_to_write_is_zero(redis_url: str) -> None:
    async def body(store: RedisVectorStore) -> None:
        assert await store.put_vectors(items={}, users={}, version=1) == 0

    with_store(redis_url, body)


def test_user_keys_expire_and_item_keys_do_not(redis_url: str) -> None:
    async def body(store: RedisVectorStore) -> None:
        await store.put_vectors(items={"i1": vec(1)}, users={"u1": vec(2)}, version=1)
        client = store._client
        user_ttl = await client.ttl(store.user_key("u1"))
        assert 0 < user_ttl <= USER_TTL_S
        assert await client.ttl(store.item_key("i1")) == -1  # exists, no expiry

    with_store(redis_url, body)


def test_a_newer_user_write_refreshes_the_ttl(redis_url: str) -> None:
    async def body(store: RedisVectorStore) -> None:
        client = store._client
        key = store.user_key("u1")
        await store.put_vectors(items={}, users={"u1": vec(1)}, version=1)
        await client.expire(key, 5)  # as if most of the TTL had passed
        await store.put_vectors(items={}, users={"u1": vec(2)}, version=2)
        assert await client.ttl(key) > 5

    with_store(redis_url, body)


def test_zero_user_ttl_means_no_expiry(redis_url: str) -> None:
    async def body(store: RedisVectorStore) -> None:
        await store.put_vectors(items={}, users={"u1": vec(1)}, version=1)
        assert await store._client.ttl(store.user_key("u1")) == -1

    with_store(redis_url, body, user_ttl_s=0)


def test_prefixes_are_isolated(redis_url: str) -> None:
    a, b = unique_prefix(), unique_prefix()

    async def write_a(store: RedisVectorStore) -> list[bytes]:
        await store.put_vectors(items={"x": vec(1, 1)}, users={"u": vec(2, 2)}, version=3)
        return [key async for key in store._client.scan_iter(match=f"{a}*")]

    keys_a = with_store(redis_url, write_a, prefix=a)
    assert sorted(keys_a) == sorted([f"{a}item:x".encode(), f"{a}user:u".encode()])

    async def read_b(store: RedisVectorStore) -> None:
        assert await store.get_item("x") is None
        assert await store.get_user("u") is None
        # B's own write with a lower version is not stale: A's versions are not B's.
        assert await store.put_vectors(items={"x": vec(5, 5)}, users={}, version=1) == 1
        assert_stored(await store.get_item("x"), vec(5, 5), 1)

    with_store(redis_url, read_b, prefix=b)

    async def reread_a(store: RedisVectorStore) -> None:
        assert_stored(await store.get_item("x"), vec(1, 1), 3)

    with_store(redis_url, reread_a, prefix=a)


def test_microsecond_clock_versions_compare_exactly(redis_url: str) -> None:
    # The worker's versions are a microsecond clock (~1.8e15): below 2**53, so the Lua
    # script's doubles still tell t + 1 from t. (Nanosecond versions, ~1.8e18, did not:
    # a newer vector was dropped as stale. The store now refuses them outright.)
    t = time.time_ns() // 1000

    async def body(store: RedisVectorStore) -> tuple[int, tuple[np.ndarray, int] | None]:
        await store.put_vectors(items={"i1": vec(1)}, users={}, version=t)
        written = await store.put_vectors(items={"i1": vec(2)}, users={}, version=t + 1)
        return written, await store.get_item("i1")

    written, got = with_store(redis_url, body)
    assert written == 1, f"version {t + 1} was treated as not newer than {t}"
    assert_stored(got, vec(2), t + 1)


def test_versions_lua_cannot_compare_are_refused(redis_url: str) -> None:
    async def body(store: RedisVectorStore) -> None:
        await store.put_vectors(items={"i1": vec(1)}, users={}, version=2**53)

    with pytest.raises(ValueError, match="2\\*\\*53"):
        with_store(redis_url, body)
