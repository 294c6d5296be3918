"""`read_interactions`: each format into wire payloads in event-time order; bad files are
a `DatasetError` that names the file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stream.offline.datasets import FORMATS, DatasetError, read_interactions

SHARED_DATA = Path(__file__).parents[3] / "shared" / "data"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_session_rec_rows_become_sessions_as_users(tmp_path: Path) -> None:
    path = write(
        tmp_path / "clicks.txt",
        "SessionId\tItemId\tTime\n"
        "1\t214536502\t1396860669.277\n"
        "2\t214536500\t1396860000.5\n"
        "1\t214536506\t1396860886.998\n",
    )
    assert read_interactions(path, "session-rec") == [
        {"user_id": "2", "item_id": "214536500", "timestamp": 1396860000.5, "session_id": "2"},
        {"user_id": "1", "item_id": "214536502", "timestamp": 1396860669.277, "session_id": "1"},
        {"user_id": "1", "item_id": "214536506", "timestamp": 1396860886.998, "session_id": "1"},
    ]


def test_movielens_ratings_csv_with_header(tmp_path: Path) -> None:
    path = write(
        tmp_path / "ratings.csv",
        "userId,movieId,rating,timestamp\n"
        "1,3,4.0,964981247\n"
        "1,1,4.0,964982703\n"
        "2,50,5.0,964980000\n",
    )
    assert read_interactions(path, "movielens") == [
        {"user_id": "2", "item_id": "50", "timestamp": 964980000.0},
        {"user_id": "1", "item_id": "3", "timestamp": 964981247.0},
        {"user_id": "1", "item_id": "1", "timestamp": 964982703.0},
    ]


def test_movielens_u_data_without_header(tmp_path: Path) -> None:
    path = write(
        tmp_path / "u.data",
        "196\t242\t3\t881250949\n186\t302\t3\t891717742\n\n22\t377\t1\t878887116\n",
    )
    assert read_interactions(path, "movielens") == [
        {"user_id": "22", "item_id": "377", "timestamp": 878887116.0},
        {"user_id": "196", "item_id": "242", "timestamp": 881250949.0},
        {"user_id": "186", "item_id": "302", "timestamp": 891717742.0},
    ]


def test_generic_csv(tmp_path: Path) -> None:
    path = write(
        tmp_path / "events.csv",
        "user_id,item_id,timestamp,extra\nalice,book,1700000100,x\nbob,pen,1700000000.25,y\n",
    )
    assert read_interactions(path, "csv") == [
        {"user_id": "bob", "item_id": "pen", "timestamp": 1700000000.25},
        {"user_id": "alice", "item_id": "book", "timestamp": 1700000100.0},
    ]


def test_equal_timestamps_keep_file_order(tmp_path: Path) -> None:
    rows = "".join(f"u{i},i{i},{1700000000 + (i % 2)}\n" for i in range(10))
    path = write(tmp_path / "ties.csv", "user_id,item_id,timestamp\n" + rows)
    got = [row["user_id"] for row in read_interactions(path, "csv")]
    assert got == ["u0", "u2", "u4", "u6", "u8", "u1", "u3", "u5", "u7", "u9"]


def test_accepts_a_str_path(tmp_path: Path) -> None:
    path = write(tmp_path / "e.csv", "user_id,item_id,timestamp\nu,i,1\n")
    assert read_interactions(str(path), "csv") == [
        {"user_id": "u", "item_id": "i", "timestamp": 1.0}
    ]


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_file_names_the_path(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "nowhere" / "clicks.txt"
    with pytest.raises(DatasetError, match=re.escape(str(path))):
        read_interactions(path, fmt)


def test_directory_is_not_a_dataset_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path))):
        read_interactions(tmp_path, "csv")


def test_unknown_format_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "e.csv", "user_id,item_id,timestamp\nu,i,1\n")
    with pytest.raises(DatasetError, match="parquet"):
        read_interactions(path, "parquet")


SESSION_REC = "SessionId\tItemId\tTime\n1\t2\t1396860669.5\n"
RATINGS = "userId,movieId,rating,timestamp\n1,3,4.0,964981247\n"
GENERIC = "user_id,item_id,timestamp\nu,i,1700000000\n"


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        ("session-rec", RATINGS),
        ("session-rec", GENERIC),
        ("session-rec", "SessionId\tItemId\tTime\n1\t2\tyesterday\n"),
        ("movielens", SESSION_REC),
        ("movielens", GENERIC),
        ("movielens", "userId,movieId,rating,timestamp\n1,3,4.0\n"),
        ("movielens", "196\t242\t3\tlater\n"),
        ("csv", SESSION_REC),
        ("csv", RATINGS),
        ("csv", "user_id,item_id,timestamp\nu,i,soon\n"),
    ],
    ids=[
        "session_rec<-ratings",
        "session_rec<-csv",
        "session_rec_bad_time",
        "movielens<-session_rec",
        "movielens<-csv",
        "movielens_short_row",
        "u_data_bad_time",
        "csv<-session_rec",
        "csv<-ratings",
        "csv_bad_time",
    ],
)
def test_content_in_another_format_is_a_dataset_error(tmp_path: Path, fmt: str, text: str) -> None:
    path = write(tmp_path / "data.txt", text)
    with pytest.raises(DatasetError, match=re.escape(str(path))):
        read_interactions(path, fmt)


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        ("csv", "user_id,item_id,timestamp\nu1,i1\n"),
        ("session-rec", "SessionId\tItemId\tTime\n1\t2\n"),
    ],
    ids=["csv", "session_rec"],
)
def test_truncated_row_is_a_dataset_error(tmp_path: Path, fmt: str, text: str) -> None:
    # Bug: csv.DictReader fills a short row's missing columns with None, float(None)
    # raises TypeError, and read_interactions does not turn TypeError into DatasetError.
    path = write(tmp_path / "short.txt", text)
    try:
        read_interactions(path, fmt)
    except DatasetError as exc:
        assert str(path) in str(exc)
    except Exception as exc:
        pytest.fail(f"a truncated {fmt} row raised {exc!r}, not DatasetError")
    else:
        pytest.fail(f"a truncated {fmt} row was accepted")


def data_rows(path: Path) -> int:
    """Non-blank lines after the header, counted without the reader under test."""
    with path.open() as handle:
        return sum(1 for line in handle if line.strip()) - 1


@pytest.mark.dataset
@pytest.mark.parametrize(
    ("relative", "fmt", "published_rows"),
    [
        ("yoochoose-100k/yoochoose-clicks-100k_test.txt", "session-rec", 13_568),
        ("ml-latest-small/ratings.csv", "movielens", 100_836),
    ],
    ids=["yoochoose-100k", "ml-latest-small"],
)
def test_shared_datasets(relative: str, fmt: str, published_rows: int) -> None:
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"{path} is not present")
    got = read_interactions(path, fmt)
    # Every row of the file is read, including a last line without a newline. The shared
    # ratings.csv holds one row more than the published 100,836 (a final
    # "999,999999,5.0,1493846415"), so the count comes from the file itself.
    assert len(got) == data_rows(path) >= published_rows
    timestamps = [row["timestamp"] for row in got]
    assert timestamps == sorted(timestamps)
    assert all(isinstance(row["user_id"], str) and row["user_id"] for row in got)
    assert all(isinstance(row["item_id"], str) and row["item_id"] for row in got)
