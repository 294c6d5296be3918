"""Offline evaluation: metric known answers, and exactly which (context, target) pairs
each protocol scores, checked with a stub recommender whose answers are fixed."""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from model.base import Interaction, Scored, Update, UserContext
from model.evaluation import (
    RankingMetrics,
    check_ks,
    last_out,
    prequential,
    session_split,
)
from model.registry import build_recommender

SHARED_DATA = Path(__file__).parents[3] / "shared" / "data"


# Metrics.


def scored(ranked: list[str], target: str, ks: tuple[int, ...] = (1, 3, 10)) -> dict[str, Any]:
    metrics = RankingMetrics(ks)
    metrics.add(ranked, target)
    return metrics.summary()


def test_target_at_rank_one_scores_one_everywhere() -> None:
    got = scored(["a", "b", "c"], "a")
    for k in (1, 3, 10):
        assert (got[f"HR@{k}"], got[f"MRR@{k}"], got[f"NDCG@{k}"]) == (1.0, 1.0, 1.0)
    assert got["predictions"] == 1


def test_target_at_rank_three() -> None:
    got = scored(["a", "b", "c", "d"], "c")
    assert (got["HR@1"], got["MRR@1"], got["NDCG@1"]) == (0.0, 0.0, 0.0)
    assert got["HR@3"] == 1.0
    assert got["MRR@3"] == pytest.approx(1 / 3)
    assert got["NDCG@3"] == pytest.approx(1 / math.log2(4))  # = 0.5
    assert got["MRR@10"] == pytest.approx(1 / 3)


def test_absent_target_scores_zero_but_counts() -> None:
    got = scored(["a", "b"], "z")
    assert all(got[f"{m}@{k}"] == 0.0 for m in ("HR", "MRR", "NDCG") for k in (1, 3, 10))
    assert got["predictions"] == 1


def test_target_beyond_the_largest_k_is_a_miss() -> None:
    ranked = [f"i{n}" for n in range(30)]
    assert scored(ranked, "i12", ks=(10,))["HR@10"] == 0.0
    assert scored(ranked, "i12", ks=(20,))["MRR@20"] == pytest.approx(1 / 13)


def test_metrics_average_over_predictions() -> None:
    metrics = RankingMetrics((2,))
    metrics.add(["a", "b"], "a")  # rank 1
    metrics.add(["a", "b"], "b")  # rank 2
    metrics.add(["a", "b"], "c")  # miss
    metrics.add([], "a")  # nothing recommended: a miss
    got = metrics.summary()
    assert got["predictions"] == 4
    assert got["HR@2"] == pytest.approx(2 / 4)
    assert got["MRR@2"] == pytest.approx((1 + 1 / 2) / 4)
    assert got["NDCG@2"] == pytest.approx((1 + 1 / math.log2(3)) / 4)


def test_coverage_is_recommended_top_max_k_over_items_seen() -> None:
    metrics = RankingMetrics((1, 2))
    for item in "abcdefgh":
        metrics.see(item)
    metrics.add(["a", "b", "c"], "x")  # only the top max(K) = 2 count: a, b
    metrics.add(["b", "d"], "x")
    assert metrics.coverage == pytest.approx(3 / 8)
    assert RankingMetrics().coverage == 0.0


def test_empty_summary_is_zeros() -> None:
    got = RankingMetrics().summary()
    assert got["predictions"] == 0 and got["HR@10"] == 0.0 and got["coverage"] == 0.0


@pytest.mark.parametrize("ks", [(), (0,), (10, -1), (2.5,)])
def test_bad_cut_offs_are_rejected(ks: tuple[Any, ...]) -> None:
    with pytest.raises(ValueError, match="integers >= 1"):
        check_ks(ks)


def test_cut_offs_are_sorted_and_deduplicated() -> None:
    assert check_ks([20, 10, 20]) == (10, 20)
    assert list(RankingMetrics((20, 10)).summary())[:3] == ["HR@10", "MRR@10", "NDCG@10"]


# Protocols, with a stub whose answers are fixed.


class StubRecommender:
    """Learns nothing but the user's history; recommends a fixed list, preceded by an
    id that spells out the context it was asked about ("ctx:a,b"), so a test can see
    which context each scored prediction came from."""

    name = "stub"
    version = "stub-1"

    def __init__(self, fixed: tuple[str, ...] = ("p", "q"), spell_context: bool = True) -> None:
        self.fixed = fixed
        self.spell_context = spell_context
        self.learned: list[Interaction] = []
        self.asked: list[tuple[tuple[str, ...], frozenset[str], int]] = []

    def new_context(self) -> UserContext:
        return UserContext()

    def learn_one(self, context: UserContext, interaction: Interaction) -> Update:
        self.learned.append(interaction)
        return Update(UserContext(recent=(*context.recent, interaction.item_id)))

    def recommend(
        self, context: UserContext, k: int, exclude: Collection[str] = ()
    ) -> list[Scored]:
        self.asked.append((context.recent, frozenset(exclude), k))
        spelled = [f"ctx:{','.join(context.recent)}"] if self.spell_context else []
        ranked = [*spelled, *self.fixed]
        return [Scored(item, 1.0) for item in ranked if item not in exclude][:k]

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


