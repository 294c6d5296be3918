"""Synthetic streams with a planted answer each model must find.

Every test states the answer it expects and why; a model that ignores the pattern it
is meant to learn (popularity in place of sequence, no decay, ...) fails it.
"""

from __future__ import annotations

import random

import pytest

from model import (
    CoVisitation,
    Interaction,
    RecentPopularity,
    Recommender,
    TorchRecommender,
    UserContext,
)

PAIRS = {f"a{i}": f"b{i}" for i in range(5)}  # a_i is always followed by b_i
NOISE = [f"noise-{j}" for j in range(100)]


def planted_sessions(sessions: int, seed: int) -> list[Interaction]:
    """Sessions of 4-8 Zipf-popular noise clicks; 60% of them also contain one planted
    pair a_i -> b_i clicked back to back. With 300 sessions (about 2,100 clicks)
    noise-0 is by far the most clicked item (about 300 clicks) and each b_i gets 20-45,
    fewer than each of noise-0..noise-5, so popularity alone puts no b_i in a top 5."""
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) for rank in range(len(NOISE))]
    events = []
    t = 1_700_000_000.0
    for s in range(sessions):
        clicks = rng.choices(NOISE, weights, k=rng.randint(4, 8))
        if rng.random() < 0.6:
            a = rng.choice(sorted(PAIRS))
            at = rng.randint(0, len(clicks))
            clicks[at:at] = [a, PAIRS[a]]
        for item in clicks:
            t += rng.uniform(1.0, 30.0)
            events.append(Interaction(f"session-{s}", item, t))
    return events


EVENTS = planted_sessions(300, seed=11)


def train(model: Recommender, events: list[Interaction]) -> Recommender:
    contexts: dict[str, UserContext] = {}
    for event in events:
        context = contexts.get(event.user_id, model.new_context())
        contexts[event.user_id] = model.learn_one(context, event).context
    return model


def clicked(model: Recommender, items: list[str]) -> UserContext:
    """The context of a new user after clicking `items`, one second apart."""
    context = model.new_context()
    for t, item in enumerate(items):
        context = model.learn_one(context, Interaction("probe", item, 2e9 + t)).context
    return context


def ranked(model: Recommender, context: UserContext, k: int) -> list[str]:
    return [s.item_id for s in model.recommend(context, k)]


def test_the_planted_successors_are_not_the_popular_items():
    # Guards the tests below: if b_i were popular, popularity could pass them.
    top = ranked(train(RecentPopularity(half_life_s=1e9), EVENTS), UserContext(), 5)
    assert top[0] == "noise-0"
    assert not set(top) & set(PAIRS.values())


@pytest.fixture(scope="module")
def covisit() -> CoVisitation:
    model = train(CoVisitation(), EVENTS)
    assert isinstance(model, CoVisitation)
    return model


@pytest.fixture(scope="module")
def torch_model() -> TorchRecommender:
    model = train(TorchRecommender(seed=0), EVENTS)
    assert isinstance(model, TorchRecommender)
    return model


@pytest.mark.parametrize("a", sorted(PAIRS))
def test_covisit_puts_the_successor_first(covisit: CoVisitation, a: str):
    # Expected: after ... noise-7, a_i the next click is b_i, top-1.
    context = UserContext(recent=("noise-7", a), clicks=2, last_timestamp=2e9)
    assert ranked(covisit, context, 1) == [PAIRS[a]]
    # Its estimated P(b_i | a_i) is the largest of a_i's successors.
    successors = covisit.neighbours(a)
    assert max(successors, key=successors.__getitem__) == PAIRS[a]


@pytest.mark.parametrize("a", sorted(PAIRS))
def test_torch_ranks_the_successor_in_its_top_three(torch_model: TorchRecommender, a: str):
    # Expected: b_i within the top 3 after a new user clicks noise-7 then a_i; the
    # stream's most popular items (noise-0, noise-1, ...) come after it.
    context = clicked(torch_model, ["noise-7", a])
    assert PAIRS[a] in ranked(torch_model, context, 3)


