"""Redis vector store: item and user vectors as float32 bytes with a version.

Layout (prefix configurable): `{prefix}item:{id}` and `{prefix}user:{id}` are hashes
with fields `v` (little-endian float32 bytes) and `ver` (integer). A write carries a
version and is applied only when it is newer than the stored one, checked and written
by one Lua script, so one batch is one round trip and a stale writer never overwrites a
newer vector. User vectors expire after `user_ttl_s` of inactivity.

Redis is a rebuildable copy of the model's state, never the source of truth. A writer
keeps a marker key (`keep_marker`) to notice a Redis that lost its data and write its
vectors back (stream/worker/redis_health.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import redis.asyncio as aioredis

# KEYS: the hashes to write. ARGV: (version, ttl seconds or 0, bytes) per key.
# Returns how many keys were written (the rest were stale).
_COMPARE_AND_SET = """
local written = 0
for i, key in ipairs(KEYS) do
  local version = tonumber(ARGV[3 * i - 2])
  local ttl = tonumber(ARGV[3 * i - 1])
  local current = tonumber(redis.call('HGET', key, 'ver') or '-1')
  if version > current then
    redis.call('HSET', key, 'v', ARGV[3 * i], 'ver', version)
    if ttl > 0 then redis.call('EXPIRE', key, ttl) end
    written = written + 1
  end
end
return written
"""
MAX_VERSION = 2**53


class VectorStore(Protocol):
    """Where the worker publishes vectors; `RedisVectorStore` is the real one."""

    async def put_vectors(
        self,
        *,
        items: Mapping[str, np.ndarray],
        users: Mapping[str, np.ndarray],
        version: int,
        item_versions: Mapping[str, int] | None = None,
        user_versions: Mapping[str, int] | None = None,
    ) -> int: ...

    async def get_item(self, item_id: str) -> tuple[np.ndarray, int] | None: ...

    async def keep_marker(self, name: str, ttl_s: int) -> bool: ...

    async def set_marker(self, name: str, ttl_s: int) -> None: ...

    async def close(self) -> None: ...


class RedisVectorStore:
    """Async vector store on Redis. Writes are compare-and-set by version."""

    def __init__(self, client: aioredis.Redis, prefix: str = "streamrec:", user_ttl_s: int = 0):
        self._client = client
        self._prefix = prefix
        self._user_ttl_s = user_ttl_s
        self._cas = client.register_script(_COMPARE_AND_SET)

    @classmethod
    def from_url(
        cls, url: str, prefix: str = "streamrec:", user_ttl_s: int = 0, **client_options: Any
    ) -> RedisVectorStore:
        """A store on the server at `url`; `client_options` go to `Redis.from_url`
        (`username`, `password`, `ssl_ca_certs` for a rediss:// URL). Does not connect."""
        return cls(
            aioredis.Redis.from_url(url, **client_options), prefix=prefix, user_ttl_s=user_ttl_s
        )

    def item_key(self, item_id: str) -> str:
        return f"{self._prefix}item:{item_id}"

    def user_key(self, user_id: str) -> str:
        return f"{self._prefix}user:{user_id}"

    async def ping(self) -> None:
        """Raises redis.ConnectionError if the server cannot be reached."""
        await self._client.ping()

    async def put_vectors(
        self,
        *,
        items: Mapping[str, np.ndarray],
        users: Mapping[str, np.ndarray],
        version: int,
        item_versions: Mapping[str, int] | None = None,
        user_versions: Mapping[str, int] | None = None,
    ) -> int:
        """Write item and user vectors with `version` (or a key's own version from
        `item_versions` / `user_versions`) in one round trip.

        Returns how many were written; a key whose stored version is not lower is left
        alone (a stale write). Raises redis.RedisError when Redis fails, and ValueError
        for a version outside [0, 2**53), which Lua's doubles cannot compare exactly.
        """
        versions = item_versions or {}
        own_user_versions = user_versions or {}
        for checked in (version, *versions.values(), *own_user_versions.values()):
            if not 0 <= checked < MAX_VERSION:
                raise ValueError(f"version must be in [0, 2**53), not {checked}")
        args: list[int | bytes] = []
        keys: list[str] = []
        for item_id, vector in items.items():
            keys.append(self.item_key(item_id))
            args += [versions.get(item_id, version), 0, _to_bytes(vector)]
        for user_id, vector in users.items():
            keys.append(self.user_key(user_id))
            args += [own_user_versions.get(user_id, version), self._user_ttl_s, _to_bytes(vector)]
        if not keys:
            return 0
        return int(await self._cas(keys=keys, args=args))

    async def keep_marker(self, name: str, ttl_s: int) -> bool:
        """Extend marker `name`'s life to `ttl_s`; False if it is gone (Redis lost
        data: restarted empty, flushed, or evicted it). One round trip."""
        return bool(await self._client.expire(f"{self._prefix}marker:{name}", ttl_s))

    async def set_marker(self, name: str, ttl_s: int) -> None:
        """Set marker `name` for `ttl_s` seconds (`keep_marker` tells whether it is
        still there)."""
        await self._client.set(f"{self._prefix}marker:{name}", b"1", ex=ttl_s)

    async def get_item(self, item_id: str) -> tuple[np.ndarray, int] | None:
        return await self._get(self.item_key(item_id))

    async def get_user(self, user_id: str) -> tuple[np.ndarray, int] | None:
        return await self._get(self.user_key(user_id))

    async def close(self) -> None:
        await self._client.aclose()

    async def _get(self, key: str) -> tuple[np.ndarray, int] | None:
        raw, version = await self._client.hmget(key, ["v", "ver"])
        if not isinstance(raw, bytes) or version is None:  # missing (the client returns bytes)
            return None
        return np.frombuffer(raw, dtype="<f4").copy(), int(version)


def _to_bytes(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()
