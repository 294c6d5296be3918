"""`streamrec evaluate`, run through its own `add_parser` and `run` on generated files:
the JSON shape, the table, the ways to name session-split data, and one-line errors."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import pytest

from stream.offline.evaluate import add_parser, format_table, run

METRIC_KEYS = {
    "HR@10",
    "MRR@10",
    "NDCG@10",
    "HR@20",
    "MRR@20",
    "NDCG@20",
    "coverage",
    "predictions",
    "seconds",
    "events_per_s",
}


def evaluate(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="streamrec")
    add_parser(parser.add_subparsers(dest="command"))
    code = run(parser.parse_args(["evaluate", *argv]))
    out, err = capsys.readouterr()
    return code, out, err


def write_sessions(path: Path, sessions: int, start: float, seed: int) -> Path:
    """session-rec TSV: sessions of 2-6 clicks walking item n -> n + 1 (mod 30)."""
    rng = random.Random(seed)
    lines = ["SessionId\tItemId\tTime"]
    for session in range(sessions):
        item, t = rng.randrange(30), start + 60.0 * session
        for _ in range(rng.randint(2, 6)):
            lines.append(f"{seed}{session}\t{item}\t{t}")
            item, t = (item + 1) % 30, t + 5.0
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def session_files(tmp_path: Path) -> tuple[Path, Path]:
    train = write_sessions(tmp_path / "tiny_train_full.txt", 40, 1_000_000.0, seed=1)
    test = write_sessions(tmp_path / "tiny_test.txt", 10, 2_000_000.0, seed=2)
    (tmp_path / "empty").mkdir()
    return train, test


def test_json_has_every_model_and_metric(
    session_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    train, _ = session_files
    code, out, err = evaluate(
        ["--data", str(train), "--protocol", "prequential", "--dim", "8", "--json"], capsys
    )
    assert code == 0
    # Not a terminal: plain progress lines on stderr, the last of each model's at 100%.
    assert [line.split(":")[0] for line in err.splitlines() if "(100%)" in line] == [
        "torch",
        "popularity",
        "covisit",
    ]
    report = json.loads(out)  # exactly one JSON object on stdout
    assert set(report) == {
        "dataset",
        "protocol",
        "exclude",
        "half_life_s",
        "worker_half_life_s",
        "session_gap_s",
        "worker_session_gap_s",
        "models",
    }
    assert report["protocol"] == "prequential" and report["dataset"] == str(train)
    # The worker's exclusion policy and half-life unless told otherwise, and said so.
    assert report["exclude"] == "seen"
    assert report["half_life_s"] == report["worker_half_life_s"] == 3600
    assert list(report["models"]) == ["torch", "popularity", "covisit"]
    events = len(train.read_text().splitlines()) - 1
    for result in report["models"].values():
        assert set(result) == METRIC_KEYS
        assert result["predictions"] == events
        assert 0.0 <= result["HR@10"] <= result["HR@20"] <= 1.0


@pytest.mark.parametrize("how", ["train-test", "train-file", "directory"])
def test_session_split_data_can_be_named_three_ways(
    how: str, session_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    train, test = session_files
    data = {
        "train-test": ["--train", str(train), "--test", str(test)],
        "train-file": ["--data", str(train)],
        "directory": ["--data", str(train.parent)],
    }[how]
    code, out, err = evaluate(
        [*data, "--protocol", "session-split", "--models", "covisit", "--k", "5", "--json"],
        capsys,
    )
    assert code == 0, err
    result = json.loads(out)["models"]["covisit"]
    rows = test.read_text().splitlines()[1:]
    sessions = {row.split("\t")[0] for row in rows}
    assert result["predictions"] == len(rows) - len(sessions)
    assert {"HR@5", "MRR@5", "NDCG@5"} <= set(result)
    # Every test session walks the chain the training sessions taught.
    assert result["HR@5"] > 0.9


def test_table_has_a_row_per_model(
    session_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    train, _ = session_files
    code, out, _ = evaluate(
        [
            "--data",
            str(train),
            "--protocol",
            "last-out",
            "--models",
            "popularity,covisit",
            "--limit",
            "50",
            "--half-life",
            "7200",
        ],
        capsys,
    )
    assert code == 0
    title, header, *rows, note = out.strip().splitlines()
    assert title.startswith("last-out on ") and title.endswith(
        " (exclude seen, session gap 1,800 s)"
    )
    # A half-life that is not a fresh worker's: the table says so.
    assert note.startswith("popularity half-life ") and "a fresh worker's is 3,600 s" in note
    assert header.split()[:4] == ["model", "HR@10", "MRR@10", "NDCG@10"]
    assert [row.split()[0] for row in rows] == ["popularity", "covisit"]
    assert len({len(line) for line in (header, *rows)}) == 1  # aligned


def test_format_table_aligns_columns() -> None:
    report = {
        "dataset": "d",
        "protocol": "p",
        "models": {
            "a": {"HR@10": 0.5, "predictions": 1234, "seconds": 1.24, "events_per_s": 99.4},
            "long-name": {"HR@10": 0.25, "predictions": 7, "seconds": 10.0, "events_per_s": 5.0},
        },
    }
    assert format_table(report).splitlines() == [
        "p on d",
        "model       HR@10  predictions  seconds  events_per_s",
        "a          0.5000        1,234      1.2            99",
        "long-name  0.2500            7     10.0             5",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data", "{tmp}/missing.txt"], "no dataset file at {tmp}/missing.txt"),
        (["--data", "{train}", "--format", "movielens"], "is not a movielens file"),
        (["--data", "{train}", "--models", "torch,bogus"], "unknown model 'bogus'"),
        (["--data", "{train}", "--k", "10,x"], "--k must be"),
        (["--data", "{train}", "--k", "0"], "--k must be"),
        (["--data", "{train}", "--limit", "0"], "--limit must be"),
        (["--data", "{train}", "--half-life", "0"], "--half-life must be"),
        (["--data", "{train}", "--half-life", "soon"], "--half-life must be"),
        (["--protocol", "last-out"], "needs --data"),
        (["--train", "{train}", "--test", "{test}"], "--train/--test are for"),
        (["--protocol", "session-split", "--data", "{test}"], "is not a *_train_full.txt"),
        (["--protocol", "session-split", "--train", "{train}"], "together"),
        (["--protocol", "session-split", "--data", "{tmp}/nowhere"], "no dataset file or"),
        (["--protocol", "session-split", "--data", "{tmp}/empty"], "exactly one"),
        (["--protocol", "cold-start", "--data", "{train}"], "needs --items FILE"),
        (
            ["--protocol", "cold-start", "--data", "{train}", "--items", "{tmp}/no.csv"],
            "no catalogue",
        ),
        (["--data", "{train}", "--models", "torch+content"], "unknown model 'torch+content'"),
    ],
    ids=[
        "missing",
        "format",
        "model",
        "k-text",
        "k-zero",
        "limit",
        "half-life-zero",
        "half-life-text",
        "no-data",
        "train-test",
        "not-train-file",
        "train-alone",
        "missing-pair",
        "empty-dir",
        "cold-start-no-items",
        "cold-start-missing-items",
        "content-outside-cold-start",
    ],
)
def test_user_errors_are_one_line_and_exit_1(
    argv: list[str],
    message: str,
    session_files: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    train, test = session_files
    names = {"tmp": str(train.parent), "train": str(train), "test": str(test)}
    code, out, err = evaluate([arg.format(**names) for arg in argv], capsys)
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("streamrec evaluate: error: ")
    assert message.format(**names) in err


def test_chart_and_report_show_quality_over_the_stream(
    session_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train, _ = session_files
    chart, report = tmp_path / "quality.png", tmp_path / "quality.md"
    code, out, err = evaluate(
        [
            "--data",
            str(train),
            "--protocol",
            "session-split",
            "--models",
            "popularity,covisit",
            "--chart",
            str(chart),
            "--report",
            str(report),
            "--window",
            "5",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = report.read_text()
    assert "![HR@20 per window](quality.png)" in text
    assert "covisit" in text and "popularity" in text and "session-split" in text


def test_hit_log_windows_are_known_answers() -> None:
    from stream.offline.report import HitLog

    log = HitLog(k=2)
    record = log.recorder("m")
    for ranked, target in [
        (["a", "b"], "a"),
        (["a", "b"], "c"),
        (["a", "b", "c"], "c"),
        (["b"], "b"),
        (["x"], "y"),
    ]:
        record("u", ranked, target)
    # Hits: a yes, c no, c at rank 3 > k no, b yes, y no -> windows of 2: 1/2, 1/2, 0/1.
    assert log.windows(2) == {"m": [(2, 0.5), (4, 0.5), (5, 0.0)]}


def test_auto_half_life_keeps_popularity_for_last_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Expected: thirty old users clicked "classic" a year before thirty new users
    # clicked one of three recent fillers (ten clicks each); every new user's held-out
    # click is "classic", every old user's an item nobody else has. Ranked at the end
    # of the data, a 1 h half-life has forgotten "classic" (the fillers win), while
    # auto (last-out: the data's time span) still ranks it first: HR@1 = 30 / 60.
    lines = ["userId,movieId,rating,timestamp"]
    year = 365 * 86400
    for u in range(30):
        lines.append(f"old{u},classic,5,{1_000 + u}")
        lines.append(f"old{u},only{u},5,{2_000 + u}")
        lines.append(f"new{u},f{u % 3},4,{year + 10 * u}")
        lines.append(f"new{u},classic,5,{year + 10 * u + 1}")
    data = tmp_path / "ratings.csv"
    data.write_text("\n".join(lines) + "\n")
    argv = [
        "--data",
        str(data),
        "--format",
        "movielens",
        "--protocol",
        "last-out",
        "--models",
        "popularity",
        "--k",
        "1",
        "--json",
        "--quiet",
    ]

    def hr(*extra: str) -> float:
        code, out, _ = evaluate([*argv, *extra], capsys)
        assert code == 0
        return json.loads(out)["models"]["popularity"]["HR@1"]

    assert hr("--half-life", "3600") == 0.0
    assert hr() == hr("--half-life", str(year)) == 0.5


def test_cold_start_reports_new_item_hits_with_torch_content_beside_torch(
    session_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train, _ = session_files
    items = tmp_path / "items.csv"
    rows = [f"{j},Item {j},walks the chain,{'odd' if j % 2 else 'even'}|chain" for j in range(30)]
    items.write_text("item_id,title,text,categories\n" + "\n".join(rows) + "\n")
    argv = ["--data", str(train), "--protocol", "cold-start", "--items", str(items)]
    code, out, err = evaluate(
        [*argv, "--models", "popularity,torch", "--dim", "8", "--limit", "60", "--json"], capsys
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["protocol"] == "cold-start"
    assert list(report["models"]) == ["popularity", "torch", "torch+content"]
    for result in report["models"].values():
        assert set(result) == METRIC_KEYS | {"new_item_HR@20", "new_item_predictions"}
        assert result["predictions"] == 60
        # 30 items: at least the first click on each clicked item is on a new item.
        assert 0 < result["new_item_predictions"] <= 60
    table = format_table(report)
    assert "new_item_HR@20" in table.splitlines()[1] and "torch+content" in table