def test_torch_depends_on_the_last_click(torch_model: TorchRecommender):
    # Expected: the five probes (one per a_i) get five different top-1 items, each
    # its own b_i; one list for everyone would mean the GRU state is ignored.
    tops = {a: ranked(torch_model, clicked(torch_model, ["noise-7", a]), 1)[0] for a in PAIRS}
    assert tops == PAIRS


def test_popularity_puts_the_planted_hit_first():
    # Expected: "hit" gets every third click, three times the next most popular item.
    rng = random.Random(5)
    model = RecentPopularity()
    context = model.new_context()
    for t in range(3000):
        item = "hit" if t % 3 == 0 else f"other-{rng.randrange(20)}"
        context = model.learn_one(context, Interaction("u", item, float(t))).context
    top = model.recommend(context, 3)
    assert top[0].item_id == "hit"
    assert top[0].score == pytest.approx(1 / 3, rel=0.05)
    # And excluded, the next one comes first.
    assert model.recommend(context, 1, exclude={"hit"})[0].item_id.startswith("other-")


@pytest.mark.parametrize(("half_life_s", "expected"), [(60.0, "new"), (1e9, "old")])
def test_popularity_decays_by_event_time(half_life_s: float, expected: str):
    # "old": 100 clicks in the first 100 s; "new": 10 clicks 1000 s later. With a
    # 60 s half-life the old clicks weigh 2 ** -15 of a new one, so "new" leads; with
    # no decay to speak of, "old" leads 100 to 10.
    model = RecentPopularity(half_life_s=half_life_s)
    for t in range(100):
        model.observe("old", float(t))
    for t in range(10):
        model.observe("new", 1000.0 + t)
    assert model.top(1)[0].item_id == expected


def test_popularity_survives_rescaling_over_many_half_lives():
    # 1 s half-life over 300 s: the lazy weights are rescaled several times. Expected:
    # "late" (one click at t=300) beats "early" (a click every second until t=200),
    # and shares stay finite and sum to one.
    model = RecentPopularity(half_life_s=1.0)
    for t in range(200):
        model.observe("early", float(t))
    model.observe("late", 300.0)
    top = model.top(2)
    assert [s.item_id for s in top] == ["late", "early"]
    assert sum(s.score for s in top) == pytest.approx(1.0)
    assert 0.0 < top[1].score < 1e-20


def test_popularity_cache_agrees_with_a_full_ranking():
    # A cache of 4 must give the same answers as one holding everything, including
    # when the exclusions reach past it.
    small, full = RecentPopularity(cache_size=4), RecentPopularity(cache_size=10_000)
    rng = random.Random(2)
    for t in range(2000):
        item = f"i{min(rng.randrange(60), rng.randrange(60))}"
        small.observe(item, float(t))
        full.observe(item, float(t))
        if t % 97 == 0:
            exclude = {f"i{rng.randrange(60)}" for _ in range(10)}
            assert small.top(8, exclude) == full.top(8, exclude)


def test_covisit_learns_nothing_across_a_session_gap():
    # Expected: x then y 2 hours later are separate visits, so no x -> y transition;
    # a repeat click on x within the session counts as x -> x.
    model = CoVisitation(session_gap_s=1800.0, backward_weight=0.0)
    context = clicked(model, ["x", "x"])
    model.learn_one(context, Interaction("probe", "y", 2e9 + 7200))
    assert model.neighbours("x") == {"x": 1.0}


def test_covisit_weights_closer_predecessors_more():
    # Expected: after p, q the click r adds q -> r with weight 1 and p -> r with 1/2,
    # so P(r | q) = 1 and P(r | p) = 1/3 (p -> q holds the other 2/3).
    model = CoVisitation(backward_weight=0.0)
    clicked(model, ["p", "q", "r"])
    assert model.neighbours("q") == {"r": 1.0}
    assert model.neighbours("p") == pytest.approx({"q": 2 / 3, "r": 1 / 3})


def test_covisit_bounds_each_neighbour_list():
    model = CoVisitation(max_neighbours=10, backward_weight=0.0)
    for j in range(500):
        clicked(model, ["hub", f"leaf-{j}"])
    assert len(model.neighbours("hub")) <= 20


