"""The `streamrec` command: worker, produce, consume, dev, train, evaluate, experiment.

Every error a user can cause ends in one line on stderr naming the problem and exit
code 2 (usage) or 1 (runtime), never a traceback.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from stream import interrupts
from stream.extras import EMBEDDED_SERVICES, MissingExtra, require_dev
from stream.kafka.topics import BrokerUnreachable, require_topic
from stream.offline import evaluate as evaluate_cmd
from stream.offline import experiment as experiment_cmd
from stream.offline import train as train_cmd
from stream.preflight import RedisUnreachable, check_broker, check_services
from stream.security import KafkaSecurity
from stream.settings import MODELS, Settings, SettingsError, describe

SYNTHETIC_ITEMS = 500  # `produce --generate`'s item count unless --item-count says
EPILOG_SETTINGS = "settings (environment variables; flags override them):\n" + "\n".join(
    f"  {name:<34} {help_text} (default {default})" for name, default, help_text in describe()
)


def _connection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap-servers", help="Kafka host:port (STREAMREC_BOOTSTRAP_SERVERS)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamrec",
        description="Streaming real-time recommender: clicks in from Kafka, recommendations out.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    worker = commands.add_parser(
        "worker",
        help="run a worker against your Kafka and Redis",
        description="Consume clicks, learn online, publish vectors, emit recommendations. "
        "Creates missing topics on start. Stops cleanly on Ctrl-C or SIGTERM.",
        epilog=EPILOG_SETTINGS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _connection_flags(worker)
    worker.add_argument("--redis-url", help="STREAMREC_REDIS_URL")
    worker.add_argument("--model", choices=MODELS, help="STREAMREC_MODEL")
    worker.add_argument("--web-host", help="STREAMREC_WEB_HOST (default loopback only)")
    worker.add_argument("--web-port", type=int, help="STREAMREC_WEB_PORT")
    worker.add_argument("--partitions", type=int, help="STREAMREC_PARTITIONS")
    worker.add_argument("--checkpoint", help="STREAMREC_CHECKPOINT: model file to start from")

    produce = commands.add_parser(
        "produce",
        help="replay clicks (a dataset file or a generated stream) or publish a catalogue",
        description="Send click events to the clicks topic at a chosen rate, with a progress "
        "bar; or, with --items FILE, publish a catalogue to the items topic: one record per "
        "item, keyed by its id, each the item's whole state (the topic keeps the latest). "
        "Give one source: --file, --generate or --items.",
    )
    _connection_flags(produce)
    produce.add_argument(
        "--topic",
        help="topic to send to (default STREAMREC_CLICKS_TOPIC; with --items "
        "STREAMREC_ITEMS_TOPIC)",
    )
    source = produce.add_argument_group("source (give one)")
    clicks = source.add_mutually_exclusive_group()
    clicks.add_argument("--file", help="dataset file of clicks to replay in event-time order")
    clicks.add_argument("--generate", type=int, metavar="N", help="send N synthetic clicks")
    source.add_argument(
        "--items",
        metavar="FILE",
        help="catalogue file to publish to the items topic (STREAMREC_ITEMS_TOPIC): "
        "--format movielens (movies.csv: movieId,title,genres) or csv (item_id and any of "
        "title,text,categories,available,updated_at; categories split on |)",
    )
    produce.add_argument(
        "--format",
        choices=("session-rec", "movielens", "csv"),
        help="format of --file (default session-rec) or of --items (movielens or csv, default csv)",
    )
    produce.add_argument("--users", type=int, default=1000, help="synthetic users (default 1000)")
    produce.add_argument(
        "--item-count",
        type=int,
        metavar="N",
        help=f"synthetic items of --generate (default {SYNTHETIC_ITEMS}; the older "
        "`--generate N --items M` still means M items)",
    )
    produce.add_argument(
        "--seed",
        type=int,
        help="seed of the synthetic stream; a repeated seed repeats its event ids, which a "
        "worker skips as duplicates (default: seed 0 with fresh event ids on each run)",
    )
    produce.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="events per second; 0 sends as fast as possible (default)",
    )
    produce.add_argument(
        "--limit", type=int, help="send at most this many records of --file or --items"
    )

    consume = commands.add_parser(
        "consume",
        help="print recommendation events as JSON lines",
        description="Tail the recommendations topic (or another) and print each value.",
    )
    _connection_flags(consume)
    consume.add_argument("--topic", help="topic to read (default STREAMREC_RECOMMENDATIONS_TOPIC)")
    consume.add_argument("--from-beginning", action="store_true", help="start at the oldest record")
    consume.add_argument("--max", type=int, help="stop after this many records")
    consume.add_argument(
        "--idle-timeout",
        type=float,
        help="stop after this many seconds without a record (default: never)",
    )

    dev = commands.add_parser(
        "dev",
        help="run the whole path on embedded services and print a summary",
        description="Start an embedded Kafka-protocol broker and Redis server on loopback, a "
        "worker, replay a synthetic stream with malformed and repeated events mixed in, read "
        "the recommendations and print one JSON summary line. Stops everything it started.",
    )
    dev.add_argument("--events", type=int, default=5000, help="records to send (default 5000)")
    dev.add_argument("--rate", type=float, default=500.0, help="events per second (default 500)")
    dev.add_argument("--model", choices=MODELS, default="torch", help="recommender (default torch)")
    dev.add_argument("--users", type=int, default=500, help="synthetic users (default 500)")
    dev.add_argument("--items", type=int, default=300, help="synthetic items (default 300)")
    dev.add_argument(
        "--hold",
        action="store_true",
        help="keep the stack up after the summary, to watch the live dashboard",
    )
    dev.add_argument(
        "--variants",
        default="",
        metavar="MODEL:WEIGHT,...",
        help="run an A/B experiment (e.g. torch:50,covisit:50) on a planted stream whose "
        "targets only a model of the user's context can predict, ending with the "
        "experiment report; --model is then ignored",
    )
    dev.add_argument("--quiet", action="store_true", help="no progress output, summary only")
    model = commands.add_parser(
        "model",
        help="swap the workers' model live: load a checkpoint, roll back, show the state",
        description="Ask every worker of the app (STREAMREC_APP_ID) to serve a checkpoint, "
        "through the admin topic: each loads and verifies it in the background (SHA-256 "
        "from --sha256 or the file's .sha256 sidecar) and swaps it in between two batches; "
        "a bad checkpoint is refused in one log line and the old model keeps serving. The "
        "file must be readable at PATH on every worker.",
    )
    actions = model.add_subparsers(dest="action", metavar="ACTION", required=True)
    load = actions.add_parser("load", help="serve a checkpoint from now on")
    _connection_flags(load)
    load.add_argument("checkpoint", metavar="PATH", help="checkpoint file, as the workers see it")
    load.add_argument("--sha256", help="expected SHA-256 of the file (default: its sidecar)")
    rollback = actions.add_parser(
        "rollback", help="serve the model before the last load again (the startup model last)"
    )
    _connection_flags(rollback)
    status = actions.add_parser("status", help="print the checkpoints asked for, newest last")
    _connection_flags(status)
    train_cmd.add_parser(commands)
    evaluate_cmd.add_parser(commands)
    experiment_cmd.add_parser(commands)
    return parser


def cmd_worker(args: argparse.Namespace) -> int:
    settings = Settings.from_env(
        bootstrap_servers=args.bootstrap_servers,
        redis_url=args.redis_url,
        model=args.model,
        web_host=args.web_host,
        web_port=args.web_port,
        partitions=args.partitions,
        checkpoint=args.checkpoint,
    )
    # Services first, before torch and Faust are imported (seconds): a wrong address is
    # then one line in about STREAMREC_CONNECT_TIMEOUT_S. A checkpoint is checked before
    # any connection instead, so its own errors need no services (build_worker).
    if not settings.checkpoint:
        check_services(settings)
    from stream.worker.process import run_worker

    run_worker(settings)
    return 0


class UsageError(ValueError):
    """Flags that do not fit together: one line, exit code 2, like argparse's own."""


