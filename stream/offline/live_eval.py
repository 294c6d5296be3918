"""The offline protocols run through the live pipeline instead of in process.

A worker on the embedded broker and Redis starts from a checkpoint (top-K = max K, and
the exclusion policy asked for); the events are produced to `clicks` keyed by user in
time order; and what the worker emitted is scored. So what is measured is the streaming
system itself: decoding, routing, the user table, the FAISS index and the
recommendation topic, not only the model.

- session-split: the model is trained on the training file exactly as `streamrec train`
  does; each recommendation event after a test click is scored against the session's
  next click.
- last-out: a fresh model; every event but each user's last is produced; the last
  recommendation event emitted for each user (the list after their last training
  click) is scored against the held-out item (`<model>@kafka`), and so is the pull
  API's answer for the user once the stream has drained (`<model>@kafka-pull`: the
  ranking as the model stands at the end, like the in-process protocol's).
- prequential: a fresh model; every event is produced and each one that followed an
  earlier event of the same user is scored against the list emitted after that one
  (the list the user was looking at), as the worker's live hit rate is; a user's first
  event had no list and is not scored (in process it is scored against the cold-start
  list), so `predictions` is the events minus the users.

The figures should match the in-process protocols within noise. They are not identical
by construction: the worker applies the partitions' clicks interleaved in arrival order,
not in one global time order, so item representations are updated in a slightly
different order than in the in-process replay.
"""

from __future__ import annotations

import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from model.base import Interaction, Recommender
from model.baselines import DEFAULT_HALF_LIFE_S
from model.checkpoint import save_checkpoint
from model.evaluation import RankingMetrics, held_out_positions, next_clicks, time_ordered
from model.registry import build_recommender
from model.transitions import DEFAULT_SESSION_GAP_S
from stream.dev.harness import scrape_metric, start_worker, wait_for
from stream.dev.services import free_port, running_stack, stop
from stream.events import Recommendation
from stream.kafka.consumer import make_consumer
from stream.kafka.producer import replay
from stream.kafka.topics import ensure_topics, worker_topics
from stream.offline.train import learn
from stream.settings import Settings


def session_split_through_kafka(
    model_name: str,
    train: Sequence[Interaction],
    test: Sequence[Interaction],
    ks: Sequence[int],
    *,
    dim: int = 64,
    seed: int = 0,
    half_life_s: float = DEFAULT_HALF_LIFE_S,
    session_gap_s: float = DEFAULT_SESSION_GAP_S,
    exclude: str = "none",
    progress: bool = False,
) -> dict[str, Any]:
    """Train, serve from the checkpoint, stream `test`, score the emitted events.

    Returns the same keys as the in-process protocols (HR@K, MRR@K, NDCG@K, coverage,
    predictions, seconds, events_per_s), where seconds covers the test stream only.
    """
    metrics = RankingMetrics(ks)
    # The checkpoint carries the half-life and the session gap to the worker.
    model = build_recommender(
        model_name, dim=dim, seed=seed, half_life_s=half_life_s, session_gap_s=session_gap_s
    )
    learn(model, time_ordered(train), {})
    for event in train:
        metrics.see(event.item_id)
    test = time_ordered(test)
    with _live_worker(model, dim, metrics.max_k, exclude) as settings:
        seconds = _stream(settings, test, progress)
        lists = _read_lists(settings, len(test))
    following = next_clicks(test)
    for n, event in enumerate(test):
        metrics.see(event.item_id)
        target = following[n]
        if target is not None:
            metrics.add(lists.get(_event_id(n), []), target)
    return _summary(metrics, seconds, len(test), len(lists))


