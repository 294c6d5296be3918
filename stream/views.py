"""The worker's web views: Prometheus metrics, recent recommendations, the live page.

Served by Faust's web server, bound to STREAMREC_WEB_HOST (loopback by default). No
view serves table contents (user state); `/api/recent` shows only the last few
recommendation events, which the recommendations topic carries anyway.
"""

from __future__ import annotations

from collections import deque
from importlib import resources
from typing import Any

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


__all__ = ["RecentRecommendations", "register_views"]