def _produce_source(args: argparse.Namespace) -> str:
    """Which source `produce` reads ("file", "generate" or "items"); resolves the older
    `--generate N --items M` (M synthetic items) to --item-count (issue 15)."""
    if args.items is not None and args.generate is not None:
        if not args.items.isdigit() or args.item_count is not None:
            raise UsageError(
                "--items FILE publishes a catalogue and cannot be combined with --generate; "
                "the synthetic item count is --item-count N"
            )
        args.item_count, args.items = int(args.items), None
    given = [name for name in ("file", "generate", "items") if getattr(args, name) is not None]
    if len(given) != 1:
        raise UsageError(
            "give one source: --file (clicks), --generate N (synthetic clicks) or --items "
            f"FILE (a catalogue){'' if not given else ', not ' + ' and '.join(given)}"
        )
    return given[0]


def cmd_produce(args: argparse.Namespace) -> int:
    from stream.dev.generate import fresh_run, synthetic_clicks
    from stream.offline.datasets import read_interactions

    source = _produce_source(args)
    if source == "items":
        return _produce_catalogue(args)
    settings = Settings.from_env(bootstrap_servers=args.bootstrap_servers, clicks_topic=args.topic)
    if args.file:  # a bad file is reported before any connection is tried
        records: Any = read_interactions(args.file, args.format or "session-rec")[: args.limit]
        total = len(records)
    else:
        # Without --seed a second run must not be skipped whole as duplicates (issue 14).
        records = synthetic_clicks(
            args.generate,
            users=args.users,
            items=args.item_count or SYNTHETIC_ITEMS,
            seed=args.seed or 0,
            run=fresh_run() if args.seed is None else None,
        )
        total = args.generate
    return _send(settings, settings.clicks_topic, records, total, args.rate, sent="events_sent")