def last_out_through_kafka(
    model_name: str,
    events: Sequence[Interaction],
    ks: Sequence[int],
    *,
    dim: int = 64,
    seed: int = 0,
    half_life_s: float = DEFAULT_HALF_LIFE_S,
    session_gap_s: float = DEFAULT_SESSION_GAP_S,
    exclude: str = "seen",
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Stream all but each user's last event into a fresh model's worker; score the
    last list emitted per user and the pull API's answer at the end against the
    held-out items. Returns {"emitted": metrics, "pull": metrics}."""
    ordered = time_ordered(events)
    held_out = held_out_positions(ordered)
    training = [(n, e) for n, e in enumerate(ordered) if n not in held_out]
    emitted, pulled = RankingMetrics(ks), RankingMetrics(ks)
    model = build_recommender(
        model_name, dim=dim, seed=seed, half_life_s=half_life_s, session_gap_s=session_gap_s
    )
    with _live_worker(model, dim, emitted.max_k, exclude) as settings:
        seconds = _stream(settings, [e for _, e in training], progress)
        lists = _read_lists(settings, len(training))
        last_training: dict[str, str] = {}  # user -> event id of their last training click
        for n, (_, event) in enumerate(training):
            last_training[event.user_id] = _event_id(n)
            emitted.see(event.item_id)
            pulled.see(event.item_id)
        for position in sorted(held_out):
            event = ordered[position]
            emitted.add(lists.get(last_training[event.user_id], []), event.item_id)
            pulled.add(_pull(settings, event.user_id, pulled.max_k), event.item_id)
    return {
        "emitted": _summary(emitted, seconds, len(training), len(lists)),
        "pull": _summary(pulled, seconds, len(training), len(lists)),
    }


def prequential_through_kafka(
    model_name: str,
    events: Sequence[Interaction],
    ks: Sequence[int],
    *,
    dim: int = 64,
    seed: int = 0,
    half_life_s: float = DEFAULT_HALF_LIFE_S,
    session_gap_s: float = DEFAULT_SESSION_GAP_S,
    exclude: str = "seen",
    progress: bool = False,
) -> dict[str, Any]:
    """Stream every event into a fresh model's worker; score each against the list
    emitted after the same user's previous event (a user's first is not scored)."""
    ordered = time_ordered(events)
    metrics = RankingMetrics(ks)
    model = build_recommender(
        model_name, dim=dim, seed=seed, half_life_s=half_life_s, session_gap_s=session_gap_s
    )
    with _live_worker(model, dim, metrics.max_k, exclude) as settings:
        seconds = _stream(settings, ordered, progress)
        lists = _read_lists(settings, len(ordered))
    previous: dict[str, str] = {}
    for n, event in enumerate(ordered):
        shown = previous.get(event.user_id)
        if shown is not None:
            metrics.add(lists.get(shown, []), event.item_id)
        metrics.see(event.item_id)
        previous[event.user_id] = _event_id(n)
    return _summary(metrics, seconds, len(ordered), len(lists))


@contextmanager
def _live_worker(model: Recommender, dim: int, top_k: int, exclude: str) -> Iterator[Settings]:
    """A worker serving `model` (saved as its checkpoint) on a fresh embedded stack."""
    with (
        tempfile.TemporaryDirectory(prefix="streamrec-live-eval-") as tmp,
        running_stack(Path(tmp) / "services") as stack,
    ):
        checkpoint = Path(tmp) / "model.safetensors"
        save_checkpoint(model, checkpoint)
        settings = Settings.from_env(
            {},
            bootstrap_servers=stack.bootstrap_servers,
            redis_url=stack.redis_url,
            web_port=free_port(),
            checkpoint=str(checkpoint),
            dim=dim,
            top_k=top_k,
            exclude=exclude,
            data_dir=str(Path(tmp) / "worker"),
        )
        ensure_topics(settings.bootstrap_servers, worker_topics(settings), settings.partitions)
        worker = start_worker(settings, Path(tmp) / "worker.log")
        try:
            yield settings
        finally:
            stop(worker, timeout=15)


def _event_id(n: int) -> str:
    return f"eval-{n}"


def _stream(
    settings: Settings,
    events: Sequence[Interaction],
    progress: bool,
    stall_timeout_s: float = 120.0,
) -> float:
    """Produce `events` in order (event ids `_event_id(n)`), wait until the worker has
    emitted a recommendation for each (or emitted nothing new for `stall_timeout_s`);
    the seconds that took."""
    started = time.monotonic()
    payloads = [
        {
            "user_id": e.user_id,
            "item_id": e.item_id,
            "timestamp": e.timestamp,
            "session_id": e.user_id,
            "event_id": _event_id(n),
        }
        for n, e in enumerate(events)
    ]
    replay(
        payloads,
        bootstrap_servers=settings.bootstrap_servers,
        topic=settings.clicks_topic,
        total=len(payloads),
        progress=progress,
    )
    url = f"http://{settings.web_host}:{settings.web_port}/metrics"
    wait_for(
        lambda: int(scrape_metric(url, "streamrec_recommendations_emitted_total") or 0),
        len(payloads),
        stall_timeout_s,
        progress,
    )
    return time.monotonic() - started


def _read_lists(settings: Settings, expected: int) -> dict[str, list[str]]:
    """source_event_id -> recommended item ids, read from the recommendations topic."""
    lists: dict[str, list[str]] = {}
    consumer = make_consumer(
        settings.bootstrap_servers, [settings.recommendations_topic], idle_timeout_s=2.0
    )
    try:
        for record in consumer:
            rec = Recommendation.from_json(record.value)
            lists.setdefault(rec.source_event_id, [item.item_id for item in rec.items])
            if len(lists) >= expected:
                break
    finally:
        consumer.close()
    return lists


def _pull(settings: Settings, user_id: str, k: int) -> list[str]:
    """The pull API's answer for `user_id`: item ids, best first."""
    user = urllib.parse.quote(user_id, safe="")
    url = f"http://{settings.web_host}:{settings.web_port}/recommendations/{user}?k={k}"
    with urllib.request.urlopen(url, timeout=30) as response:
        body = orjson.loads(response.read())
    return [item["item_id"] for item in body["items"]]


def _summary(
    metrics: RankingMetrics, seconds: float, events: int, recommendations: int
) -> dict[str, Any]:
    result = metrics.summary()
    result["seconds"] = seconds
    result["events_per_s"] = events / seconds if seconds else 0.0
    result["recommendation_events"] = recommendations
    return result
