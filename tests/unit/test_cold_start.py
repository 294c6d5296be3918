"""The cold-start protocol (issue 15) on hand-made streams with known answers, and the
catalogue files it reads."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.base import Interaction, OnlineRecommender, Scored, Update, UserContext
from model.content import ItemContent
from model.evaluation import cold_start
from stream.offline.catalogue_files import read_catalogue_file
from stream.offline.datasets import DatasetError


class Fixed(OnlineRecommender):
    """Always shows `shown`, best first; remembers the content it was given and when."""

    name = "fixed"
    max_recent = 5

    def __init__(self, shown: list[str]) -> None:
        self.shown = shown
        self.content: dict[str, ItemContent] = {}
        self.content_when_first_learned: dict[str, ItemContent] | None = None

    def default_version(self) -> str:
        return "fixed"

    def set_content(self, contents: Mapping[str, ItemContent]) -> None:
        self.content.update(contents)

    def content_vectors(self, item_ids: Sequence[str]) -> dict[str, np.ndarray]:
        return {}

    def learn_one(self, context: UserContext, interaction: Interaction) -> Update:
        if self.content_when_first_learned is None:
            self.content_when_first_learned = dict(self.content)
        return Update(self.advance(context, interaction))

    def recommend(
        self, context: UserContext, k: int, exclude: Collection[str] = ()
    ) -> list[Scored]:
        return [Scored(i, -r) for r, i in enumerate(self.shown) if i not in exclude][:k]

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


def test_new_item_hits_count_clicks_on_items_with_fewer_than_five_earlier_clicks() -> None:
    # "a" is always shown and clicked 7 times by 7 users: its first 5 clicks are on a
    # new item (0..4 earlier clicks), all hits. "b" is never shown: 2 new misses. The
    # 6th and 7th clicks on "a" are hits but not new. new_item_HR@20 = 5 / 7.
    clicks = ["a", "b", "a", "a", "b", "a", "a", "a", "a"]
    events = [Interaction(f"u{t}", item, float(t)) for t, item in enumerate(clicks)]
    contents = {"a": ItemContent(title="A"), "b": ItemContent(title="B")}
    model = Fixed(["a", "z"])
    result = cold_start(model, events, contents, ks=(10, 20))
    assert result["new_item_predictions"] == 7
    assert result["new_item_HR@20"] == pytest.approx(5 / 7)
    assert result["HR@20"] == pytest.approx(7 / 9)
    assert result["predictions"] == 9
    # The catalogue was known before the first click.
    assert model.content_when_first_learned == contents


def test_new_item_hits_use_the_list_shown_to_that_user_with_exclusions() -> None:
    # u0 clicks "a" then "b": its second list excludes "a" (seen), so "b" (shown 2nd,
    # within K 1 only after the exclusion) is a hit at K 1; the first click on "a" too.
    events = [Interaction("u0", "a", 0.0), Interaction("u0", "b", 1.0)]
    result = cold_start(Fixed(["a", "b"]), events, {}, ks=(1,), exclude="seen")
    assert result["new_item_HR@1"] == 1.0 and result["new_item_predictions"] == 2
    result = cold_start(Fixed(["a", "b"]), events, {}, ks=(1,), exclude="none")
    assert result["new_item_HR@1"] == 0.5


def test_movielens_catalogue(tmp_path: Path) -> None:
    movies = tmp_path / "movies.csv"
    movies.write_text(
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation|Children\n"
        '2,"American President, The (1995)",Comedy|Drama|Romance\n'
        "3,Unknown (2001),(no genres listed)\n"
    )
    contents = read_catalogue_file(movies, "movielens")
    assert contents["1"] == ItemContent(
        title="Toy Story (1995)", categories=("Adventure", "Animation", "Children")
    )
    assert contents["2"].title == "American President, The (1995)"
    assert contents["3"].categories == ()


def test_csv_catalogue(tmp_path: Path) -> None:
    items = tmp_path / "items.csv"
    items.write_text(
        "item_id,title,text,categories\n"
        "x1,Red kettle,boils fast,kitchen|electric\n"
        "x2,Mug,,\n"
        "x1,Red kettle 2,boils faster,kitchen\n"
    )
    contents = read_catalogue_file(items, "csv")
    assert contents == {
        "x1": ItemContent(title="Red kettle 2", text="boils faster", categories=("kitchen",)),
        "x2": ItemContent(title="Mug"),
    }


def test_bad_catalogues_are_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no catalogue file"):
        read_catalogue_file(tmp_path / "missing.csv", "csv")
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("id,name\n1,a\n")
    with pytest.raises(DatasetError, match="wrong.csv: the header has unknown columns id, name"):
        read_catalogue_file(wrong, "csv")
    with pytest.raises(DatasetError, match="unknown catalogue format"):
        read_catalogue_file(wrong, "xml")
