"""`streamrec train` on a generated session-rec file: one JSON line, a checkpoint that
loads, and the same model the worker's learn_one path would have learned."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from model import Interaction, UserContext
from model.checkpoint import load_checkpoint, save_checkpoint, sidecar_path
from model.registry import build_recommender
from stream.dev.generate import synthetic_clicks
from stream.offline.datasets import DatasetError
from stream.offline.train import TrainError, add_parser, run

EVENTS = 250


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="streamrec")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["train", *argv])


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-rec file of planted successor sequences, one click a second, written
    out of time order to check that training sorts by time."""
    path = tmp_path_factory.mktemp("data") / "clicks.txt"
    rows = [
        f"{p['session_id']}\t{p['item_id']}\t{1_700_000_000 + i}"
        for i, p in enumerate(synthetic_clicks(EVENTS, users=30, items=40, seed=1))
    ]
    path.write_text("SessionId\tItemId\tTime\n" + "\n".join(reversed(rows)) + "\n")
    return path


def train(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert run(parse(*argv, "--quiet")) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out
    summary: dict[str, Any] = json.loads(out)
    return summary


def test_train_prints_one_json_line_and_writes_a_checkpoint_that_loads(
    sessions: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model.safetensors"
    summary = train(
        capsys, "--data", str(sessions), "--model", "torch", "--dim", "16", "--out", str(out)
    )

    assert summary.keys() == {"path", "version", "sha256", "events", "seconds"}
    assert summary["path"] == str(out)
    assert summary["events"] == EVENTS
    assert summary["sha256"] == sidecar_path(out).read_text().split()[0]
    model, info = load_checkpoint(out, expected_sha256=summary["sha256"])
    assert model.version == info.version == summary["version"]
    assert info.build == {"dim": 16, "seed": 0}
    assert info.metadata == {
        "data": "clicks.txt",
        "format": "session-rec",
        "events": EVENTS,
        "epochs": 1,
    }
    # Training contexts are not saved: a user the worker has not seen starts fresh.
    context = UserContext(recent=("i3",))
    assert len(model.recommend(model.new_context(), 10)) == 10
    assert len(model.recommend(context, 10, exclude={"i3"})) == 10


def test_train_learns_what_the_learn_one_path_learns(
    sessions: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The same events fed by hand, in time order, give the same learned state.
    summary = train(
        capsys,
        *("--data", str(sessions), "--model", "covisit", "--out", str(tmp_path / "cv.safetensors")),
    )
    expected = build_recommender("covisit")
    contexts: dict[str, UserContext] = {}
    lines = sessions.read_text().splitlines()[1:]
    for line in sorted(lines, key=lambda line: int(line.split("\t")[2])):
        session, item, time = line.split("\t")
        event = Interaction(session, item, float(time), session_id=session)
        contexts[session] = expected.learn_one(
            contexts.get(session, expected.new_context()), event
        ).context
    by_hand = save_checkpoint(expected, tmp_path / "by-hand.safetensors")
    assert load_checkpoint(summary["path"])[1].content_sha256 == by_hand.content_sha256


def test_limit_epochs_and_version(
    sessions: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pop.safetensors"
    summary = train(
        capsys,
        *("--data", str(sessions), "--model", "popularity", "--out", str(out)),
        *("--limit", "50", "--epochs", "2", "--version", "pop-test.1"),
    )
    assert summary["events"] == 100
    assert summary["version"] == "pop-test.1"
    model, info = load_checkpoint(out)
    assert info.metadata["events"] == 50
    assert len(model.state_dict()["ids"]) <= 50


@pytest.mark.parametrize(
    "argv, error, message",
    [
        (("--data", "{tmp}/absent.txt"), DatasetError, "no dataset file"),
        (("--epochs", "0"), TrainError, "--epochs must be at least 1"),
        (("--limit", "0"), TrainError, "--limit must be at least 1"),
        (("--dim", "0"), TrainError, "--dim must be at least 1"),
        (("--out", "{tmp}/no/such/dir/m.safetensors"), TrainError, "does not exist"),
        (("--out", "{tmp}"), TrainError, "is a directory"),
        (("--version", "bad version"), ValueError, "must be 1-128"),
    ],
)
def test_user_errors_raise_one_line_value_errors(
    sessions: Path, tmp_path: Path, argv: tuple[str, ...], error: type[Exception], message: str
) -> None:
    defaults = {"--data": str(sessions), "--out": str(tmp_path / "m.safetensors")}
    given = dict(zip(argv[::2], (a.format(tmp=tmp_path) for a in argv[1::2]), strict=True))
    args = parse(*(x for pair in {**defaults, **given}.items() for x in pair), "--quiet")
    with pytest.raises(error, match=message) as exc:
        run(args)
    assert isinstance(exc.value, ValueError) and "\n" not in str(exc.value)
    assert not (tmp_path / "m.safetensors").exists()


def test_an_empty_file_is_a_user_error(tmp_path: Path) -> None:
    data = tmp_path / "empty.txt"
    data.write_text("SessionId\tItemId\tTime\n")
    args = parse("--data", str(data), "--out", str(tmp_path / "m.safetensors"), "--quiet")
    with pytest.raises(TrainError, match="no interactions"):
        run(args)


@pytest.mark.parametrize(("flag", "expected"), [((), 3600.0), (("--half-life", "60"), 60.0)])
def test_half_life_is_saved_in_the_checkpoint(
    sessions: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flag: tuple[str, ...],
    expected: float,
) -> None:
    # Expected: the worker serving this checkpoint decays popularity as trained; auto
    # (no flag) is the live choice, 1 h.
    out = tmp_path / "p.safetensors"
    train(capsys, "--data", str(sessions), "--model", "popularity", "--out", str(out), *flag)
    model, _ = load_checkpoint(out)
    assert model.state_dict()["half_life_s"] == expected


@pytest.mark.parametrize(
    ("flag", "expected"), [((), 1800.0), (("--session-gap", "86400"), 86400.0)]
)
def test_session_gap_is_saved_in_the_checkpoint(
    sessions: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flag: tuple[str, ...],
    expected: float,
) -> None:
    # Expected: auto learns the gap from the file, whose clicks are a second apart, so it
    # keeps the 30-minute floor; the worker serving the checkpoint counts transitions so.
    out = tmp_path / "c.safetensors"
    train(capsys, "--data", str(sessions), "--model", "covisit", "--out", str(out), *flag)
    model, _ = load_checkpoint(out)
    assert model.state_dict()["transitions"]["session_gap_s"] == expected


def test_train_with_a_catalogue_saves_a_content_mapping_learned_from_the_clicks(
    sessions: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Items i0..i39 are clicked; "unseen" shares a category with them and never is.
    catalogue = tmp_path / "items.csv"
    rows = [f"i{n},item {n},,kind{n % 4}" for n in range(40)] + ["unseen,new,,kind1"]
    catalogue.write_text("item_id,title,text,categories\n" + "\n".join(rows) + "\n")
    out = tmp_path / "content.safetensors"
    train(
        capsys,
        *("--data", str(sessions), "--dim", "16", "--out", str(out)),
        *("--items", str(catalogue), "--items-format", "csv"),
    )
    model = load_checkpoint(out)[0]
    vector = model.content_vectors(["unseen"])["unseen"]  # type: ignore[attr-defined]
    assert float((vector**2).sum()) > 0  # the mapping learned: a zero mapping gives 0

    with pytest.raises(TrainError, match="--items needs a model that takes content"):
        run(parse("--data", str(sessions), "--model", "covisit", "--out", str(out),
                  "--items", str(catalogue)))  # fmt: skip
    with pytest.raises(TrainError, match="no catalogue file"):
        run(parse("--data", str(sessions), "--out", str(out), "--items", str(tmp_path / "no")))