def events(*rows: tuple[str, str, float]) -> list[Interaction]:
    return [Interaction(user, item, float(t), session_id=user) for user, item, t in rows]


class Recorder:
    def __init__(self) -> None:
        self.pairs: list[tuple[str, str, str]] = []  # (user, context id, target)

    def __call__(self, user_id: str, ranked: list[str], target: str) -> None:
        self.pairs.append((user_id, ranked[0], target))


def test_prequential_scores_each_event_before_learning_it() -> None:
    stream = events(("u", "a", 1), ("v", "x", 2), ("u", "b", 3), ("u", "p", 4))
    model, recorder = StubRecommender(), Recorder()
    result = prequential(
        model, list(reversed(stream)), ks=(1, 3), on_prediction=recorder, exclude="none"
    )
    # Time order, whatever the input order; each context holds only earlier events.
    assert recorder.pairs == [
        ("u", "ctx:", "a"),
        ("v", "ctx:", "x"),
        ("u", "ctx:a", "b"),
        ("u", "ctx:a,b", "p"),
    ]
    assert model.learned == stream
    assert [asked[1:] for asked in model.asked] == [(frozenset(), 3)] * 4
    assert result["predictions"] == 4
    assert result["HR@3"] == 0.25 and result["HR@1"] == 0.0  # "p" at rank 2
    assert result["MRR@3"] == pytest.approx(0.5 / 4)


def test_last_out_holds_out_each_users_last_event_and_excludes_seen_items() -> None:
    stream = events(
        ("u", "a", 1),
        ("v", "x", 2),
        ("u", "b", 3),
        ("w", "solo", 4),
        ("v", "p", 5),
        ("u", "a", 6),
        ("v", "q", 7),
        ("u", "p", 8),
    )
    model, recorder = StubRecommender(), Recorder()
    result = last_out(model, stream, ks=(1, 2), on_prediction=recorder)
    # Learned: everything but u's last (p at t=8) and v's last (q at t=7); w's only
    # event is training data and w is not scored.
    assert [(e.user_id, e.timestamp) for e in model.learned] == [
        ("u", 1),
        ("v", 2),
        ("u", 3),
        ("w", 4),
        ("v", 5),
        ("u", 6),
    ]
    # Scored in held-out time order, with the user's training items excluded.
    assert recorder.pairs == [("v", "ctx:x,p", "q"), ("u", "ctx:a,b,a", "p")]
    assert [asked[1] for asked in model.asked] == [frozenset("xp"), frozenset("ab")]
    assert result["predictions"] == 2
    # v: "p" excluded, so "q" is rank 2; u: "p" is rank 2 (not excluded for u).
    assert result["HR@2"] == 1.0 and result["HR@1"] == 0.0


def test_last_out_exclusions_are_not_the_models_bounded_recent_list() -> None:
    class ShortMemory(StubRecommender):
        def learn_one(self, context: UserContext, interaction: Interaction) -> Update:
            update = super().learn_one(context, interaction)
            return Update(UserContext(recent=update.context.recent[-1:]))

    stream = events(*[("u", f"i{n}", n) for n in range(5)], ("u", "z", 9))
    model = ShortMemory()
    last_out(model, stream, exclude="history")
    assert model.asked[0][1] == frozenset({"i0", "i1", "i2", "i3", "i4"})
    model = ShortMemory()
    last_out(model, stream, exclude="history", history_max=2)  # as the worker bounds it
    assert model.asked[0][1] == frozenset({"i3", "i4"})


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("none", [set(), set(), set(), set(), set()]),
        ("seen", [set(), {"a"}, {"a", "b"}, {"a", "b", "c"}, {"a", "b", "c"}]),
        ("last", [set(), {"a"}, {"b"}, {"c"}, {"a"}]),
        ("history", [set(), {"a"}, {"a", "b"}, {"b", "c"}, {"c", "a"}]),  # the last two
    ],
)
def test_every_protocol_ranks_with_the_workers_exclusion_policy(
    policy: str, expected: list[set[str]]
) -> None:
    """The list scored against a click is the worker's list after the user's previous
    click, excluded as `model.base.excluded` (the worker's own function) says."""
    stream = events(("u", "a", 1), ("u", "b", 2), ("u", "c", 3), ("u", "a", 4), ("u", "p", 5))
    model = StubRecommender()
    prequential(model, stream, exclude=policy, history_max=2)
    assert [set(asked[1]) for asked in model.asked] == expected
    model = StubRecommender()
    session_split(model, [], stream, exclude=policy, history_max=2)
    assert [set(asked[1]) for asked in model.asked] == expected[1:]
    model = StubRecommender()
    last_out(model, stream, exclude=policy, history_max=2)
    assert [set(asked[1]) for asked in model.asked] == expected[-1:]
    with pytest.raises(ValueError, match="exclusion policy"):
        prequential(StubRecommender(), stream, exclude="everything")


