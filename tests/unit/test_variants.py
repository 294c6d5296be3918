"""A/B variants by user (model/variants.py) and how the worker's click path serves,
tags and scores them (stream/worker/pipeline.py). The Recommender contract runs on
experiments in test_model_contract.py."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import orjson
import pytest

from model import Interaction, UserContext, build_recommender
from model.variants import Arm, Variants, arm_index, parse_variants, variant_name, variants
from stream.metrics import WorkerMetrics
from stream.settings import Settings, SettingsError
from stream.worker.pipeline import Accepted, ClickProcessor
from tests.unit.test_model_contract import generate_events


def experiment(*names: str, weights: tuple[int, ...] = (), salt: str = "test") -> Variants:
    weights = weights or (1,) * len(names)
    arms = [
        Arm(name, build_recommender(name, dim=8, seed=1), weight)
        for name, weight in zip(names, weights, strict=True)
    ]
    return variants(arms, salt=salt)


def test_the_split_follows_the_weights_and_the_salt():
    users = [f"user-{n}" for n in range(20_000)]
    counts = Counter(arm_index(user, "exp-1", [90, 10]) for user in users)
    assert abs(counts[1] / len(users) - 0.10) < 0.01, counts
    again = [arm_index(user, "exp-1", [90, 10]) for user in users]
    assert again == [arm_index(user, "exp-1", [90, 10]) for user in users]
    reshuffled = [arm_index(user, "exp-2", [50, 50]) for user in users]
    before = [arm_index(user, "exp-1", [50, 50]) for user in users]
    moved = sum(a != b for a, b in zip(before, reshuffled, strict=True)) / len(users)
    assert 0.45 < moved < 0.55, "a new salt reassigns about half the users of two arms"


def test_the_split_is_the_same_in_another_process():
    # Not Python's hash(), which is salted per process (PYTHONHASHSEED).
    code = (
        "from model.variants import arm_index;"
        "print([arm_index(f'u{n}', 's', [1, 1, 1]) for n in range(50)])"
    )
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123"},
    )
    assert orjson.loads(other.stdout) == [arm_index(f"u{n}", "s", [1, 1, 1]) for n in range(50)]


def test_each_user_is_served_by_its_arm_and_every_arm_learns_every_click():
    events = generate_events(300, seed=5)
    model = experiment("popularity", "covisit")
    alone = {name: build_recommender(name) for name in ("popularity", "covisit")}
    contexts: dict[str, UserContext] = {}
    solo: dict[str, dict[str, UserContext]] = {name: {} for name in alone}
    for event in events:
        contexts[event.user_id] = model.learn_one(
            contexts.get(event.user_id, model.new_context()), event
        ).context
        for name, other in alone.items():
            before = solo[name].get(event.user_id, other.new_context())
            solo[name][event.user_id] = other.learn_one(before, event).context
    served = Counter()
    for user, context in contexts.items():
        arm = model.served(context)
        assert arm is model.arms[arm_index(user, "test", [1, 1])]
        served[arm.name] += 1
        # What the arm alone would rank after the same stream: it learned every click.
        expected = alone[arm.name].recommend(solo[arm.name][user], 10, exclude=context.recent)
        assert model.recommend(context, 10, exclude=context.recent) == expected
    assert served["popularity"] and served["covisit"]
    for arm in model.arms:
        assert arm.model.state_dict() == alone[arm.name].state_dict()


def test_a_state_of_another_layout_starts_every_arm_afresh():
    model = experiment("covisit", "torch")
    torch_only = build_recommender("torch", dim=8, seed=1)
    foreign = torch_only.learn_one(UserContext(), Interaction("u", "a", 1.0)).context
    update = model.learn_one(foreign, Interaction("u", "b", 2.0))
    assert update.context.recent == ("a", "b")
    assert update.context.clicks == 2
    arms, served = update.context.state[:2]
    assert (arms, served) == (2, arm_index("u", "test", [1, 1]))


def test_updates_carry_the_primary_arms_vectors():
    model = experiment("covisit", "torch")
    assert model.primary == 1
    context = model.new_context()
    for t, item in enumerate(["a", "b", "c"]):
        update = model.learn_one(context, Interaction("u", item, float(t)))
        context = update.context
    assert update.user_vector is not None and update.user_vector.shape == (8,)
    assert set(update.item_changes) <= {"b", "c"} and update.item_changes
    assert model.item_vector("c").shape == (8,)


def test_variants_parse_and_name_themselves():
    assert parse_variants("torch:90, covisit:10") == [("torch", 90), ("covisit", 10)]
    assert parse_variants("/ckpt/a:b.safetensors:3") == [("/ckpt/a:b.safetensors", 3)]
    for bad in ("torch", "torch:0", "torch:-1", ":5", "torch:1.5", "torch:90,"):
        with pytest.raises(ValueError, match="MODEL_OR_CHECKPOINT:WEIGHT"):
            parse_variants(bad)
    assert variant_name("covisit") == "covisit"
    assert variant_name("/models/gru-v2.safetensors") == "gru-v2"
    with pytest.raises(ValueError, match="share a name"):
        experiment("covisit", "covisit")


def test_settings_refuse_variants_that_cannot_run(tmp_path):
    assert Settings(variants="torch:90,covisit:10").variants
    with pytest.raises(SettingsError, match="STREAMREC_VARIANTS: 'gru' is neither a model"):
        Settings(variants="gru:50,covisit:50")
    with pytest.raises(SettingsError, match="not both"):
        Settings(variants="covisit:1", checkpoint=str(tmp_path / "x.safetensors"))
    a, b = tmp_path / "one" / "m.safetensors", tmp_path / "two" / "m.safetensors"
    for path in (a, b):
        path.parent.mkdir()
        path.write_bytes(b"x")
    with pytest.raises(SettingsError, match="named alike"):
        Settings(variants=f"{a}:1,{b}:1")


def click_batch(events: list[Interaction], first: int) -> list[Accepted]:
    from stream.events import Click

    return [
        Accepted(
            Click(e.user_id, e.item_id, e.timestamp), e.user_id.encode(), f"e{n}", clicked_at=None
        )
        for n, e in enumerate(events, start=first)
    ]


def test_the_worker_tags_and_scores_each_click_by_its_users_variant():
    model = experiment("popularity", "covisit", weights=(1, 3))
    metrics = WorkerMetrics()
    processor = ClickProcessor(
        model, None, metrics, top_k=5, exclude="seen", dedup_window=8, batched=True
    )
    events = generate_events(400, seed=9)
    records: dict[bytes, object] = {}
    tagged: Counter[str] = Counter()
    shown: dict[str, set[str]] = {"popularity": set(), "covisit": set()}
    for start in range(0, len(events), 50):
        outcome = processor.process_batch(
            click_batch(events[start : start + 50], start), records.get
        )
        records.update(outcome.records)
        for value, accepted in zip(outcome.values, outcome.applied, strict=True):
            event = orjson.loads(value)
            arm = model.arms[arm_index(accepted.click.user_id, "test", [1, 3])]
            assert event["variant"] == arm.name
            assert event["model_version"] == arm.model.version
            tagged[arm.name] += 1
            shown[arm.name].update(item["item_id"] for item in event["items"])
    registry = metrics.registry
    for name in ("popularity", "covisit"):
        assert registry.get_sample_value(
            "streamrec_variant_recommendations_total", {"variant": name}
        ) == float(tagged[name])
    predictions = [
        registry.get_sample_value("streamrec_variant_predictions_total", {"variant": name})
        for name in ("popularity", "covisit")
    ]
    assert sum(predictions) == registry.get_sample_value("streamrec_online_predictions_total")
    assert all(predictions)
    # Coverage is a share of every clicked item (the window of 1000 holds every list).
    clicked = {e.item_id for e in events}
    for name, items in shown.items():
        coverage = registry.get_sample_value("streamrec_variant_coverage", {"variant": name})
        assert coverage == pytest.approx(len(items) / len(clicked))
    # The pull API answers a user it never saw with that user's variant.
    newcomer = next(f"new-{n}" for n in range(100) if arm_index(f"new-{n}", "test", [1, 3]) == 0)
    answer = processor.answer(newcomer, None, 5)
    assert answer.variant == "popularity" and len(answer.items) == 5