def _produce_catalogue(args: argparse.Namespace) -> int:
    """`produce --items FILE`: every item of the file, keyed by its id (UTF-8), valued
    `CatalogueItem.to_json()`. The whole file is read and checked before any connection."""
    from stream.catalogue import read_catalogue

    settings = Settings.from_env(bootstrap_servers=args.bootstrap_servers, items_topic=args.topic)
    items = list(itertools.islice(read_catalogue(args.items, args.format or "csv"), args.limit))
    records = [(item.item_id.encode(), item.to_json()) for item in items]
    return _send(
        settings, settings.items_topic, records, len(records), args.rate, sent="items_sent"
    )


def _send(
    settings: Settings, topic: str, records: Any, total: int, rate: float, *, sent: str
) -> int:
    """Check the broker and the topic, send `records` with a progress bar on a terminal
    (blocks until every record is acknowledged), then print the summary line, counting
    the records under `sent`."""
    from stream.kafka.producer import replay

    security = KafkaSecurity.from_settings(settings)
    check_broker(
        settings.bootstrap_servers, security=security, timeout_s=settings.connect_timeout_s
    )
    require_topic(settings.bootstrap_servers, topic, security=security)
    result = replay(
        records,
        bootstrap_servers=settings.bootstrap_servers,
        topic=topic,
        rate=rate,
        total=total,
        progress=sys.stderr.isatty(),
        security=security,
    )
    summary = {sent: result.sent, "seconds": round(result.seconds, 3), "topic": topic}
    print(orjson.dumps(summary).decode())
    return 0


def cmd_consume(args: argparse.Namespace) -> int:
    from stream.kafka.consumer import tail

    settings = Settings.from_env(bootstrap_servers=args.bootstrap_servers)
    topic = args.topic or settings.recommendations_topic
    security = KafkaSecurity.from_settings(settings)
    check_broker(
        settings.bootstrap_servers, security=security, timeout_s=settings.connect_timeout_s
    )
    require_topic(settings.bootstrap_servers, topic, security=security)
    for n, record in enumerate(
        tail(
            settings.bootstrap_servers,
            topic,
            from_beginning=args.from_beginning,
            idle_timeout_s=args.idle_timeout,
            security=security,
        ),
        start=1,
    ):
        value = record.value or b""
        sys.stdout.write(value.decode("utf-8", "replace") + "\n")
        sys.stdout.flush()
        if args.max and n >= args.max:
            break
    return 0


def cmd_model(args: argparse.Namespace) -> int:
    from stream.model_commands import Wanted, read_stack, write_stack

    settings = Settings.from_env(bootstrap_servers=args.bootstrap_servers)
    security = KafkaSecurity.from_settings(settings)
    servers, topic = settings.bootstrap_servers, settings.admin_topic
    check_broker(servers, security=security, timeout_s=settings.connect_timeout_s)
    require_topic(servers, topic, security=security)
    stack = read_stack(servers, topic, security=security)
    if args.action == "status":
        print(orjson.dumps({"checkpoints": [w.path for w in stack]}).decode())
        return 0
    if args.action == "rollback":
        if not stack:
            raise ValueError("nothing to roll back: the workers serve their startup model")
        stack = stack[:-1]
    else:
        stack = [*stack, Wanted(args.checkpoint, args.sha256 or None)]
    write_stack(servers, topic, stack, security=security)
    serving = stack[-1].path if stack else "the startup model"
    print(f"streamrec model {args.action}: every worker now swaps to {serving}", file=sys.stderr)
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    require_dev("the embedded stack", EMBEDDED_SERVICES)
    if args.variants:
        Settings.from_env({}, variants=args.variants)  # a bad value fails before any start
    from stream.dev.demo import print_table, run_dev

    summary = run_dev(
        events=args.events,
        rate=args.rate,
        model=args.model,
        users=args.users,
        items=args.items,
        hold=args.hold,
        progress=not args.quiet,
        variants=args.variants,
    )
    if not args.quiet:
        print_table(summary)
    print(orjson.dumps(summary).decode(), flush=True)
    return 0 if summary["recommendations"] == summary["events_accepted"] else 1


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "worker": cmd_worker,
    "produce": cmd_produce,
    "consume": cmd_consume,
    "dev": cmd_dev,
    "model": cmd_model,
    "train": train_cmd.run,
    "evaluate": evaluate_cmd.run,
    "experiment": experiment_cmd.run,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "worker":  # Faust's loop handles the worker's signals
        interrupts.install()
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("streamrec: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # one line naming the problem; tracebacks are for bugs
        if not _is_user_error(exc):
            raise
        print(f"streamrec {args.command}: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1


def _is_user_error(exc: Exception) -> bool:
    # Light modules only: importing the worker (torch) here cost seconds per error.
    from stream.dev.services import ServiceError
    from stream.offline.datasets import DatasetError
    from stream.offline.experiment_topics import ReadStalled

    return isinstance(
        exc,
        (
            SettingsError,
            DatasetError,
            ServiceError,
            BrokerUnreachable,
            RedisUnreachable,
            MissingExtra,
            ReadStalled,
            ValueError,
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
