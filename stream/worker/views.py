"""The worker's web views: Prometheus metrics, recent recommendations, the live page.

Served by Faust's web server, bound to STREAMREC_WEB_HOST (loopback by default). No
view serves table contents (user state); `/api/recent` shows only the last few
recommendation events, which the recommendations topic carries anyway, and
`/recommendations/{user_id}` answers with one user's recommendations, not their state.
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import Any

import numpy as np
from aiohttp import web as aiohttp_web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST

from stream.events import MAX_ID_CHARS, Recommendation
from stream.metrics import WorkerMetrics

RECENT_SHOWN = 20
# aiohttp refuses a longer request line itself (8190 bytes by default), before any view
# or middleware runs. 64 KiB lets an over-long id reach the views, which answer it in
# JSON; past that aiohttp's plain-text 400 stands (logged in one line, below).
MAX_REQUEST_LINE_BYTES = 65_536
# A logger of its own, so the filter below touches only the worker's web server.
WEB_SERVER_LOG = logging.getLogger("stream.worker.web")


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


class _ClientErrorsInOneLine(logging.Filter):
    """aiohttp logs a request it cannot parse (request line too long, bad header) at
    ERROR with a traceback, then answers 400 itself. The client erred, not the worker:
    one warning line naming the problem is enough (issue 14)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = "refused a bad HTTP request: %s"
            record.args = (str(exc.message)[:200],)
            record.exc_info = record.exc_text = None
        return True


WEB_SERVER_LOG.addFilter(_ClientErrorsInOneLine())


@aiohttp_web.middleware
async def json_errors(
    request: aiohttp_web.Request,
    handler: Callable[[aiohttp_web.Request], Awaitable[aiohttp_web.StreamResponse]],
) -> aiohttp_web.StreamResponse:
    """aiohttp's own client errors (no such route, method not allowed) as JSON, like
    the views' errors. A view that raises anything else is a bug: a 500, logged."""
    try:
        return await handler(request)
    except aiohttp_web.HTTPException as exc:
        if not 400 <= exc.status < 500:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return aiohttp_web.json_response({"error": exc.reason}, status=exc.status, headers=headers)


def web_application_options() -> dict[str, Any]:
    """Options for the aiohttp application under Faust's web server
    (`web_application_options`): JSON client errors and the request-line limit."""
    return {
        "middlewares": [json_errors],
        "handler_args": {"max_line_size": MAX_REQUEST_LINE_BYTES, "logger": WEB_SERVER_LOG},
    }


MAX_PULL_K = 1000


def _id_problem(name: str, value: str) -> str | None:
    """Ids in URLs obey the clicks' limit (stream/events.py): no id longer than a click
    may carry can name a user or item."""
    if len(value) > MAX_ID_CHARS:
        return f"{name} is {len(value)} characters; the limit is {MAX_ID_CHARS}"
    return None


def parse_k(raw: str) -> int | None:
    """`k` as an integer from 1 to MAX_PULL_K, or None. ASCII digits only: `isdigit`
    also accepts '²' and '①' (which int() then refuses) and int() reads '٣' as 3."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > len(str(MAX_PULL_K)):
        return None
    k = int(raw)
    return k if 1 <= k <= MAX_PULL_K else None


def register_pull_view(
    app: Any, users: Any, answer: Callable[[str, int], bytes], top_k: int
) -> None:
    """`GET /recommendations/{user_id}?k=10`: the JSON of a recommendation event for the
    user as they stand now, for applications that ask rather than listen. Faust routes
    the request to the worker that owns the user's table partition (503 while no
    worker owns it yet); `k` defaults to STREAMREC_TOP_K."""

    @app.table_route(table=users, match_info="user_id")
    async def routed(web: Any, request: Any, user_id: str, k: int) -> Any:
        return web.bytes(answer(user_id, k), content_type="application/json")

    # Checked before routing, so a bad request costs no hop to the user's owner.
    @app.page("/recommendations/{user_id}")
    async def pull_view(web: Any, request: Any, user_id: str) -> Any:
        problem = _id_problem("user_id", user_id)
        if problem:
            return web.json({"error": problem}, status=400)
        raw_k = request.query.get("k", str(top_k))
        k = parse_k(raw_k)
        if k is None:
            shown = raw_k[:20] + ("..." if len(raw_k) > 20 else "")
            return web.json(
                {"error": f"k must be an integer from 1 to {MAX_PULL_K}, not {shown!r}"},
                status=400,
            )
        return await routed(web, request, user_id, k)


def register_index_views(
    app: Any, index_of: Callable[[], Any], versions: Callable[[str], int | None]
) -> None:
    """What this worker's FAISS index (`index_of()`: the serving model's, which a live
    swap changes) holds, to check that workers agree: `/api/index` gives the item count
    and a SHA-256 over the sorted (id, float32 vector) pairs; `/api/items/{item_id}`
    gives one item's vector and the version of the canonical vector it came from (null
    before any owner wrote it)."""

    @app.page("/api/index")
    async def index_view(web: Any, request: Any) -> Any:
        index = index_of()
        digest = hashlib.sha256()
        ids = sorted(index.ids())
        for item_id in ids:
            digest.update(item_id.encode() + b"\0")
            digest.update(np.asarray(index.vector(item_id), dtype="<f4").tobytes())
        return web.json({"items": len(ids), "sha256": digest.hexdigest()})

    @app.page("/api/items/{item_id}")
    async def item_view(web: Any, request: Any, item_id: str) -> Any:
        problem = _id_problem("item_id", item_id)
        if problem:
            return web.json({"error": problem}, status=400)
        index = index_of()
        if item_id not in index:
            return web.json({"error": f"unknown item {item_id!r}"}, status=404)
        vector = np.asarray(index.vector(item_id), dtype=np.float32)
        return web.json(
            {"item_id": item_id, "version": versions(item_id), "vector": vector.tolist()}
        )


__all__ = [
    "RecentRecommendations",
    "parse_k",
    "register_index_views",
    "register_pull_view",
    "register_views",
    "web_application_options",
]
