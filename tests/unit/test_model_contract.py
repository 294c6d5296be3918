"""The `Recommender` contract, run against every model in the registry.

Like river's `check_estimator`: each `check_*` takes a factory for fresh models and a
stream of generated events, and asserts one clause of the contract in
`model/base.py`. Adding a model to `MODEL_NAMES` runs all of them on it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import random
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

import numpy as np
import pytest
import torch

from model import (
    MODEL_NAMES,
    ExactIndex,
    Interaction,
    Recommender,
    Scored,
    TorchRecommender,
    UserContext,
    build_recommender,
)
from model.content import ContentAware, ItemContent
from model.variants import Arm, Variants, variants

Factory = Callable[[], Recommender]


def generate_events(n: int, *, seed: int, users: int = 25, items: int = 60) -> list[Interaction]:
    """Sessions of Zipf-popular items: enough structure for every model to learn."""
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) for rank in range(items)]
    catalogue = [f"item-{j}" for j in range(items)]
    t = 1_700_000_000.0
    events = []
    for _ in range(n):
        t += rng.expovariate(1.0)
        user = f"user-{rng.randrange(users)}"
        item = rng.choices(catalogue, weights)[0]
        events.append(Interaction(user, item, t))
    return events


def feed(
    model: Recommender,
    events: Iterable[Interaction],
    contexts: dict[str, UserContext] | None = None,
) -> dict[str, UserContext]:
    contexts = {} if contexts is None else contexts
    for event in events:
        context = contexts.get(event.user_id, model.new_context())
        contexts[event.user_id] = model.learn_one(context, event).context
    return contexts


def recommend_all(
    model: Recommender, contexts: dict[str, UserContext], k: int = 10
) -> dict[str, list[Scored]]:
    return {
        user: model.recommend(ctx, k, exclude=ctx.recent[-3:]) for user, ctx in contexts.items()
    }


# The checks.


def check_is_a_recommender(make: Factory, events: list[Interaction]) -> None:
    model = make()
    assert isinstance(model, Recommender)
    assert model.name in (*MODEL_NAMES, "variants")
    version = model.version
    feed(model, events[:50])
    assert model.version == version, "the version must not change while learning"


def check_learn_one_does_not_mutate_its_inputs(make: Factory, events: list[Interaction]) -> None:
    model = make()
    contexts = feed(model, events[:-50])
    for event in events[-50:]:
        context = contexts.get(event.user_id, model.new_context())
        before = (dataclasses.replace(context), context.to_dict(), dataclasses.replace(event))
        update = model.learn_one(context, event)
        assert (context, context.to_dict(), event) == before
        assert update.context is not context
        contexts[event.user_id] = update.context


def check_update_does_not_alias_model_state(make: Factory, events: list[Interaction]) -> None:
    # The worker hands these arrays to Redis and FAISS; writing to them must not
    # change the model.
    model = make()
    contexts = feed(model, events)
    before = recommend_all(model, contexts)
    event = events[-1]
    update = model.learn_one(contexts[event.user_id], event)
    after = recommend_all(model, contexts)
    for vector in update.item_vectors.values():
        assert vector.dtype == np.float32
        vector[:] = 1e6
    if update.user_vector is not None:
        update.user_vector[:] = 1e6
    assert recommend_all(model, contexts) == after
    assert before.keys() == after.keys()


def check_seeded_determinism(make: Factory, events: list[Interaction]) -> None:
    first, second = make(), make()
    contexts_a, contexts_b = feed(first, events), feed(second, events)
    assert contexts_a == contexts_b
    assert recommend_all(first, contexts_a) == recommend_all(second, contexts_b)


def check_state_dict_round_trip(make: Factory, events: list[Interaction]) -> None:
    half = len(events) // 2
    original = make()
    contexts = feed(original, events[:half])
    # Through torch.save/torch.load(weights_only=True): what a checkpoint file will do.
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    restored = make()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert recommend_all(restored, contexts) == recommend_all(original, contexts)
    # Learning continues identically too (weights, optimiser state, random stream).
    contexts_a = feed(original, events[half:], dict(contexts))
    contexts_b = feed(restored, events[half:], dict(contexts))
    assert contexts_a == contexts_b
    assert recommend_all(restored, contexts_b) == recommend_all(original, contexts_a)


def check_state_dict_is_a_snapshot(make: Factory, events: list[Interaction]) -> None:
    model = make()
    contexts = feed(model, events[:100])
    state = model.state_dict()
    expected = recommend_all(model, contexts)
    feed(model, events[100:])
    restored = make()
    restored.load_state_dict(state)
    assert recommend_all(restored, contexts) == expected


def check_excluded_ids_never_returned(make: Factory, events: list[Interaction]) -> None:
    model = make()
    contexts = feed(model, events)
    for context in contexts.values():
        best = [s.item_id for s in model.recommend(context, 5)]
        exclude = {*context.recent, *best, "never-seen"}
        results = model.recommend(context, 10, exclude=exclude)
        assert not {s.item_id for s in results} & exclude


def check_returns_k_when_k_are_known(make: Factory, events: list[Interaction]) -> None:
    model = make()
    contexts = feed(model, events)
    known = {e.item_id for e in events}
    if isinstance(model, ContentAware):  # items with content are candidates too
        known |= set(model.content_vectors(CONTENT_ITEMS))
    context = contexts[events[-1].user_id]
    exclude = set(context.recent)
    for k in (1, 10, len(known) - len(exclude), len(known) + 5):
        results = model.recommend(context, k, exclude=exclude)
        assert len(results) == min(k, len(known - exclude))
        assert len({s.item_id for s in results}) == len(results), "an id came back twice"
        assert {s.item_id for s in results} <= known
    assert model.recommend(context, 0) == []


def check_best_first(make: Factory, events: list[Interaction]) -> None:
    model = make()
    contexts = feed(model, events)
    for results in recommend_all(model, contexts, k=20).values():
        scores = [s.score for s in results]
        assert all(np.isfinite(scores))
        assert scores == sorted(scores, reverse=True)


def check_new_user_gets_k_items(make: Factory, events: list[Interaction]) -> None:
    model = make()
    first = model.recommend(model.new_context(), 5)
    if isinstance(model, ContentAware) and model.content_vectors(CONTENT_ITEMS):
        assert len(first) == 5, "a model given content knows its catalogue before clicks"
    else:
        assert first == [], "nothing is known yet"
    feed(model, events)
    results = model.recommend(model.new_context(), 10)
    assert len(results) == 10
    # And after one click, with that click excluded.
    update = model.learn_one(model.new_context(), Interaction("newcomer", "item-0", 2e9))
    results = model.recommend(update.context, 10, exclude={"item-0"})
    assert len(results) == 10 and "item-0" not in {s.item_id for s in results}


def check_context_json_round_trip(make: Factory, events: list[Interaction]) -> None:
    # Contexts live in a Faust table as JSON.
    model = make()
    contexts = feed(model, events)
    for context in contexts.values():
        decoded = UserContext.from_dict(json.loads(json.dumps(context.to_dict())))
        assert decoded == context
        assert model.recommend(decoded, 10) == model.recommend(context, 10)


def check_context_is_bounded(make: Factory, events: list[Interaction]) -> None:
    model = make()
    context = model.new_context()
    for event in events:
        context = model.learn_one(context, dataclasses.replace(event, user_id="one")).context
    assert context.clicks == len(events)
    assert context.recent[-1] == events[-1].item_id
    assert 1 <= len(context.recent) <= 50
    assert context.last_timestamp == max(e.timestamp for e in events)


def feed_in_batches(
    model: Recommender, events: list[Interaction], size: int
) -> dict[str, UserContext]:
    contexts: dict[str, UserContext] = {}
    for start in range(0, len(events), size):
        chunk = events[start : start + size]
        before = {e.user_id: contexts.get(e.user_id, model.new_context()) for e in chunk}
        updates = model.learn_many(before, chunk)
        assert len(updates) == len(chunk)
        for event, update in zip(chunk, updates, strict=True):
            contexts[event.user_id] = update.context
    return contexts


def check_batches_match_one_at_a_time(make: Factory, events: list[Interaction]) -> None:
    # Batches of 40 over 25 users: most users click several times per batch, so the
    # users' contexts have to be threaded through the batch (waves, for torch).
    one, batched = make(), make()
    contexts = feed(one, events)
    batch_contexts = feed_in_batches(batched, events, 40)
    assert batch_contexts.keys() == contexts.keys()
    users = sorted(contexts)
    excludes = [contexts[u].recent[-3:] for u in users]
    expected = [one.recommend(contexts[u], 10, ex) for u, ex in zip(users, excludes, strict=True)]
    got = batched.recommend_many([batch_contexts[u] for u in users], 10, excludes)
    # recommend_many is recommend, one context at a time, on the same model.
    assert got == [
        batched.recommend(batch_contexts[u], 10, ex) for u, ex in zip(users, excludes, strict=True)
    ]
    if not _batches_approximately(batched):
        # The default batch methods loop the one-event ones: exact.
        assert batch_contexts == contexts
        assert got == expected
        return
    # Torch takes one GRU step per wave and counts in wave order (its stated
    # approximation): the contexts' histories are exact, the GRU states differ, and
    # the lists agree on at least 80% of their items on average (all of them today).
    for user in users:
        a, b = contexts[user], batch_contexts[user]
        assert (a.recent, a.clicks, a.last_timestamp) == (b.recent, b.clicks, b.last_timestamp)
        assert len(a.state) == len(b.state) and np.all(np.isfinite(b.state))
    overlap = [
        len({s.item_id for s in x} & {s.item_id for s in y}) / max(len(x), 1)
        for x, y in zip(expected, got, strict=True)
    ]
    assert np.mean(overlap) >= 0.8, overlap


def _batches_approximately(model: Recommender) -> bool:
    """Whether the model's batch methods approximate the one-event ones (torch's waves)."""
    if isinstance(model, Variants):
        return any(_batches_approximately(arm.model) for arm in model.arms)
    return model.name == "torch"


def check_a_batch_of_one_is_learn_one(make: Factory, events: list[Interaction]) -> None:
    one, batched = make(), make()
    assert feed_in_batches(batched, events, 1) == feed(one, events)
    contexts = feed(one, [])
    assert recommend_all(batched, contexts) == recommend_all(one, contexts)


CHECKS = [
    check_is_a_recommender,
    check_learn_one_does_not_mutate_its_inputs,
    check_update_does_not_alias_model_state,
    check_seeded_determinism,
    check_state_dict_round_trip,
    check_state_dict_is_a_snapshot,
    check_excluded_ids_never_returned,
    check_returns_k_when_k_are_known,
    check_best_first,
    check_new_user_gets_k_items,
    check_context_json_round_trip,
    check_context_is_bounded,
    check_batches_match_one_at_a_time,
    check_a_batch_of_one_is_learn_one,
]

EVENTS = generate_events(400, seed=7)


def build_contract_model(name: str) -> Recommender:
    """A registry model, or an A/B experiment over two of them (`a+b`; the torch model
    second, so the primary arm is not the first)."""
    # A small dim keeps the torch model fast here; the default is exercised elsewhere.
    if name == "torch+content":
        return torch_with_content()
    if "+" not in name:
        return build_recommender(name, dim=16, seed=3)
    arms = [Arm(arm, build_recommender(arm, dim=16, seed=3), 1) for arm in name.split("+")]
    return variants(arms, salt="contract")


CONTENT_ITEMS = [f"item-{j}" for j in range(80)]


def torch_with_content() -> TorchRecommender:
    """The torch model given content for the contract's items and for 20 it never
    clicks (cold candidates), a third of them in each of three categories."""
    model = TorchRecommender(dim=16, seed=3, content_refresh=50)
    model.set_content(
        {
            item: ItemContent(title=f"title {j}", categories=(f"kind-{j % 3}",))
            for j, item in enumerate(CONTENT_ITEMS)
        }
    )
    return model


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__[len("check_") :])
@pytest.mark.parametrize(
    "name", [*MODEL_NAMES, "torch+content", "popularity+covisit", "covisit+torch"]
)
def test_recommender_contract(name: str, check: Callable[[Factory, list[Interaction]], None]):
    check(lambda: build_contract_model(name), EVENTS)


# Clauses only the torch model has: vectors that move, and a seed that matters.


def test_torch_update_carries_exactly_the_vectors_that_changed():
    model = TorchRecommender(dim=8, seed=1)
    contexts: dict[str, UserContext] = {}
    for event in EVENTS[:200]:
        before = {i: model.item_vector(i) for i in model.index.ids}  # type: ignore[attr-defined]
        context = contexts.get(event.user_id, model.new_context())
        update = model.learn_one(context, event)
        contexts[event.user_id] = update.context
        after = {i: model.item_vector(i) for i in model.index.ids}  # type: ignore[attr-defined]
        moved = {i for i in after if i not in before or not np.array_equal(before[i], after[i])}
        assert set(update.item_vectors) == moved
        assert len(moved) <= 2
        if context.recent:
            assert moved <= {context.recent[-1], event.item_id}
        for item_id, vector in update.item_vectors.items():
            np.testing.assert_array_equal(vector, model.item_vector(item_id))
        assert update.user_vector is not None
        np.testing.assert_array_equal(update.user_vector, np.float32(update.context.state[8:16]))


def test_torch_item_changes_match_what_the_index_holds():
    # Expected: each change's `after` is what the index holds once learn_one returns,
    # and its `before` what the index held just before (None: the item was not there).
    index = ExactIndex(8)
    model = TorchRecommender(dim=8, seed=2, index=index)
    contexts: dict[str, UserContext] = {}
    created = stepped = 0
    for event in EVENTS[:200]:
        held = {i: index.vector(i) for i in index.ids}
        context = contexts.get(event.user_id, model.new_context())
        update = model.learn_one(context, event)
        contexts[event.user_id] = update.context
        for item_id, change in update.item_changes.items():
            np.testing.assert_array_equal(change.after, index.vector(item_id))
            if change.before is None:
                assert item_id not in held
                created += 1
            else:
                np.testing.assert_array_equal(change.before, held[item_id])
                assert not np.array_equal(change.before, change.after)
                stepped += 1
        unchanged = set(held) - set(update.item_changes)
        for item_id in unchanged:
            np.testing.assert_array_equal(held[item_id], index.vector(item_id))
    assert created > 0 and stepped > 0


def test_torch_refuses_a_state_missing_a_part():
    # States from before checkpoint format 2 could lack the challenger; none is made up.
    state = TorchRecommender(dim=8).state_dict()
    del state["mix_prior"]
    with pytest.raises(KeyError, match="mix_prior"):
        TorchRecommender(dim=8).load_state_dict(state)


def test_torch_seed_changes_the_model():
    a, b = TorchRecommender(dim=8, seed=0), TorchRecommender(dim=8, seed=1)
    contexts_a, contexts_b = feed(a, EVENTS[:100]), feed(b, EVENTS[:100])
    # The vectors, the user states and the learned mixer's rankings all differ (the
    # ranking served may not: while the mixer's starting weights, which read no
    # vectors, rank better online, they serve; see TorchRecommender.mixer).
    item = EVENTS[0].item_id
    assert not np.array_equal(a.item_vector(item), b.item_vector(item))
    assert [c.state for c in contexts_a.values()] != [c.state for c in contexts_b.values()]
    a.ranker.mix_scores = b.ranker.mix_scores = [0.0, 1.0]  # serve the learned mixers
    assert recommend_all(a, contexts_a) != recommend_all(b, contexts_b)


def test_torch_model_does_not_touch_the_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    feed(TorchRecommender(dim=8, seed=0), EVENTS[:50])
    assert torch.equal(torch.rand(3), expected)


def test_torch_load_rejects_another_dimension():
    with pytest.raises(ValueError, match="dim"):
        TorchRecommender(dim=8).load_state_dict(TorchRecommender(dim=16).state_dict())


def test_registry_rejects_unknown_names_listing_the_choices():
    with pytest.raises(ValueError, match="torch, popularity, covisit"):
        build_recommender("sasrec")


def test_the_model_package_and_the_cli_import_without_torch():
    # `model.base` is what stream/ imports everywhere; torch costs a second or more and
    # is needed only by the commands that build a torch model.
    import subprocess
    import sys

    code = "import sys, model, model.registry, stream.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_torch_batch_reports_each_changed_item_once():
    # Expected: each item the batch changed is reported once, with what the index held
    # before the batch (None for a new item) and what it holds after.
    index = ExactIndex(8)
    model = TorchRecommender(dim=8, seed=2, index=index)
    contexts = feed(model, EVENTS[:100])
    held = {i: index.vector(i) for i in index.ids}
    batch = EVENTS[100:200]
    before = {e.user_id: contexts.get(e.user_id, model.new_context()) for e in batch}
    last: dict[str, np.ndarray | None] = dict(held)
    changed: dict[str, int] = {}
    for update in model.learn_many(before, batch):
        for item_id, change in update.item_changes.items():
            if item_id in held:
                np.testing.assert_array_equal(change.before, held[item_id])
            else:
                assert change.before is None
            assert changed.setdefault(item_id, 0) == 0, "an item was reported twice"
            changed[item_id] += 1
            last[item_id] = change.after
    assert set(last) == set(index.ids)
    for item_id, vector in last.items():
        np.testing.assert_array_equal(vector, index.vector(item_id))
    moved = {i for i in index.ids if i not in held or not np.array_equal(held[i], index.vector(i))}
    assert set(changed) == moved and moved


def test_torch_batch_waves_keep_each_users_clicks_in_order():
    from model.base import waves

    users = ["a", "b", "a", "c", "a", "b"]
    cut = waves([Interaction(u, "i", 0.0) for u in users])
    assert cut == [[0, 1, 3], [2, 5], [4]]


class CountingIndex(ExactIndex):
    """ExactIndex counting the queries it answers, with their exclusions."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.queries: list[int] = []  # the exclusions' size, per query

    def search(self, query: np.ndarray, k: int, exclude: Collection[str] = ()) -> list[Scored]:
        self.queries.append(len(exclude))
        return super().search(query, k, exclude)

    def search_many(
        self, queries: np.ndarray, k: int, excludes: Sequence[Collection[str]]
    ) -> list[list[Scored]]:
        self.queries.extend(len(exclude) for exclude in excludes)
        return super().search_many(queries, k, excludes)