def test_session_split_scores_each_next_click_within_a_session() -> None:
    train = events(("s0", "a", 1), ("s0", "b", 2))
    # Two sessions interleaved in time, plus a one-click session.
    test = events(
        ("s1", "a", 10),
        ("s2", "c", 11),
        ("s1", "b", 12),
        ("s3", "lone", 13),
        ("s2", "c", 14),
        ("s1", "p", 15),
        ("s2", "d", 16),
    )
    model, recorder = StubRecommender(), Recorder()
    result = session_split(
        model, train, list(reversed(test)), ks=(1, 2), on_prediction=recorder, exclude="none"
    )
    assert model.learned == train + test
    # After each click, not the session's last, the context includes that click and
    # the target is the same session's next click.
    assert recorder.pairs == [
        ("s1", "ctx:a", "b"),
        ("s2", "ctx:c", "c"),
        ("s1", "ctx:a,b", "p"),
        ("s2", "ctx:c,c", "d"),
    ]
    assert result["predictions"] == len(test) - 3 == 4
    assert all(asked[1] == frozenset() for asked in model.asked)  # repeats allowed
    assert result["HR@2"] == 0.25 and result["MRR@2"] == pytest.approx(0.5 / 4)


def test_each_protocol_reports_its_work() -> None:
    stream = events(*[(f"u{n % 3}", f"i{n % 5}", n) for n in range(40)])
    counted: list[int] = []
    result = prequential(StubRecommender(), stream, progress=counted.append)
    assert sum(counted) == 40
    assert result["seconds"] > 0 and result["events_per_s"] > 0
    for run in (
        lambda p: last_out(StubRecommender(), stream, progress=p),
        lambda p: session_split(StubRecommender(), stream[:20], stream[20:], progress=p),
    ):
        counted = []
        run(counted.append)
        assert sum(counted) == 40


def test_coverage_counts_learned_items_only() -> None:
    # "new" appears only as a held-out target: no model could recommend it.
    stream = events(("u", "a", 1), ("u", "b", 2), ("u", "p", 3), ("v", "q", 4), ("v", "new", 5))
    model = StubRecommender(fixed=("a", "b", "q"), spell_context=False)
    result = last_out(model, stream, ks=(1, 2))
    # Catalogue: the learned {a, b, q}, not the held-out p and new. Top 2: u -> q
    # (a, b excluded); v -> a, b (q excluded). All three were recommended.
    assert result["coverage"] == 1.0
    assert result["predictions"] == 2 and result["HR@2"] == 0.0


# Real models.


def planted_stream(n: int = 3000, items: int = 60, seed: int = 0) -> list[Interaction]:
    """Sessions that walk a fixed successor chain, starting from Zipf-popular items:
    the next item is known from the current one, while popularity is nearly flat over
    the chain. A covisit model must learn the chain; popularity cannot."""
    rng = random.Random(seed)
    order = list(range(items))
    rng.shuffle(order)
    successor = {order[i]: order[(i + 1) % items] for i in range(items)}
    weights = [1 / (rank + 1) for rank in range(items)]
    out: list[Interaction] = []
    t, session = 0.0, 0
    while len(out) < n:
        item = rng.choices(range(items), weights)[0]
        for _ in range(rng.randint(3, 8)):
            out.append(Interaction(f"s{session}", f"i{item}", t))
            item = successor[item]
            t += 1.0
        session += 1
    return out[:n]


