"""Unavailable items leave every served list, which is still the model's top k of the
rest (stream/worker/availability.py)."""

from __future__ import annotations

from model.base import Interaction, UserContext
from model.baselines import CoVisitation, RecentPopularity
from stream.worker.availability import MAX_RANKINGS, Unavailable


def popularity_over(items: int) -> RecentPopularity:
    """Item i clicked items - i times: i0 the most popular."""
    model = RecentPopularity(half_life_s=1e9)
    context = model.new_context()
    for i in range(items):
        for _ in range(items - i):
            context = model.learn_one(context, Interaction("u", f"i{i}", 1.0)).context
    return model


def ids(ranked: list) -> list[str]:
    return [s.item_id for s in ranked]


def test_a_list_is_the_top_k_of_the_available_items() -> None:
    model = popularity_over(20)
    unavailable = Unavailable()
    for item in ("i0", "i2", "i3", "i7"):
        unavailable.mark(item, available=False)
    got = unavailable.recommend(model, UserContext(), 5, exclude={"i1"})
    assert ids(got) == ["i4", "i5", "i6", "i8", "i9"]
    # The same as asking the model with every unavailable item excluded.
    assert got == model.recommend(UserContext(), 5, exclude={"i0", "i1", "i2", "i3", "i7"})


def test_an_item_made_available_again_comes_back() -> None:
    model = popularity_over(10)
    unavailable = Unavailable()
    unavailable.mark("i0", available=False)
    assert "i0" not in ids(unavailable.recommend(model, UserContext(), 3, ()))
    unavailable.mark("i0", available=True)
    assert ids(unavailable.recommend(model, UserContext(), 3, ())) == ["i0", "i1", "i2"]
    assert len(unavailable) == 0


def test_batches_ask_again_only_for_the_lists_that_met_one() -> None:
    model = CoVisitation(half_life_s=1e9)
    contexts = {}
    for user, items in {"a": ["x", "y", "x", "z"], "b": ["p", "q", "p", "r"]}.items():
        context = model.new_context()
        for t, item in enumerate(items):
            context = model.learn_one(context, Interaction(user, item, float(t))).context
        contexts[user] = context
    calls: list[int] = []
    real = model.recommend_many

    def counting(cs, k, excludes):  # type: ignore[no-untyped-def]
        calls.append(len(cs))
        return real(cs, k, excludes)

    model.recommend_many = counting  # type: ignore[method-assign]
    unavailable = Unavailable()
    plain = real([contexts["a"], contexts["b"]], 3, [(), ()])
    unavailable.mark(plain[0][0].item_id, available=False)
    got = unavailable.recommend_many(model, [contexts["a"], contexts["b"]], 3, [(), ()])
    assert calls == [2, 1]  # both once, then only a's again
    assert got[1] == plain[1]
    assert plain[0][0].item_id not in ids(got[0]) and len(got[0]) == 3


def test_it_gives_up_asking_after_a_bound_and_still_serves_no_unavailable_item() -> None:
    model = popularity_over(40)
    unavailable = Unavailable()
    # More unavailable items near the top than k, every round.
    for i in range(0, 4 * MAX_RANKINGS + 2):
        unavailable.mark(f"i{i}", available=False)
    got = unavailable.recommend(model, UserContext(), 4, ())
    assert not set(ids(got)) & unavailable.items