def test_torch_batch_ranking_search_serves_each_users_next_mixer_step():
    # Expected: recommend_many searches once per ranked user; each user's next click,
    # learned in a batch, steps the mixer on that answer without searching again.
    index = CountingIndex(8)
    model = TorchRecommender(dim=8, seed=2, index=index)
    contexts = feed(model, EVENTS[:200])
    users = sorted(u for u, context in contexts.items() if len(context.recent) >= 2)[:10]
    excludes = [set(contexts[u].recent) for u in users]
    index.queries.clear()
    ranked = model.recommend_many([contexts[u] for u in users], 5, excludes)
    assert len(index.queries) == len(users)
    for exclude, items in zip(excludes, ranked, strict=True):
        assert not exclude & {s.item_id for s in items}
    index.queries.clear()
    nxt = [Interaction(u, contexts[u].recent[0], 1e9) for u in users]
    model.learn_many({u: contexts[u] for u in users}, nxt)
    assert index.queries == []
    # Taken once: the same contexts again search.
    model.learn_many({u: contexts[u] for u in users}, nxt)
    assert len(index.queries) > 0


def _mixer_steps(model: TorchRecommender) -> list[tuple[str, float]]:
    """Records (clicked item, the user's previous click time) of every mixer step."""
    steps: list[tuple[str, float]] = []
    step = model.ranker._mix_step

    def counted(block: Any, u: int, context: UserContext, target: str, rare: bool) -> None:
        steps.append((target, context.last_timestamp))
        step(block, u, context, target, rare)

    model.ranker._mix_step = counted  # type: ignore[method-assign]
    return steps