def test_covisit_beats_popularity_on_a_planted_chain() -> None:
    stream = planted_stream()
    covisit = prequential(build_recommender("covisit"), stream)
    popularity = prequential(build_recommender("popularity"), stream)
    # Every non-first click of a session follows the chain; covisit learns each link
    # after one sighting, so it hits on most of them. Popularity's top 10 of 60 items
    # catches well under half.
    assert covisit["HR@10"] > 0.7
    assert popularity["HR@10"] < 0.45
    assert covisit["HR@10"] > popularity["HR@10"] + 0.3


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread, as `streamrec evaluate` runs (and faster on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name", ["torch", "popularity", "covisit"])
def test_same_seed_same_results(name: str, one_thread: None) -> None:
    stream = planted_stream(150)

    def metrics() -> dict[str, Any]:
        result = prequential(build_recommender(name, dim=8, seed=3), stream)
        return {k: v for k, v in result.items() if k not in ("seconds", "events_per_s")}

    assert metrics() == metrics()


# The shared dataset.


@pytest.mark.dataset
def test_yoochoose_session_split_scores_every_next_click() -> None:
    from stream.offline.datasets import read_interactions

    folder = SHARED_DATA / "yoochoose-100k"
    train_path = folder / "yoochoose-clicks-100k_train_full.txt"
    test_path = folder / "yoochoose-clicks-100k_test.txt"
    if not (train_path.is_file() and test_path.is_file()):
        pytest.skip(f"{folder} is not present")

    def load(path: Path) -> list[Interaction]:
        return [
            Interaction(r["user_id"], r["item_id"], r["timestamp"], session_id=r["session_id"])
            for r in read_interactions(path, "session-rec")
        ]

    test = load(test_path)
    # 13,568 test clicks in 3,416 sessions: every click but each session's last is
    # followed by one to predict.
    assert len(test) == 13_568 and len({e.user_id for e in test}) == 3_416
    result = session_split(build_recommender("popularity"), load(train_path), test)
    assert result["predictions"] == 13_568 - 3_416 == 10_152


# Batches: the same protocols through learn_many / recommend_many.


class BatchStub(StubRecommender):
    """The stub with the batch methods, looping the one-event ones; each list it ranks
    records how many events had been learned by then."""

    def __init__(self) -> None:
        super().__init__()
        self.learned_when_asked: list[int] = []

    def learn_many(
        self, contexts: Mapping[str, UserContext], interactions: Sequence[Interaction]
    ) -> list[Update]:
        current, updates = dict(contexts), []
        for interaction in interactions:
            update = self.learn_one(current[interaction.user_id], interaction)
            current[interaction.user_id] = update.context
            updates.append(update)
        return updates

    def recommend_many(
        self, contexts: Sequence[UserContext], k: int, excludes: Sequence[Collection[str]]
    ) -> list[list[Scored]]:
        self.learned_when_asked += [len(self.learned)] * len(contexts)
        return [self.recommend(c, k, ex) for c, ex in zip(contexts, excludes, strict=True)]


@pytest.mark.parametrize("batch_size", [2, 3, 64])
def test_batches_score_the_same_contexts_as_one_at_a_time(batch_size: int) -> None:
    # The stub's lists depend on the context only, so every protocol must score the
    # same (user, context, target) triples at any batch size.
    stream = events(
        ("u", "a", 1), ("v", "x", 2), ("u", "b", 3), ("w", "y", 4), ("u", "c", 5),
        ("v", "z", 6), ("w", "a", 7), ("u", "d", 8), ("v", "b", 9),
    )  # fmt: skip
    train, test = stream[:4], stream[4:]
    runs = {
        "prequential": lambda model, size, rec: prequential(
            model, stream, (1, 3), on_prediction=rec, batch_size=size
        ),
        "last-out": lambda model, size, rec: last_out(
            model, stream, (1, 3), on_prediction=rec, batch_size=size
        ),
        "session-split": lambda model, size, rec: session_split(
            model, train, test, (1, 3), on_prediction=rec, batch_size=size
        ),
    }
    for name, run in runs.items():
        one, batched = Recorder(), Recorder()
        expected, got = run(BatchStub(), 1, one), run(BatchStub(), batch_size, batched)
        assert batched.pairs == one.pairs, name
        assert got["predictions"] == expected["predictions"], name


def test_session_split_batches_never_score_a_learned_click() -> None:
    # Session u clicks a, b, c in one would-be chunk: the list after a is scored
    # against b, so the chunk must end before b is learned.
    test = events(("u", "a", 1), ("v", "x", 2), ("u", "b", 3), ("u", "c", 4))
    model = BatchStub()
    session_split(model, [], test, (1,), batch_size=64)
    # Lists after "a" and after "b" (targets b and c): learned 2 and 3 events then.
    assert model.learned_when_asked == [2, 3]


def test_batch_size_below_one_is_rejected() -> None:
    with pytest.raises(ValueError, match="batch size"):
        prequential(BatchStub(), events(("u", "a", 1)), (1,), batch_size=0)