def test_covisit_trusts_the_most_recent_click_most():
    # x -> x1 and y -> y1 are both certain, and x1 is the more popular item. Expected:
    # after x then y, y's successor y1 comes first (vote 1 against 2 ** -1.5 for x1).
    model = CoVisitation(backward_weight=0.0)
    clicked(model, ["x", "x1"])
    clicked(model, ["y", "y1"])
    for _ in range(5):
        clicked(model, ["x1"])
    context = UserContext(recent=("x", "y"), clicks=2)
    top = model.recommend(context, 2)
    assert [s.item_id for s in top] == ["y1", "x1"]
    assert top[1].score == pytest.approx(2**-1.5, rel=1e-6)


def gap_and_kind_sessions(sessions: int, seed: int) -> list[Interaction]:
    """Sessions of 2-5 noise clicks, then "x", then the planted next click. Which one
    depends only on how "x" was reached: 2 s after the previous click -> "fast",
    1,200 s after -> "slow" (both within one session); or, in the event-type
    variant, "x" viewed -> "info", "x" added to the cart -> "checkout". Item
    sequences alone cannot tell the cases apart: "x" is followed by each half the time."""
    rng = random.Random(seed)
    noise = [f"noise-{j}" for j in range(30)]
    events = []
    t = 1_700_000_000.0
    for s in range(sessions):
        for item in rng.choices(noise, k=rng.randint(2, 5)):
            t += rng.uniform(1.0, 30.0)
            events.append(Interaction(f"session-{s}", item, t))
        first = rng.random() < 0.5
        if s % 2:
            t += 2.0 if first else 1200.0
            events.append(Interaction(f"session-{s}", "x", t))
            nxt = "fast" if first else "slow"
        else:
            t += 10.0
            kind = "view" if first else "add_to_cart"
            events.append(Interaction(f"session-{s}", "x", t, event_type=kind))
            nxt = "info" if first else "checkout"
        t += 3.0
        events.append(Interaction(f"session-{s}", nxt, t))
        t += 3600.0
    return events


def x_reached(model: TorchRecommender, gap: float, event_type: str = "click") -> list[str]:
    """A new user's ranking after noise-3 then "x", `gap` seconds later."""
    context = model.new_context()
    context = model.learn_one(context, Interaction("probe", "noise-3", 2e9)).context
    x = Interaction("probe", "x", 2e9 + gap, event_type=event_type)
    return ranked(model, model.learn_one(context, x).context, 10)


@pytest.mark.parametrize("context_lr", [0.01, 0.0])
def test_torch_reads_time_gaps_and_event_types(context_lr: float):
    # Expected: with the gap and event-type embeddings learning (context_lr > 0),
    # "fast" ranks above "slow" after a 2 s gap and below it after 1,200 s, and "info"
    # above "checkout" after a view, below it after an add-to-cart. With them frozen
    # at zero (context_lr = 0) the two probes of each pair rank the pair alike.
    model = train(
        TorchRecommender(dim=16, seed=0, context_lr=context_lr), gap_and_kind_sessions(500, seed=3)
    )
    assert isinstance(model, TorchRecommender)
    quick, later = x_reached(model, 2.0), x_reached(model, 1200.0)
    viewed, carted = x_reached(model, 10.0, "view"), x_reached(model, 10.0, "add_to_cart")
    if context_lr > 0:
        assert quick.index("fast") < quick.index("slow")
        assert later.index("slow") < later.index("fast")
        assert viewed.index("info") < viewed.index("checkout")
        assert carted.index("checkout") < carted.index("info")
    else:

        def before(ranking: list[str], a: str, b: str) -> bool:
            return ranking.index(a) < ranking.index(b)

        assert before(quick, "fast", "slow") == before(later, "fast", "slow")
        assert before(viewed, "info", "checkout") == before(carted, "info", "checkout")