def test_torch_mixer_steps_on_one_click_in_mix_every_the_same_ones_in_a_batch():
    # Every user's clicks are distinct items, and every item is known before the
    # stream, so whether a click steps depends on the sampling alone.
    rng = random.Random(5)
    warm = [Interaction("warm", f"i{j}", float(j)) for j in range(60)]
    stream: list[Interaction] = []
    for t in range(600):
        user = f"u{rng.randrange(30)}"
        taken = {e.item_id for e in stream if e.user_id == user}
        item = rng.choice([f"i{j}" for j in range(60) if f"i{j}" not in taken] or ["i0"])
        stream.append(Interaction(user, item, 100.0 + t))
    stepped = {}
    for every, batched in [(1, False), (4, False), (4, True)]:
        model = TorchRecommender(dim=8, seed=2, mix_every=every)
        feed(model, warm)
        steps = _mixer_steps(model)
        if batched:
            feed_in_batches(model, stream, 50)
        else:
            feed(model, stream)
        stepped[every, batched] = steps
    every_click = stepped[1, False]
    assert len(every_click) > 500
    assert 0.15 < len(stepped[4, False]) / len(every_click) < 0.35
    assert set(stepped[4, False]) < set(every_click)
    assert sorted(stepped[4, True]) == sorted(stepped[4, False])


def test_torch_refuses_a_mixer_that_never_steps():
    with pytest.raises(ValueError, match="mix_every"):
        TorchRecommender(dim=8, mix_every=0)
