"""The live page in a real headless Chromium against a real worker.

It must draw from live data (polls counted, chart points, the consumed count the worker
reports), list the latest recommendations, and fetch nothing from anywhere but the
worker. A full-page screenshot is left in test-artifacts/dashboard.png for people.

Needs Debian's `chromium` and `chromium-driver` (.ci/run installs them where it can) and
the `selenium` package; skips when any is missing.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from stream.dev.generate import synthetic_clicks
from stream.kafka.producer import replay
from stream.settings import Settings

pytestmark = pytest.mark.integration

SCREENSHOT = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard.png"
# docs/embedded-broker.md: without the background-networking flags Chromium floods the
# closed network with refused connections. The resolver rule makes any host but loopback
# unresolvable, so a stray external URL fails here instead of leaving the machine; the
# performance log still records the attempt, which the test checks.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--window-size=1280,900",
)
# Self-contained: no absolute URL anywhere in the file, no protocol-relative reference.
EXTERNAL_REFERENCE = re.compile(
    r"""\b(?:https?|wss?|ftp):|(?:src|href|action)\s*=\s*["']?//|url\(\s*["']?//|@import"""
)
# What the page reports about itself; see the comment at the top of dashboard.html.
PAGE_STATE = """
const get = id => {
  const el = document.querySelector(`[data-testid="${id}"]`);
  return el ? (el.dataset.value !== undefined ? el.dataset.value : el.textContent) : null;
};
return {
  samples: Number(document.body.dataset.samples || 0),
  status: get("status"), model: get("model"), version: get("model-version"),
  consumed: get("consumed"), emitted: get("emitted"),
  hit_rate: get("hit-rate"), p99_window: get("p99-window"),
  throughput_points: Number(get("chart-throughput-points")),
  latency_points: Number(get("chart-latency-points")),
  quality_points: Number(get("chart-quality-points")),
  users: [...document.querySelectorAll('[data-testid="recent-row"] td:nth-child(2)')]
    .map(td => td.textContent),
};
"""


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    binary, driver_path = chromium_binary(), shutil.which("chromedriver")
    if binary is None:
        pytest.skip("no chromium binary (Debian package `chromium`)")
    if driver_path is None:
        pytest.skip("no chromedriver (Debian package `chromium-driver`)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    # An explicit driver path: Selenium Manager, which would try to download one, never runs.
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def clicks(n: int, tag: str, seed: int) -> list[dict[str, Any]]:
    events = list(synthetic_clicks(n, users=30, items=60, seed=seed))
    for event in events:
        event["user_id"] = f"{tag}-{event['user_id']}"
        event["event_id"] = f"{tag}-{seed}-{event['event_id']}"
        event["timestamp"] = time.time()
    return events


def send(settings: Settings, events: list[dict[str, Any]], rate: float = 0.0) -> None:
    replay(
        events,
        bootstrap_servers=settings.bootstrap_servers,
        topic=settings.clicks_topic,
        rate=rate,
        progress=False,
    )


def scrape(url: str) -> dict[str, float]:
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    samples = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def wait_until(
    read: Callable[[], dict[str, Any]],
    done: Callable[[dict[str, Any]], bool],
    timeout_s: float = 45.0,
) -> dict[str, Any]:
    """Poll `read` until `done` holds or the time is up; returns the last state either way,
    so the asserts that follow say what was missing."""
    deadline = time.monotonic() + timeout_s
    state = read()
    while not done(state) and time.monotonic() < deadline:
        time.sleep(0.25)
        state = read()
    return state


def test_the_live_page_draws_live_data_and_fetches_only_from_the_worker(
    worker_factory: Any, browser: Any
) -> None:
    worker = worker_factory()
    settings = worker.settings
    origin = f"127.0.0.1:{settings.web_port}"
    tag = uuid.uuid4().hex[:6]
    first, second = clicks(200, tag, seed=11), clicks(300, tag, seed=12)
    total = len(first) + len(second)

    html = urllib.request.urlopen(f"http://{origin}/dashboard", timeout=5).read().decode()
    assert not EXTERNAL_REFERENCE.search(html), EXTERNAL_REFERENCE.search(html)

    send(settings, first)
    browser.get(f"http://{origin}/dashboard")

    def page() -> dict[str, Any]:
        return browser.execute_script(PAGE_STATE)

    wait_until(page, lambda s: s["samples"] >= 1, timeout_s=15)
    # The second batch flows for about 4 s while the page polls, so the charts have
    # several intervals with traffic to draw.
    send(settings, second, rate=75)
    wait_until(
        lambda: scrape(worker.metrics_url),
        lambda m: m.get("streamrec_recommendations_emitted_total") == total,
    )
    try:
        state = wait_until(
            page,
            lambda s: (
                # Emitted last: a scrape with every recommendation counted has every
                # click's quality scored too (consumed is counted before processing).
                s["samples"] >= 6
                and s["emitted"] == str(total)
                and s["latency_points"] > 0
                and s["users"] != []
            ),
        )
    finally:
        # The whole page: the window is the document plus the browser's own frame.
        height = browser.execute_script(
            "return document.documentElement.scrollHeight + outerHeight - innerHeight"
        )
        browser.set_window_size(1280, height)
        SCREENSHOT.parent.mkdir(exist_ok=True)
        browser.save_screenshot(str(SCREENSHOT))

    metrics = scrape(worker.metrics_url)
    assert metrics["streamrec_events_consumed_total"] == total
    assert state["samples"] >= 3, state
    assert state["status"] == "ready"
    (info,) = [name for name in metrics if name.startswith("streamrec_model_info{")]
    assert f'model="{state["model"]}"' in info and f'version="{state["version"]}"' in info
    # The page parsed the exposition to the same numbers the worker reports.
    assert float(state["consumed"]) == float(state["emitted"]) == total
    assert float(state["hit_rate"]) == pytest.approx(metrics["streamrec_online_hit_rate"])
    assert state["throughput_points"] > 0 and state["quality_points"] > 0
    assert state["latency_points"] > 0 and state["p99_window"] != "—", state
    assert 0 < len(state["users"]) <= 20
    assert all(user.startswith(f"{tag}-") for user in state["users"]), state["users"]

    requested = {
        json.loads(entry["message"])["message"]["params"]["request"]["url"]
        for entry in browser.get_log("performance")
        if '"Network.requestWillBeSent"' in entry["message"]
    }
    # chrome:// is the browser's own UI (the blank tab before navigation), not the network.
    outside = {
        url
        for url in requested
        if urlsplit(url).scheme not in ("data", "chrome") and urlsplit(url).netloc != origin
    }
    assert not outside, f"the page requested something outside the worker: {outside}"
    paths = {urlsplit(url).path for url in requested}
    assert {"/dashboard", "/metrics", "/api/recent"} <= paths
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_the_page_parses_the_exposition_and_estimates_quantiles_like_prometheus(
    browser: Any,
) -> None:
    # The page's own functions, on known answers; no worker needed (its polls just fail).
    page = Path(__file__).resolve().parents[2] / "stream" / "static" / "dashboard.html"
    browser.get(page.as_uri())
    parsed = browser.execute_script(r"""
      return parseExposition('# HELP a_total A.\na_total 3.0\n'
        + 'b_bucket{x="q\\"uo,te}",le="+Inf"} 7 1700000000\nc NaN\n')
        .map(s => [s.name, s.labels, String(s.value)]);
    """)
    assert parsed == [
        ["a_total", {}, "3"],
        ["b_bucket", {"x": 'q"uo,te}', "le": "+Inf"}, "7"],
        ["c", {}, "NaN"],
    ]
    # histogram_quantile interpolates linearly inside the bucket holding the rank, and
    # answers the highest finite bound when the rank falls in +Inf.
    buckets = "[[0.01, 2], [0.02, 6], [0.05, 10], [Infinity, 10]]"
    tail = "[[0.1, 5], [Infinity, 10]]"
    got = browser.execute_script(f"""
      return [quantile(0.5, {buckets}), quantile(0.99, {buckets}),
              quantile(0.5, {tail}), quantile(0.99, {tail}), quantile(0.5, [[Infinity, 0]])];
    """)
    assert got[:4] == pytest.approx([0.0175, 0.04925, 0.1, 0.1])
    assert got[4] is None, "no observations, no quantile"


VARIANT_ROWS = """
return [...document.querySelectorAll('[data-testid^="variant-"]')]
  .filter(tr => tr.tagName === "TR")
  .map(tr => [tr.dataset.testid.slice("variant-".length),
              ...[...tr.querySelectorAll("td")].map(td => td.dataset.value)]);
"""


def test_the_live_page_shows_a_row_per_variant(worker_factory: Any, browser: Any) -> None:
    worker = worker_factory(variants="popularity:1,covisit:3", experiment="page")
    settings = worker.settings
    events = clicks(300, uuid.uuid4().hex[:6], seed=13)
    send(settings, events)
    wait_until(
        lambda: scrape(worker.metrics_url),
        lambda m: m.get("streamrec_recommendations_emitted_total") == len(events),
    )
    browser.get(f"http://127.0.0.1:{settings.web_port}/dashboard")
    rows = wait_until(
        lambda: {"rows": browser.execute_script(VARIANT_ROWS)},
        lambda s: sum(float(row[2]) for row in s["rows"] if row[2]) == len(events),
        timeout_s=15,
    )["rows"]
    browser.set_window_size(1280, 1400)
    browser.save_screenshot(str(SCREENSHOT.with_name("dashboard-variants.png")))
    metrics = scrape(worker.metrics_url)
    assert sorted(row[0] for row in rows) == ["covisit", "popularity"]
    for name, _, served, scored, hit_rate, mrr, coverage, _ in rows:
        label = f'{{variant="{name}"}}'
        assert float(served) == metrics[f"streamrec_variant_recommendations_total{label}"]
        predictions = metrics[f"streamrec_variant_predictions_total{label}"]
        assert float(scored) == predictions > 0
        hits = metrics[f"streamrec_variant_hits_total{label}"]
        assert float(hit_rate) == pytest.approx(hits / predictions)
        reciprocal = metrics[f"streamrec_variant_reciprocal_rank_total{label}"]
        assert float(mrr) == pytest.approx(reciprocal / predictions)
        assert float(coverage) == pytest.approx(metrics[f"streamrec_variant_coverage{label}"])