def far_anchor_sessions(sessions: int, seed: int) -> list[Interaction]:
    """Sessions of 4-8 clicks on 300 uniform noise items; 60% also hold anchor_i and,
    1 or 7 clicks later, target_i. Noise follows noise at random, so P(target_i |
    anchor_i) stands out among anchor_i's successors and no noise item has one like it."""
    rng = random.Random(seed)
    noise = [f"noise-{j}" for j in range(300)]
    anchors = {f"anchor{i}": f"target{i}" for i in range(5)}
    events = []
    t = 1_700_000_000.0
    for s in range(sessions):
        clicks = rng.choices(noise, k=rng.randint(4, 8))
        if rng.random() < 0.6:
            a = rng.choice(sorted(anchors))
            at = rng.randint(0, len(clicks))
            clicks[at:at] = [a, *rng.choices(noise, k=rng.choice((0, 6))), anchors[a]]
        for item in clicks:
            t += rng.uniform(1.0, 30.0)
            events.append(Interaction(f"session-{s}", item, t))
        t += 3600.0
    return events


def test_torch_history_vote_reaches_past_the_window():
    # Expected: a user who clicked anchor_i and then seven items never seen in training
    # has anchor_i 8 clicks back, outside the 5-item transition window: the window's
    # votes hold no target_i, while the history vote (last 50 items) ranks it first.
    model = train(TorchRecommender(dim=16, seed=0), far_anchor_sessions(600, seed=11))
    assert isinstance(model, TorchRecommender)
    probe_noise = [f"unseen-{j}" for j in range(7)]
    for i in range(5):
        recent = (f"anchor{i}", *probe_noise)
        assert f"target{i}" not in model.transitions.votes(recent)
        assert model.history_vote(recent, 1)[0].item_id == f"target{i}"


def day_apart_histories(users: int, seed: int) -> list[Interaction]:
    """Users who click 3-6 of 300 uniform noise items a day apart; 60% also click
    left_i and right_i, in either order, a day apart too. No two clicks share a session
    (30 min), so transitions learn nothing: only the session-blind, symmetric
    co-occurrence can tie right_i to left_i (or left_i to right_i)."""
    rng = random.Random(seed)
    noise = [f"noise-{j}" for j in range(300)]
    events = []
    t = 1_700_000_000.0
    for u in range(users):
        clicks = rng.choices(noise, k=rng.randint(3, 6))
        if rng.random() < 0.6:
            i = rng.randrange(5)
            pair = [f"left{i}", f"right{i}"]
            rng.shuffle(pair)
            at = rng.randint(0, len(clicks))
            clicks[at:at] = pair
        for item in clicks:
            t += 86_400.0
            events.append(Interaction(f"user-{u}", item, t))
    return events


def test_torch_cooccurrence_ties_items_clicked_days_apart_in_either_order():
    # Expected: a user whose history is left_i then a day later an unseen item gets
    # right_i first once the seen items are excluded; one whose history is right_i
    # gets left_i. The transition memory has no evidence (every gap is a day), and
    # covisit, which has nothing else, ranks neither.
    events = day_apart_histories(400, seed=3)
    model = train(TorchRecommender(dim=16, seed=0), events)
    covisit = train(CoVisitation(), events)
    assert isinstance(model, TorchRecommender) and isinstance(covisit, CoVisitation)
    for i in range(5):
        for have, want in ((f"left{i}", f"right{i}"), (f"right{i}", f"left{i}")):
            assert want not in model.transitions.votes((have,))
            context = UserContext(recent=(have, "unseen-0"), clicks=2, last_timestamp=2e9)
            assert ranked(model, context, 1) == [want]
            assert covisit.neighbours(have) == {}


def test_torch_serves_its_starting_weights_while_the_learned_mixer_ranks_worse():
    # Expected: a mixer turned exactly wrong (and frozen by a tiny mix_lr) ranks every
    # clicked item last among its candidates online, so the starting weights (the log
    # transition and co-occurrence votes) serve, and they put each planted b_i first.
    # Both mixers are scored on every click (mix_every=1), so their online scores
    # settle within this short stream.
    model = TorchRecommender(dim=16, seed=0, mix_lr=1e-12, mix_every=1)
    model.ranker.mix = -model.ranker.prior.clone()
    train(model, EVENTS)
    prior_score, learned_score = model.ranker.mix_scores
    assert prior_score > 0.2 and learned_score < 0.1
    assert model.ranker.mixer() is model.ranker.prior
    for a, b in PAIRS.items():
        context = UserContext(recent=("noise-7", a), clicks=2, last_timestamp=2e9)
        assert ranked(model, context, 1) == [b]
