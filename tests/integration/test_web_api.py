"""The worker's HTTP routes over its real web server: every bad request is a 4xx with a
JSON error, never a 500, and never a traceback in the worker's log (issue 14)."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.events import MAX_ID_CHARS
from stream.worker.views import MAX_PULL_K, MAX_REQUEST_LINE_BYTES

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def worker(worker_factory: Any) -> Any:
    return worker_factory()


def request(worker: Any, path: str, method: str = "GET") -> tuple[int, str, bytes]:
    """(status, content type, body) of one request to the worker."""
    url = f"http://{worker.settings.web_host}:{worker.settings.web_port}{path}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def assert_answered_or_refused_in_json(status: int, content_type: str, body: bytes) -> Any:
    assert status == 200 or 400 <= status < 500, (status, body[:200])
    assert content_type.startswith("application/json"), (status, content_type, body[:200])
    data = orjson.loads(body)
    if status != 200:
        assert isinstance(data["error"], str) and data["error"], data
    return data


def assert_no_traceback(worker: Any) -> None:
    log = worker.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "[ERROR]" not in log, worker.log_tail()


# The inputs the issue names, with the error each must get.
BAD_REQUESTS = [
    ("/recommendations/u?k=%C2%B2", "k must be an integer"),  # '²': isdigit, int() refuses
    ("/recommendations/u?k=" + quote("①"), "k must be an integer"),
    ("/recommendations/u?k=" + quote("٣"), "k must be an integer"),  # int() reads 3
    ("/recommendations/u?k=0", "k must be an integer"),
    (f"/recommendations/u?k={MAX_PULL_K + 1}", "k must be an integer"),
    ("/recommendations/u?k=" + "9" * 5000, "k must be an integer"),
    ("/recommendations/" + "x" * 10_000, f"the limit is {MAX_ID_CHARS}"),
    ("/recommendations/" + "x" * 5_000, f"the limit is {MAX_ID_CHARS}"),
    ("/recommendations/" + "x" * (MAX_ID_CHARS + 1), f"the limit is {MAX_ID_CHARS}"),
    ("/api/items/" + "y" * (MAX_ID_CHARS + 1), f"the limit is {MAX_ID_CHARS}"),
    ("/api/items/unknown", "unknown item"),
    ("/no/such/route", "Not Found"),
    ("/recommendations/", "Not Found"),
]


@pytest.mark.parametrize(("path", "error"), BAD_REQUESTS, ids=lambda v: str(v)[:40])
def test_each_bad_request_named_in_the_issue_is_a_json_4xx(
    worker: Any, path: str, error: str
) -> None:
    status, content_type, body = request(worker, path)
    data = assert_answered_or_refused_in_json(status, content_type, body)
    assert status != 200 and error in data["error"], (status, data)
    assert_no_traceback(worker)


def test_the_longest_user_id_a_click_may_carry_is_answered(worker: Any) -> None:
    user = "é" * MAX_ID_CHARS  # 256 characters, 1,536 bytes once percent-encoded
    status, content_type, body = request(worker, f"/recommendations/{quote(user)}?k=3")
    data = assert_answered_or_refused_in_json(status, content_type, body)
    assert status == 200 and data["user_id"] == user and len(data["items"]) <= 3


def test_a_request_line_past_the_server_limit_is_refused_in_one_log_line(worker: Any) -> None:
    # aiohttp refuses it before any view runs: a plain-text 400 of its own, which must
    # not log a traceback either.
    line = f"GET /recommendations/{'x' * MAX_REQUEST_LINE_BYTES} HTTP/1.1\r\n"
    address = (worker.settings.web_host, worker.settings.web_port)
    with socket.create_connection(address, timeout=10) as conn:
        conn.sendall(line.encode() + b"Host: worker\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    assert reply.split(b" ", 2)[1] == b"400", reply[:200]
    assert_no_traceback(worker)
    assert "refused a bad HTTP request" in worker.log_path.read_text(errors="replace")


PAGES = {"/metrics", "/dashboard"}  # not JSON when found
ROUTES = ["/recommendations/{}", "/recommendations/{}?k={}", "/api/items/{}", "/{}", "/api/{}"]
# Any text, and the shapes most likely to slip through: digits of other scripts, ids
# around the length limit, signs, spaces and exponents.
texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["²", "①", "٣", "0", "-1", "+5", " 5", "5 ", "1e2", "0x10", "１０", "%", ".."]),
    st.integers(min_value=MAX_ID_CHARS - 2, max_value=MAX_ID_CHARS + 2).map(lambda n: "u" * n),
    st.integers(min_value=-5, max_value=MAX_PULL_K + 5).map(str),
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    route=st.sampled_from(ROUTES),
    first=texts,
    second=texts,
    method=st.sampled_from(["GET", "GET", "GET", "POST", "DELETE"]),
)
def test_fuzzed_requests_are_answered_or_refused_in_json(
    worker: Any, route: str, first: str, second: str, method: str
) -> None:
    path = route.format(quote(first, safe=""), quote(second, safe=""))
    status, content_type, body = request(worker, path, method)
    if status == 200 and path.split("?")[0] in PAGES:
        return
    assert_answered_or_refused_in_json(status, content_type, body)
    assert_no_traceback(worker)
