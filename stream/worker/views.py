"""The worker's web views: Prometheus metrics, recent recommendations, the live page.

Served by Faust's web server, bound to STREAMREC_WEB_HOST (loopback by default). No
view serves table contents (user state); `/api/recent` shows only the last few
recommendation events, which the recommendations topic carries anyway, and
`/recommendations/{user_id}` answers with one user's recommendations, not their state.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST

from stream.events import Recommendation
from stream.metrics import WorkerMetrics

RECENT_SHOWN = 20


class RecentRecommendations:
    """The last few recommendation events, newest first, for the live page."""

    def __init__(self, size: int = RECENT_SHOWN) -> None:
        self._events: deque[bytes] = deque(maxlen=size)

    def add(self, recommendation: Recommendation) -> None:
        self._events.appendleft(recommendation.to_json())

    def add_encoded(self, values: Sequence[bytes]) -> None:
        """Add encoded recommendation events, oldest first (a batch's, in order)."""
        self._events.extendleft(values[-(self._events.maxlen or len(values)) :])

    def to_json(self) -> bytes:
        return b'{"recommendations":[' + b",".join(self._events) + b"]}"


def register_views(app: Any, metrics: WorkerMetrics, recent: RecentRecommendations) -> None:
    page = resources.files("stream").joinpath("static/dashboard.html").read_bytes()

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        # As a header: aiohttp refuses a content_type argument that carries a charset.
        return web.bytes(metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/api/recent")
    async def recent_view(web: Any, request: Any) -> Any:
        return web.bytes(recent.to_json(), content_type="application/json")

    @app.page("/dashboard")
    async def dashboard_view(web: Any, request: Any) -> Any:
        return web.bytes(page, headers={"Content-Type": "text/html; charset=utf-8"})


MAX_PULL_K = 1000


def register_pull_view(
    app: Any, users: Any, answer: Callable[[str, int], bytes], top_k: int
) -> None:
    """`GET /recommendations/{user_id}?k=10`: the JSON of a recommendation event for the
    user as they stand now, for applications that ask rather than listen. Faust routes
    the request to the worker that owns the user's table partition (503 while no
    worker owns it yet); `k` defaults to STREAMREC_TOP_K."""

    @app.page("/recommendations/{user_id}")
    @app.table_route(table=users, match_info="user_id")
    async def pull_view(web: Any, request: Any, user_id: str) -> Any:
        raw_k = request.query.get("k", str(top_k))
        if not raw_k.isdigit() or not 1 <= int(raw_k) <= MAX_PULL_K:
            return web.json(
                {"error": f"k must be an integer from 1 to {MAX_PULL_K}, not {raw_k!r}"},
                status=400,
            )
        return web.bytes(answer(user_id, int(raw_k)), content_type="application/json")


def register_index_views(app: Any, index: Any, versions: Callable[[str], int | None]) -> None:
    """What this worker's FAISS index holds, to check that workers agree:
    `/api/index` gives the item count and a SHA-256 over the sorted (id, float32
    vector) pairs; `/api/items/{item_id}` gives one item's vector and the version of
    the canonical vector it came from (null before any owner wrote it)."""

    @app.page("/api/index")
    async def index_view(web: Any, request: Any) -> Any:
        digest = hashlib.sha256()
        ids = sorted(index.ids())
        for item_id in ids:
            digest.update(item_id.encode() + b"\0")
            digest.update(np.asarray(index.vector(item_id), dtype="<f4").tobytes())
        return web.json({"items": len(ids), "sha256": digest.hexdigest()})

    @app.page("/api/items/{item_id}")
    async def item_view(web: Any, request: Any, item_id: str) -> Any:
        if item_id not in index:
            return web.json({"error": f"unknown item {item_id!r}"}, status=404)
        vector = np.asarray(index.vector(item_id), dtype=np.float32)
        return web.json(
            {"item_id": item_id, "version": versions(item_id), "vector": vector.tolist()}
        )


__all__ = ["RecentRecommendations", "register_index_views", "register_pull_view", "register_views"]
