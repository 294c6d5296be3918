"""`streamrec evaluate`: replay a dataset through every model under one protocol.

Where the data comes from:
- `--protocol prequential` and `--protocol last-out` read one file, `--data FILE`.
- `--protocol cold-start` reads `--data FILE` and a catalogue, `--items FILE`
  (`stream.offline.catalogue_files`); every `torch` brings a `torch+content` row.
  `--items-encoder wordllama` gives each item a pretrained text embedding first
  (model/pretrained_text.py, the `content` extra).
- `--protocol session-split` reads a training file and a test file: `--train FILE
  --test FILE`, or `--data` naming either a session-rec `*_train_full.txt` file (its
  test file is the sibling with `_test.txt` in place of `_train_full.txt`) or a
  directory holding exactly one such pair.

User errors (missing file, bad format, unknown model, bad --k) print one line
`streamrec evaluate: error: ...` on stderr and return 1; `run` handles them itself, so
it behaves the same whether called by `stream.cli` or directly.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from model import evaluation
from model.base import EXCLUSION_POLICIES, HISTORY_MAX, Interaction
from model.content import ItemContent
from model.pretrained_text import MissingTextEncoder, embed_contents
from model.registry import MODEL_NAMES, build_recommender
from model.transitions import learned_session_gap
from stream.extras import EMBEDDED_SERVICES, MissingExtra, require_dev
from stream.offline.catalogue_files import CATALOGUE_FORMATS, read_catalogue_file
from stream.offline.datasets import FORMATS, DatasetError, read_interactions
from stream.settings import DEFAULT_EXCLUSION, Settings

PROTOCOLS = ("prequential", "last-out", "session-split", "cold-start")
#: How a cold-start catalogue's items reach the model: hashed features only, or also a
#: WordLlama embedding of their text (in `ItemContent.embedding`).
ITEM_ENCODERS = ("hashed", "wordllama")
#: The torch model given the catalogue's content: a cold-start row beside `torch`.
TORCH_CONTENT = "torch+content"
_TRAIN_SUFFIX = "_train_full.txt"
_TEST_SUFFIX = "_test.txt"


class EvaluateError(ValueError):
    """A bad flag value or flag combination; the message says which."""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `evaluate` subcommand to an `add_subparsers()` object; returns it."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "evaluate",
        help="score every model on a dataset offline (HR, MRR, NDCG, coverage)",
        description="Replay a dataset in time order through each model under one protocol "
        "and print HR@K, MRR@K, NDCG@K, catalogue coverage and throughput per model. "
        "prequential: score each event before learning it. last-out: hold out each user's "
        "last event and rank for it. session-split: learn --train, then predict each test "
        "session's next click. cold-start: prequential with the catalogue's content (--items) "
        "known up front, also scored on clicks on items with fewer than 5 earlier clicks "
        "(new_item_HR). Every ranking leaves out what a worker's would (--exclude).",
    )
    parser.add_argument(
        "--data",
        help="dataset file; for session-split a *_train_full.txt "
        "file or a directory with one *_train_full.txt / *_test.txt pair",
    )
    parser.add_argument("--train", help="session-split training file (with --test)")
    parser.add_argument("--test", help="session-split test file (with --train)")
    parser.add_argument("--items", help="cold-start catalogue file (item content)")
    parser.add_argument(
        "--items-format",
        default="csv",
        choices=CATALOGUE_FORMATS,
        help="catalogue format (default csv: item_id,title,text,categories; movielens: movies.csv)",
    )
    parser.add_argument(
        "--items-encoder",
        default="hashed",
        choices=ITEM_ENCODERS,
        help="cold-start item content (default hashed: hashed title, text and category "
        "features; wordllama: also a pretrained text embedding, pip install "
        "'streamrec[content]')",
    )
    parser.add_argument(
        "--format", default="session-rec", choices=FORMATS, help="file format (default session-rec)"
    )
    parser.add_argument(
        "--protocol",
        default="prequential",
        choices=PROTOCOLS,
        help="evaluation protocol (default prequential)",
    )
    parser.add_argument(
        "--models",
        default=",".join(MODEL_NAMES),
        help=f"comma-separated models (default {','.join(MODEL_NAMES)})",
    )
    parser.add_argument("--k", default="10,20", help="comma-separated cut-offs (default 10,20)")
    parser.add_argument("--dim", type=int, default=64, help="torch model dimension (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="torch model seed (default 0)")
    parser.add_argument(
        "--half-life",
        default="auto",
        metavar="SECONDS|auto",
        help="popularity half-life of every model, in event-time seconds; auto (default): "
        "twice the data's time span for last-out, whose held-out events are ranked with the "
        "counts at the data's end, else 3600",
    )
    parser.add_argument(
        "--exclude",
        default=DEFAULT_EXCLUSION,
        choices=EXCLUSION_POLICIES,
        help="what every ranking leaves out, as a worker's STREAMREC_EXCLUDE does (default "
        f"{DEFAULT_EXCLUSION}, the worker's): seen (the user's recent items), last, none "
        f"(session-rec's published protocol counts repeats), history (every item the user "
        f"interacted with, up to {HISTORY_MAX})",
    )
    parser.add_argument(
        "--session-gap",
        default="auto",
        metavar="SECONDS|auto",
        help="longest pause between a user's clicks that covisit and torch still count as "
        "a transition; auto (default): the 90th percentile of the pauses between each "
        "user's consecutive clicks in the (training) file, at least 1800 "
        "(STREAMREC_SESSION_GAP_S is the worker's)",
    )
    parser.add_argument(
        "--limit", type=int, metavar="N", help="use only the first N events (by time) of each file"
    )
    parser.add_argument(
        "--through-kafka",
        action="store_true",
        help="also run each model through the live pipeline (embedded broker and Redis, a "
        "worker started from a checkpoint: of the training file for session-split, a fresh "
        "model otherwise) and report what it emitted as <model>@kafka beside the "
        "in-process figures; for last-out also the pull API's answers at the end, as "
        "<model>@kafka-pull",
    )
    parser.add_argument(
        "--chart",
        metavar="PNG",
        help="write a PNG chart of HR@K per window of predictions per model",
    )
    parser.add_argument(
        "--report", metavar="MD", help="write a markdown report: command, machine, table, chart"
    )
    parser.add_argument(
        "--window", type=int, default=500, help="predictions per window of the chart (default 500)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1,
        metavar="N",
        help="feed the models' batch methods chunks of N events, as a batching worker "
        "would (default 1: one event at a time)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object, no table")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def run(args: argparse.Namespace) -> int:
    """Evaluate and print; 0 on success, 1 after a one-line message for a user error."""
    from stream.offline.report import HitLog, write_chart, write_report

    chart = getattr(args, "chart", None)
    markdown = getattr(args, "report", None)
    hit_log = HitLog(max(parse_ks(args.k))) if chart or markdown else None
    try:
        if hit_log is not None and args.window < 1:
            raise EvaluateError(f"--window must be at least 1, not {args.window}")
        for target in (chart, markdown):
            if target and not Path(target).resolve().parent.is_dir():
                raise EvaluateError(f"no directory for {target}")
        if chart:
            require_dev("--chart", ["matplotlib"])
        if getattr(args, "through_kafka", False):
            require_dev("--through-kafka", EMBEDDED_SERVICES)
        report = evaluate(args, hit_log)
    except (DatasetError, EvaluateError, MissingExtra, MissingTextEncoder) as exc:
        print(f"streamrec evaluate: error: {exc}", file=sys.stderr)
        return 1
    table = format_table(report)
    if args.json:
        print(orjson.dumps(report).decode(), flush=True)
    else:
        print(table, flush=True)
    if hit_log is not None:
        windows = hit_log.windows(args.window)
        title = f"{report['protocol']} on {Path(str(report['dataset'])).name}"
        if chart:
            write_chart(Path(chart), windows, k=hit_log.k, title=title)
        if markdown:
            write_report(
                Path(markdown),
                table=table,
                command=sys.argv[1:],
                chart=Path(chart) if chart else None,
                window=args.window,
                k=hit_log.k,
            )
    return 0


def evaluate(args: argparse.Namespace, hit_log: Any = None) -> dict[str, Any]:
    """The report `run` prints: {"dataset", "protocol", "models": {name: metrics}}.
    With a `HitLog`, every scored prediction of every model is also logged into it."""
    import torch

    cold = args.protocol == "cold-start"
    models = parse_models(args.models, cold_start=cold)
    contents = read_catalogue(args) if cold else {}
    ks = parse_ks(args.k)
    if args.limit is not None and args.limit < 1:
        raise EvaluateError(f"--limit must be at least 1, not {args.limit}")
    if args.dim < 1:
        raise EvaluateError(f"--dim must be at least 1, not {args.dim}")
    batch_size = getattr(args, "batch_size", 1)
    if batch_size < 1:
        raise EvaluateError(f"--batch-size must be at least 1, not {batch_size}")
    if cold and batch_size != 1:
        raise EvaluateError("--protocol cold-start runs one event at a time (--batch-size 1)")
    dataset, files = resolve_data(args.protocol, args.data, args.train, args.test)
    streams = [load(path, args.format, args.limit) for path in files]

    exclude = getattr(args, "exclude", DEFAULT_EXCLUSION)
    half_life_s = parse_half_life(getattr(args, "half_life", "auto"))
    if half_life_s is None:
        half_life_s = evaluation.auto_half_life(
            args.protocol, [event for events in streams for event in events]
        )
    session_gap_s = parse_session_gap(getattr(args, "session_gap", "auto"))
    if session_gap_s is None:
        session_gap_s = learned_session_gap(streams[0])
    total = sum(len(events) for events in streams)
    results: dict[str, Any] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: repeatable timings and results
    try:
        for name in models:
            model = build_recommender(
                "torch" if name == TORCH_CONTENT else name,
                dim=args.dim,
                seed=args.seed,
                half_life_s=half_life_s,
                session_gap_s=session_gap_s,
            )
            logged = hit_log.recorder(name) if hit_log is not None else None
            with _progress_bar(name, total, disabled=args.quiet) as progress:
                if cold:
                    given = contents if name == TORCH_CONTENT else {}
                    result = evaluation.cold_start(
                        model, streams[0], given, ks, progress, logged, exclude
                    )
                elif args.protocol == "prequential":
                    result = evaluation.prequential(
                        model, streams[0], ks, progress, logged, batch_size, exclude
                    )
                elif args.protocol == "last-out":
                    result = evaluation.last_out(
                        model, streams[0], ks, progress, logged, batch_size, exclude
                    )
                else:
                    result = evaluation.session_split(
                        model, streams[0], streams[1], ks, progress, logged, batch_size, exclude
                    )
            results[name] = result
            if getattr(args, "through_kafka", False) and name != TORCH_CONTENT:
                live = _through_kafka(args, name, streams, ks, half_life_s, session_gap_s, exclude)
                results.update(live)
    finally:
        torch.set_num_threads(threads)
    return {
        "dataset": dataset,
        "protocol": args.protocol,
        "exclude": exclude,
        "half_life_s": half_life_s,
        "worker_half_life_s": float(Settings().half_life_s),
        "session_gap_s": session_gap_s,
        "worker_session_gap_s": float(Settings().session_gap_s),
        "models": results,
    }


def _through_kafka(
    args: argparse.Namespace,
    name: str,
    streams: list[list[Interaction]],
    ks: tuple[int, ...],
    half_life_s: float,
    session_gap_s: float,
    exclude: str,
) -> dict[str, dict[str, Any]]:
    """The protocol through the live pipeline (stream/offline/live_eval.py), as rows
    named `<model>@kafka` (and `<model>@kafka-pull` for last-out)."""
    from stream.offline import live_eval

    options: dict[str, Any] = {
        "dim": args.dim,
        "seed": args.seed,
        "half_life_s": half_life_s,
        "session_gap_s": session_gap_s,
        "exclude": exclude,
        "progress": not args.quiet and sys.stderr.isatty(),
    }
    if args.protocol == "session-split":
        return {
            f"{name}@kafka": live_eval.session_split_through_kafka(
                name, streams[0], streams[1], ks, **options
            )
        }
    if args.protocol == "prequential":
        return {
            f"{name}@kafka": live_eval.prequential_through_kafka(name, streams[0], ks, **options)
        }
    rows = live_eval.last_out_through_kafka(name, streams[0], ks, **options)
    return {f"{name}@kafka": rows["emitted"], f"{name}@kafka-pull": rows["pull"]}


def parse_models(text: str, cold_start: bool = False) -> list[str]:
    """The models named in `text`, in order, once each; for cold-start `torch+content`
    is a choice too, and each `torch` brings it right after."""
    choices = (*MODEL_NAMES, TORCH_CONTENT) if cold_start else MODEL_NAMES
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in choices]
    if unknown or not names:
        raise EvaluateError(
            f"unknown model {', '.join(map(repr, unknown)) or repr(text)}; "
            f"choose from {','.join(choices)}"
        )
    if cold_start:
        names = [
            n for name in names for n in ([name, TORCH_CONTENT] if name == "torch" else [name])
        ]
    return list(dict.fromkeys(names))


def read_catalogue(args: argparse.Namespace) -> dict[str, ItemContent]:
    """The cold-start catalogue: `--items` read as `--items-format`, embedded as
    `--items-encoder` says."""
    items = getattr(args, "items", None)
    if not items:
        raise EvaluateError("--protocol cold-start needs --items FILE (the catalogue)")
    contents = read_catalogue_file(items, getattr(args, "items_format", "csv"))
    if not contents:
        raise DatasetError(f"{items} holds no items")
    if getattr(args, "items_encoder", "hashed") == "wordllama":
        return embed_contents(contents, what="--items-encoder wordllama")
    return contents


def parse_half_life(text: str) -> float | None:
    """Seconds from `--half-life`, or None for `auto`; EvaluateError otherwise."""
    if text == "auto":
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise EvaluateError(f"--half-life must be seconds > 0 or auto, not {text!r}")
    return seconds


def parse_session_gap(text: str) -> float | None:
    """Seconds from `--session-gap`, or None for `auto`; EvaluateError otherwise."""
    try:
        return parse_half_life(text)
    except EvaluateError:
        raise EvaluateError(f"--session-gap must be seconds > 0 or auto, not {text!r}") from None


def parse_ks(text: str) -> tuple[int, ...]:
    try:
        return evaluation.check_ks(int(part) for part in text.split(","))
    except ValueError:
        raise EvaluateError(
            f"--k must be comma-separated integers >= 1, like 10,20, not {text!r}"
        ) from None


def resolve_data(
    protocol: str, data: str | None, train: str | None, test: str | None
) -> tuple[str, list[Path]]:
    """(the dataset's name for the report, the files the protocol reads)."""
    if protocol != "session-split":
        if train or test:
            raise EvaluateError("--train/--test are for --protocol session-split; use --data")
        if not data:
            raise EvaluateError(f"--protocol {protocol} needs --data FILE")
        return data, [Path(data)]
    if train or test:
        if data or not (train and test):
            raise EvaluateError("session-split takes --train and --test together, or --data")
        return f"{train} + {test}", [Path(train), Path(test)]
    if not data:
        raise EvaluateError("session-split needs --train FILE --test FILE, or --data")
    train_path, test_path = session_pair(Path(data))
    return data, [train_path, test_path]


def session_pair(path: Path) -> tuple[Path, Path]:
    """The (train, test) files for `--data`: a `*_train_full.txt` file and its
    `*_test.txt` sibling, or the one such pair in a directory. DatasetError otherwise."""
    if not path.exists():
        raise DatasetError(f"no dataset file or directory at {path}")
    if path.is_dir():
        trains = sorted(path.glob(f"*{_TRAIN_SUFFIX}"))
        if len(trains) != 1:
            raise DatasetError(
                f"{path} must hold exactly one *{_TRAIN_SUFFIX} file, found {len(trains)}; "
                "or pass --train FILE --test FILE"
            )
        path = trains[0]
    if not path.name.endswith(_TRAIN_SUFFIX):
        raise DatasetError(
            f"{path} is not a *{_TRAIN_SUFFIX} file; session-split needs a training and a "
            "test file: pass --train FILE --test FILE"
        )
    test = path.with_name(path.name[: -len(_TRAIN_SUFFIX)] + _TEST_SUFFIX)
    if not test.is_file():
        raise DatasetError(f"no test file {test} next to {path}")
    return path, test


def load(path: Path, fmt: str, limit: int | None) -> list[Interaction]:
    rows = read_interactions(path, fmt)[:limit]
    if not rows:
        raise DatasetError(f"{path} holds no events")
    return [
        Interaction(
            user_id=row["user_id"],
            item_id=row["item_id"],
            timestamp=row["timestamp"],
            event_type=row.get("event_type", "click"),
            session_id=row.get("session_id"),
        )
        for row in rows
    ]


@contextmanager
def _progress_bar(
    name: str,
    total: int,
    *,
    disabled: bool,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Callable[[int], object]]:
    """An `update(events)` that reports progress on stderr: a tqdm bar on a terminal,
    else (a log file, a pipe) a plain line at every tenth of `total` and at least every
    `_PROGRESS_EVERY_S` seconds, so a long run redirected to a file still shows it is
    alive. Nothing when `disabled`."""
    if disabled:
        yield lambda events: None
        return
    if sys.stderr.isatty():
        from tqdm import tqdm

        with tqdm(total=total, desc=name, unit="ev", file=sys.stderr) as bar:
            yield bar.update
        return
    lines = _ProgressLines(name, total, clock)
    yield lines.update
    lines.finish()


# The longest a non-terminal stderr goes without a progress line.
_PROGRESS_EVERY_S = 60.0


class _ProgressLines:
    """Progress as plain lines: `<model>: <done>/<total> events (<pct>%), <rate> events/s,
    <elapsed> s`, one per tenth of the total and at least one every `_PROGRESS_EVERY_S`."""

    def __init__(self, name: str, total: int, clock: Callable[[], float]):
        self.name, self.total, self.clock = name, max(total, 1), clock
        self.started = self.last_line_at = clock()
        self.done = self.printed = 0

    def update(self, events: int) -> None:
        self.done += events
        tenth = self.done * 10 // self.total
        if tenth > self.printed * 10 // self.total or (
            self.clock() - self.last_line_at >= _PROGRESS_EVERY_S
        ):
            self._line()

    def finish(self) -> None:
        if self.done != self.printed:
            self._line()

    def _line(self) -> None:
        now = self.clock()
        elapsed = now - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        print(
            f"{self.name}: {self.done:,}/{self.total:,} events "
            f"({100 * self.done // self.total}%), {rate:,.0f} events/s, {elapsed:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        self.printed, self.last_line_at = self.done, now


def format_table(report: dict[str, Any]) -> str:
    """Models as rows, metrics as columns, aligned; a header line names the run."""
    models = report["models"]
    if not models:
        return ""
    columns = list(next(iter(models.values())))
    rows = [
        [name, *(_cell(column, result[column]) for column in columns)]
        for name, result in models.items()
    ]
    header = ["model", *columns]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = [cells[0].ljust(widths[0])]
        padded += [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join(padded)

    title = f"{report['protocol']} on {report['dataset']}"
    details = [f"exclude {report['exclude']}"] if "exclude" in report else []
    if "session_gap_s" in report:
        details.append(f"session gap {report['session_gap_s']:,.0f} s")
    if details:
        title += f" ({', '.join(details)})"
    lines = [title, line(header), *(line(row) for row in rows)]
    half_life, worker = report.get("half_life_s"), report.get("worker_half_life_s")
    if half_life is not None and worker is not None and half_life != worker:
        lines.append(
            f"popularity half-life {half_life:,.0f} s; a fresh worker's is {worker:,.0f} s "
            f"(STREAMREC_HALF_LIFE_S), so it ranks these clicks differently: serve a "
            f"checkpoint of `streamrec train --half-life {half_life:.0f}`, or set it"
        )
    gap, worker_gap = report.get("session_gap_s"), report.get("worker_session_gap_s")
    if gap is not None and worker_gap is not None and gap != worker_gap:
        lines.append(
            f"session gap {gap:,.0f} s; a fresh worker's is {worker_gap:,.0f} s "
            f"(STREAMREC_SESSION_GAP_S), so it counts other transitions: serve a checkpoint "
            f"of `streamrec train --session-gap {gap:.0f}`, or set it"
        )
    return "\n".join(lines)


def _cell(column: str, value: Any) -> str:
    if column in ("predictions", "new_item_predictions"):
        return f"{value:,}"
    if column == "seconds":
        return f"{value:.1f}"
    if column == "events_per_s":
        return f"{value:,.0f}"
    return f"{value:.4f}"
