"""The optional pretrained text encoder for item content (issue 15): WordLlama from the
`content` extra fills `ItemContent.embedding`; without it, one line says what to install."""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from model.content import ItemContent
from model.pretrained_text import WORDLLAMA_DIM, MissingTextEncoder, embed_contents, item_text
from stream.offline.evaluate import add_parser, run

ROOT = Path(__file__).resolve().parents[2]
INSTALL = "pip install 'streamrec[content]'"


def test_the_content_extra_holds_wordllama_and_the_tests_do_not_need_it() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert extras["content"] == ["wordllama==0.4.0.post1"]
    assert not any("wordllama" in r or "content" in r for r in extras["test"])


def test_item_text_joins_title_categories_and_text() -> None:
    film = ItemContent(title="Heat (1995)", text="a heist", categories=("Action", "Crime"))
    assert item_text(film) == "Heat (1995). Action Crime. a heist"
    assert item_text(ItemContent(categories=("Drama",))) == "Drama"


def test_without_wordllama_the_error_is_one_line_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "wordllama", None)  # `import wordllama` raises
    with pytest.raises(MissingTextEncoder) as caught:
        embed_contents({"1": ItemContent(title="Heat")}, what="--items-encoder wordllama")
    assert str(caught.value) == (
        f"--items-encoder wordllama needs wordllama, from the content extra: {INSTALL}"
    )


def test_evaluate_without_wordllama_prints_one_line_and_returns_1(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "wordllama", None)
    data = tmp_path / "ratings.csv"
    data.write_text("userId,movieId,rating,timestamp\n1,1,4.0,1600000000\n1,2,4.0,1600000001\n")
    items = tmp_path / "movies.csv"
    items.write_text("movieId,title,genres\n1,Heat (1995),Action|Crime\n2,Up (2009),Comedy\n")
    parser = add_parser(argparse.ArgumentParser().add_subparsers())
    args = parser.parse_args(
        ["--data", str(data), "--format", "movielens", "--protocol", "cold-start"]
        + ["--items", str(items), "--items-format", "movielens", "--items-encoder", "wordllama"]
        + ["--models", "popularity", "--quiet"]
    )
    assert run(args) == 1
    assert capsys.readouterr().err.splitlines() == [
        "streamrec evaluate: error: --items-encoder wordllama needs wordllama, "
        f"from the content extra: {INSTALL}"
    ]


def test_wordllama_embeddings_are_256_d_repeatable_and_closer_for_similar_titles() -> None:
    pytest.importorskip("wordllama")
    contents = {
        "cat": ItemContent(title="The cat sat on the mat"),
        "kitten": ItemContent(title="A kitten rests on a rug"),
        "tax": ItemContent(title="Quarterly corporate tax filing deadlines"),
        "blank": ItemContent(),
    }
    first = embed_contents(contents)
    again = embed_contents(contents)
    assert first == again
    assert contents["cat"].embedding is None  # the input is left alone
    assert first["blank"].embedding is None  # nothing to embed
    vectors = {i: np.asarray(first[i].embedding) for i in ("cat", "kitten", "tax")}
    for vector in vectors.values():
        assert vector.shape == (WORDLLAMA_DIM,)
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    assert vectors["cat"] @ vectors["kitten"] > vectors["cat"] @ vectors["tax"] + 0.2
