"""The session-split protocol run through the live pipeline instead of in process.

The model is trained on the training file exactly as `streamrec train` does and saved
as a checkpoint; a worker on the embedded broker and Redis starts from it (with no
exclusions and top-K = max K, as the protocol asks); the test clicks are produced to
`clicks` keyed by session in time order; and each recommendation event the worker
emits after a click is scored against the session's next click. So what is measured
is the streaming system itself: decoding, routing, the user table, the FAISS index and
the recommendation topic, not only the model.

The figures should match `model.evaluation.session_split` within noise. They are not
identical by construction: the worker applies the partitions' clicks interleaved in
arrival order, not in one global time order, so item representations are updated in a
slightly different order than in the in-process replay.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from model.base import Interaction
from model.baselines import DEFAULT_HALF_LIFE_S
from model.checkpoint import save_checkpoint
from model.evaluation import RankingMetrics, next_clicks, time_ordered
from model.registry import build_recommender
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
    progress: bool = False,
    drain_timeout_s: float = 120.0,
) -> dict[str, Any]:
    """Train, serve from the checkpoint, stream `test`, score the emitted events.

    Returns the same keys as the in-process protocols (HR@K, MRR@K, NDCG@K, coverage,
    predictions, seconds, events_per_s), where seconds covers the test stream only.
    """
    metrics = RankingMetrics(ks)
    # The checkpoint carries the half-life to the worker (popularity state holds it).
    model = build_recommender(model_name, dim=dim, seed=seed, half_life_s=half_life_s)
    learn(model, time_ordered(train), {})
    for event in train:
        metrics.see(event.item_id)
    test = time_ordered(test)
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
            top_k=metrics.max_k,
            exclude="none",
            data_dir=str(Path(tmp) / "worker"),
        )
        ensure_topics(settings.bootstrap_servers, worker_topics(settings), settings.partitions)
        worker = start_worker(settings, Path(tmp) / "worker.log")
        try:
            started = time.monotonic()
            payloads = [
                {
                    "user_id": e.user_id,
                    "item_id": e.item_id,
                    "timestamp": e.timestamp,
                    "session_id": e.user_id,
                    "event_id": f"test-{n}",
                }
                for n, e in enumerate(test)
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
                drain_timeout_s,
                progress,
            )
            seconds = time.monotonic() - started
            lists = _read_lists(settings, len(payloads))
        finally:
            stop(worker, timeout=15)
    following = next_clicks(test)
    for n, event in enumerate(test):
        metrics.see(event.item_id)
        target = following[n]
        if target is not None:
            metrics.add(lists.get(f"test-{n}", []), target)
    result = metrics.summary()
    result["seconds"] = seconds
    result["events_per_s"] = len(test) / seconds if seconds else 0.0
    result["recommendation_events"] = len(lists)
    return result


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
