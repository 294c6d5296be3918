"""The session gap: a stated setting that decides which consecutive clicks of a user count
as an item transition, and the rule `evaluate --session-gap auto` learns it by (issue 17:
on a file whose clicks are a day apart, 30 minutes left covisit ranking by popularity)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from model.base import Interaction, Recommender
from model.registry import build_recommender
from model.transitions import DEFAULT_SESSION_GAP_S, TransitionMemory, learned_session_gap
from stream.offline.evaluate import add_parser, run
from stream.settings import Settings, SettingsError

DAY = 86_400.0


def day_apart(model: Recommender, items: list[str]) -> None:
    context = model.new_context()
    for n, item in enumerate(items):
        context = model.learn_one(context, Interaction("u", item, 1e9 + n * DAY)).context


def transitions_of(model: Recommender) -> TransitionMemory:
    memory = getattr(model, "transitions", None)
    assert isinstance(memory, TransitionMemory)
    return memory


@pytest.mark.parametrize("name", ["covisit", "torch"])
def test_clicks_a_day_apart_count_only_under_a_longer_gap(name: str) -> None:
    # Expected: with a 1 h gap, a then b a day later are two visits (no a -> b); with a
    # 2-day gap they are one, and a -> b is the only successor a has.
    hour = build_recommender(name, dim=8, session_gap_s=3600.0)
    day_apart(hour, ["a", "b"])
    assert transitions_of(hour).successors("a") == {}

    two_days = build_recommender(name, dim=8, session_gap_s=2 * DAY)
    day_apart(two_days, ["a", "b"])
    assert transitions_of(two_days).successors("a") == {"b": 1.0}


def test_learned_gap_is_the_90th_percentile_of_pauses_never_below_the_default() -> None:
    minutes = [Interaction("s", "i", 60.0 * n) for n in range(10)]
    assert learned_session_gap(minutes) == DEFAULT_SESSION_GAP_S
    # Nine pauses of a day and one of a week: the 90th percentile is the day.
    days = [Interaction("r", "i", DAY * n) for n in [*range(10), 16]]
    assert learned_session_gap(days) == DAY
    # Pauses are per user: two users interleaved a minute apart never pause a day.
    interleaved = [
        Interaction(u, "i", DAY * n + (60.0 if u == "y" else 0.0)) for n in range(5) for u in "xy"
    ]
    assert learned_session_gap(reversed(interleaved)) == DAY
    assert learned_session_gap([Interaction("once", "i", 0.0)]) == DEFAULT_SESSION_GAP_S


def test_evaluate_auto_gap_lets_covisit_learn_from_day_apart_clicks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Forty users each rate films n, n + 1, n + 2 a day apart (n = user mod 10). Held out
    # is n + 2, which only the transition n + 1 -> n + 2 predicts: every film is equally
    # popular. Expected: under a 1 h gap covisit is exactly popularity; under auto
    # (a day) it ranks the held-out film first for every user.
    lines = ["userId,movieId,rating,timestamp"]
    for u in range(40):
        for step in range(3):
            lines.append(f"u{u},{(u % 10 + step) % 10},4,{1_000_000 + u + step * DAY:.0f}")
    data = tmp_path / "ratings.csv"
    data.write_text("\n".join(lines) + "\n")

    def report(*extra: str) -> dict[str, object]:
        parser = argparse.ArgumentParser(prog="streamrec")
        add_parser(parser.add_subparsers(dest="command"))
        argv = ["evaluate", "--data", str(data), "--format", "movielens"]
        argv += ["--protocol", "last-out", "--models", "covisit,popularity", "--k", "1"]
        assert run(parser.parse_args([*argv, "--json", "--quiet", *extra])) == 0
        result: dict[str, object] = json.loads(capsys.readouterr().out)
        return result

    hour = report("--session-gap", "3600")
    assert hour["session_gap_s"] == 3600.0
    models = hour["models"]
    assert isinstance(models, dict)
    assert models["covisit"]["HR@1"] == models["popularity"]["HR@1"] < 0.5

    auto = report()
    assert auto["session_gap_s"] == DAY
    models = auto["models"]
    assert isinstance(models, dict)
    assert models["covisit"]["HR@1"] == 1.0


def test_the_worker_setting_is_read_and_checked() -> None:
    assert Settings().session_gap_s == DEFAULT_SESSION_GAP_S
    assert Settings.from_env({"STREAMREC_SESSION_GAP_S": "172800"}).session_gap_s == 2 * DAY
    with pytest.raises(SettingsError, match="(?i)session_gap_s"):
        Settings.from_env({"STREAMREC_SESSION_GAP_S": "0"})
