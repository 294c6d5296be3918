"""`streamrec train`: learn a model offline from an interaction file, save a checkpoint.

Training is the worker's own learning replayed: every interaction, in event-time order,
goes through `Recommender.learn_one` with the user's context from a dict, exactly as the
worker applies a click with the context from its user table. There is no batched
training path to drift from the online one.

The checkpoint holds the model (item representations, weights, counts), not the user
contexts learned alongside it: live contexts belong to the worker's user table, and a
user the worker has not seen starts from a fresh context, as with any new user.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stream.catalogue import CATALOGUE_FORMATS
from stream.offline.datasets import FORMATS, read_interactions
from stream.settings import MODELS

if TYPE_CHECKING:
    from model.base import Interaction, Recommender, UserContext

# torch, the model package and tqdm are imported by `run`, not here: the CLI builds
# every subcommand's parser at start, and `streamrec consume` should not load torch.


class TrainError(ValueError):
    """A training request that cannot run (bad arguments, nothing to learn from)."""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `train` subcommand to `subparsers` (from `add_subparsers`) and return it."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "train",
        help="learn a model from an interaction file and save a checkpoint",
        description="Replay an interaction file in event-time order through the model's "
        "online learning (the worker's learn_one path), save the model as a safetensors "
        "checkpoint with a .sha256 sidecar, and print one JSON line: path, version, "
        "sha256 (of the file), events, seconds. User contexts are not saved: the worker's "
        "user table holds the live ones.",
    )
    parser.add_argument("--data", required=True, help="interaction file to learn from")
    parser.add_argument(
        "--format",
        default="session-rec",
        choices=FORMATS,
        help="format of --data (default session-rec)",
    )
    parser.add_argument(
        "--model", default="torch", choices=MODELS, help="recommender (default torch)"
    )
    parser.add_argument("--out", required=True, help="checkpoint file to write (.safetensors)")
    parser.add_argument("--dim", type=int, default=64, help="vector dimension (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="model seed (default 0)")
    parser.add_argument(
        "--epochs",
        type=int,
        default=1,
        help="passes over the data, each from fresh user contexts (default 1)",
    )
    parser.add_argument(
        "--half-life",
        default="auto",
        metavar="SECONDS|auto",
        help="popularity half-life in event-time seconds, saved in the checkpoint; auto "
        "(default): 3600, since the worker ranks with counts that are current (see "
        "`evaluate --half-life`)",
    )
    parser.add_argument(
        "--session-gap",
        default="auto",
        metavar="SECONDS|auto",
        help="longest pause between a user's clicks that still counts as an item "
        "transition, saved in the checkpoint; auto (default): learned from --data as "
        "`evaluate --session-gap auto` does",
    )
    parser.add_argument(
        "--items",
        metavar="FILE",
        help="a catalogue of the items' content (title, text, categories) given to the model "
        "before the first event, so the checkpoint holds a content mapping learned from "
        "the clicks: a worker started from it places new catalogue items well from the "
        "start (torch only)",
    )
    parser.add_argument(
        "--items-format",
        default="csv",
        choices=CATALOGUE_FORMATS,
        help="format of --items: movielens (movies.csv) or csv (item_id,title,text,"
        "categories; default)",
    )
    parser.add_argument("--limit", type=int, help="learn only the first N events in time order")
    parser.add_argument("--version", help="checkpoint version (default: model-time-hash)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def run(args: argparse.Namespace) -> int:
    """Train and save as `args` asks; print the JSON summary line; return 0.

    Raises TrainError, DatasetError or CheckpointError (all ValueError) with a one-line
    message for anything the user can fix.
    """
    import orjson
    import torch
    from tqdm import tqdm

    from model.base import Interaction
    from model.checkpoint import save_checkpoint
    from model.evaluation import auto_half_life
    from model.registry import build_recommender
    from model.transitions import learned_session_gap

    # One event at a time gains nothing from intra-op threads (the worker does the same).
    torch.set_num_threads(1)
    _check(args)
    started = time.perf_counter()
    rows = read_interactions(args.data, args.format)[: args.limit]
    if not rows:
        raise TrainError(f"no interactions in {args.data}")
    interactions = [
        Interaction(
            user_id=row["user_id"],
            item_id=row["item_id"],
            timestamp=row["timestamp"],
            event_type=row.get("event_type", "click"),
            session_id=row.get("session_id"),
        )
        for row in rows
    ]

    half_life_s = _half_life(getattr(args, "half_life", "auto"))
    if half_life_s is None:
        half_life_s = auto_half_life("live", interactions)
    session_gap_s = _seconds("--session-gap", getattr(args, "session_gap", "auto"))
    if session_gap_s is None:
        session_gap_s = learned_session_gap(interactions)
    model = build_recommender(
        args.model,
        dim=args.dim,
        seed=args.seed,
        half_life_s=half_life_s,
        session_gap_s=session_gap_s,
    )
    if getattr(args, "items", None):
        _give_content(model, args.items, args.items_format)
    progress = tqdm(
        total=len(interactions) * args.epochs,
        desc=f"train {args.model}",
        unit="ev",
        file=sys.stderr,
        disable=args.quiet or not sys.stderr.isatty(),
    )
    with progress:
        for _ in range(args.epochs):
            # Each pass replays the users' histories from their start, so contexts
            # begin fresh rather than linking one pass's last click to the next's first.
            learn(model, interactions, {}, progress.update)

    metadata = {
        "data": Path(args.data).name,
        "format": args.format,
        "events": len(interactions),
        "epochs": args.epochs,
    }
    info = save_checkpoint(model, args.out, version=args.version, metadata=metadata)
    summary = {
        "path": str(info.path),
        "version": info.version,
        "sha256": info.file_sha256,
        "events": len(interactions) * args.epochs,
        "seconds": round(time.perf_counter() - started, 3),
    }
    print(orjson.dumps(summary).decode(), flush=True)
    return 0


def learn(
    model: Recommender,
    interactions: Iterable[Interaction],
    contexts: dict[str, UserContext],
    on_event: Callable[[int], object] | None = None,
) -> dict[str, UserContext]:
    """Apply `interactions` in order through `learn_one`, keeping each user's context
    in `contexts` (updated in place and returned). `on_event(1)` is called after each."""
    for interaction in interactions:
        context = contexts.get(interaction.user_id)
        if context is None:
            context = model.new_context()
        contexts[interaction.user_id] = model.learn_one(context, interaction).context
        if on_event is not None:
            on_event(1)
    return contexts


def _give_content(model: Recommender, path: str, fmt: str) -> None:
    """The catalogue at `path` to `model`; TrainError for a model without content."""
    from model.content import ContentAware
    from stream.offline.catalogue_files import read_catalogue_file

    if isinstance(model, ContentAware):  # torch, as `_check` made sure
        model.set_content(read_catalogue_file(path, fmt))


def _half_life(text: str) -> float | None:
    """Seconds from `--half-life`, None for auto; TrainError otherwise."""
    return _seconds("--half-life", text)


def _seconds(flag: str, text: str) -> float | None:
    """Seconds from a `SECONDS|auto` flag, None for auto; TrainError otherwise."""
    if text == "auto":
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise TrainError(f"{flag} must be seconds > 0 or auto, not {text!r}")
    return seconds


def _check(args: argparse.Namespace) -> None:
    """Refuse bad arguments before reading the data, so a typo costs no training time."""
    for name in ("dim", "epochs"):
        if getattr(args, name) < 1:
            raise TrainError(f"--{name} must be at least 1, not {getattr(args, name)}")
    _half_life(getattr(args, "half_life", "auto"))
    _seconds("--session-gap", getattr(args, "session_gap", "auto"))
    if getattr(args, "items", None) and args.model != "torch":
        raise TrainError(f"--items needs a model that takes content (torch), not {args.model}")
    if getattr(args, "items", None) and not Path(args.items).is_file():
        raise TrainError(f"--items: no catalogue file at {args.items}")
    if args.limit is not None and args.limit < 1:
        raise TrainError(f"--limit must be at least 1, not {args.limit}")
    if args.version is not None:
        from model.checkpoint import check_version

        check_version(args.version)
    out = Path(args.out)
    if out.is_dir():
        raise TrainError(f"--out {out} is a directory; name the checkpoint file")
    if not out.parent.is_dir():
        raise TrainError(f"--out directory {out.parent} does not exist")
