"""A/B variants by user over real sockets: a worker with STREAMREC_VARIANTS on the
embedded broker and Redis."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import pytest

from model.variants import arm_index
from stream.offline.experiment import report_from_topics
from tests.integration.test_pipeline import clicks, metric, recommendations_for, send

pytestmark = pytest.mark.integration


def test_each_user_gets_its_variants_lists_and_each_variant_is_scored_apart(
    worker_factory: Any,
) -> None:
    experiment = f"exp-{uuid.uuid4().hex[:6]}"
    started = worker_factory(variants="torch:1,covisit:1", experiment=experiment, dim=16)
    settings = started.settings
    events = clicks(300, uuid.uuid4().hex[:6], users=24, items=30, seed=11)
    send(settings, events)
    recs = {
        r.source_event_id: r for r in recommendations_for(settings, {e["event_id"] for e in events})
    }
    names = ("torch", "covisit")
    previous: dict[str, list[str]] = {}
    served: Counter[str] = Counter()
    predictions: Counter[str] = Counter()
    hits: Counter[str] = Counter()
    for event in events:
        rec = recs[event["event_id"]]
        variant = names[arm_index(event["user_id"], experiment, [1, 1])]
        assert rec.variant == variant
        assert rec.model_version.startswith("torch-gru-16d" if variant == "torch" else "covisit")
        served[variant] += 1
        shown = previous.get(event["user_id"])
        if shown:
            predictions[variant] += 1
            hits[variant] += event["item_id"] in shown
        previous[event["user_id"]] = [i.item_id for i in rec.items]
    assert served["torch"] and served["covisit"], served
    url = started.metrics_url
    for name in names:
        label = f'{{variant="{name}"}}'
        assert metric(url, f"streamrec_variant_recommendations_total{label}") == served[name]
        assert metric(url, f"streamrec_variant_predictions_total{label}") == predictions[name]
        assert metric(url, f"streamrec_variant_hits_total{label}") == hits[name]
        assert (
            metric(url, f"streamrec_variant_click_to_recommendation_seconds_count{label}")
            == (served[name])
        )
    assert metric(url, "streamrec_online_predictions_total") == sum(predictions.values())
    # `streamrec experiment report` reads the same stream from the topics: its figures
    # per variant are the worker's live ones.
    report = report_from_topics(settings, resamples=200)
    for name in names:
        label = f'{{variant="{name}"}}'
        arm = report["variants"][name]
        assert arm["clicks_scored"] == metric(url, f"streamrec_variant_predictions_total{label}")
        assert arm["hr"] * arm["clicks_scored"] == pytest.approx(
            metric(url, f"streamrec_variant_hits_total{label}")
        )
        assert arm["mrr"] * arm["clicks_scored"] == pytest.approx(
            metric(url, f"streamrec_variant_reciprocal_rank_total{label}")
        )
