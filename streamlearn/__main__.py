"""The ``streamlearn`` command: what an operator does by hand.

    streamlearn registry list [MODEL]          versions, metrics, aliases, pins
    streamlearn registry show MODEL [VERSION]  one version (a number or an alias) as JSON
    streamlearn registry promote MODEL VERSION [--alias champion]
    streamlearn registry promote MODEL [VERSION] --from OTHER
                                               serve another model under MODEL's name (its
                                               VERSION, else its newest as it learns)
    streamlearn registry rollback MODEL [--alias champion]
                                               undo the newest move of what MODEL serves
    streamlearn registry pin|unpin MODEL VERSION
    streamlearn registry retain MODEL --keep-last N
    streamlearn score INPUT OUTPUT [--model M] [--version V]
                                               score a .jsonl or .parquet file of requests
    streamlearn infra up|down|status           the local Kafka and Redis (infra/infra.sh)
    streamlearn topics                         create the declared topics (idempotent)
    streamlearn run joiner|trainer|monitor|api|simulator|loop [ARGS...]
                                               one process in the foreground
    streamlearn simulate [ARGS...]             storefront traffic (run simulator --help)
    streamlearn replay FILE                    historical events from a JSON-lines file
    streamlearn archive query SQL [--csv F | --parquet F]
                                               SQL over the event archive (DuckDB): views
                                               recommendations, outcomes, examples, dead_letters
    streamlearn backfill --model NAME --from DATE --to DATE
                                               a configured model spec trained on the archived
                                               examples of those days, as a new lineage
    streamlearn evaluate MODEL VERSION [VERSION...] --from DATE --to DATE [--html F] [--json F]
                                               versions scored on the archived examples of
                                               those days, side by side per day, no learning
    streamlearn report --day DATE [--no-retrain]
                                               the daily drift job for one day, now
    streamlearn verify MODEL VERSION [--source auto|archive|topic]
                                               rebuild a version from its parent and the
                                               examples between them: identical, bit for bit?

Configuration comes from the same ``STREAMLEARN_*`` settings as every process.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path

import orjson
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from streamlearn.batch import read_rows, score_file
from streamlearn.errors import ConfigError, ReplayError, SnapshotNotFound, StreamlearnError
from streamlearn.processes import PROCESSES
from streamlearn.registry import CHAMPION, Registry, tag
from streamlearn.serving import Served
from streamlearn.settings import get_settings
from streamlearn.snapshots import open_store


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamlearn", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="area", required=True)
    reg = sub.add_parser("registry", help="model versions, aliases and retention")
    ops = reg.add_subparsers(dest="op", required=True)
    ls = ops.add_parser("list", help="versions of a model (of every model when none is named)")
    ls.add_argument("model", nargs="?")
    show = ops.add_parser("show", help="one version's metadata as JSON")
    show.add_argument("model")
    show.add_argument("version", nargs="?", help="a number or an alias; the latest by default")
    for name in ("promote", "pin", "unpin"):
        op = ops.add_parser(name)
        op.add_argument("model")
        op.add_argument("version", type=int, nargs="?" if name == "promote" else None)
        if name == "promote":
            op.add_argument("--alias", default=CHAMPION)
            op.add_argument(
                "--from",
                dest="source",
                metavar="OTHER",
                help="serve this other model under MODEL's name (promotion across names)",
            )
    rb = ops.add_parser(
        "rollback",
        help="undo the newest move of what MODEL serves (a promotion across names first), or "
        "point another alias back at its previous version",
    )
    rb.add_argument("model")
    rb.add_argument("--alias", default=CHAMPION)
    keep = ops.add_parser(
        "retain",
        help="apply the model's retention now (the trainer does after each checkpoint): never "
        "deletes aliased or pinned versions or rollback targets",
    )
    keep.add_argument("model")
    keep.add_argument("--keep-last", type=int, help="default: the configured retention's")
    score = sub.add_parser("score", help="score a file of requests offline (.jsonl, .parquet)")
    score.add_argument("input", type=Path)
    score.add_argument("output", type=Path, help="one row per candidate: .jsonl or .parquet")
    score.add_argument("--model", help="default: the configured champion model")
    score.add_argument(
        "--version", help="a number or an alias; default: the version the API would serve"
    )
    score.add_argument(
        "--explain",
        action="store_true",
        help="each candidate's feature contributions too (as a request's explain: true does)",
    )
    infra = sub.add_parser("infra", help="the local Kafka and Redis")
    infra.add_argument("action", choices=["up", "down", "status"])
    sub.add_parser("topics", help="create the declared topics that are missing")
    run = sub.add_parser("run", help="run one process in the foreground")
    run.add_argument("process", choices=sorted(PROCESSES))
    run.add_argument("args", nargs=argparse.REMAINDER)
    sim = sub.add_parser("simulate", help="simulated storefront traffic")
    sim.add_argument("args", nargs=argparse.REMAINDER)
    replay = sub.add_parser("replay", help="historical events from a JSON-lines file")
    replay.add_argument("file")
    archive = sub.add_parser("archive", help="the event archive: SQL over its Parquet files")
    aops = archive.add_subparsers(dest="op", required=True)
    query = aops.add_parser("query", help="run SQL; prints a table, or writes CSV or Parquet")
    query.add_argument("sql")
    out = query.add_mutually_exclusive_group()
    out.add_argument("--csv", help="write the result to this CSV file")
    out.add_argument("--parquet", help="write the result to this Parquet file")
    fill = sub.add_parser("backfill", help="train a configured model spec on archived days")
    fill.add_argument("--model", required=True, help="a configured model (champion or challenger)")
    fill.add_argument("--from", dest="start", required=True, type=date.fromisoformat)
    fill.add_argument("--to", dest="end", required=True, type=date.fromisoformat)
    judge = sub.add_parser(
        "evaluate", help="score versions on archived days, without learning, side by side"
    )
    judge.add_argument("model")
    judge.add_argument("versions", nargs="+", help="numbers or aliases")
    judge.add_argument("--from", dest="start", required=True, type=date.fromisoformat)
    judge.add_argument("--to", dest="end", required=True, type=date.fromisoformat)
    judge.add_argument("--html", type=Path, help="write an HTML report with charts here")
    judge.add_argument("--json", type=Path, help="write the figures as JSON here")
    daily = sub.add_parser("report", help="the daily drift job for one day, now")
    daily.add_argument("--day", required=True, help="the day (UTC), ISO 8601")
    daily.add_argument("--no-retrain", action="store_true", help="report and alert only")
    check = sub.add_parser(
        "verify", help="rebuild a version from its parent and the examples between them"
    )
    check.add_argument("model")
    check.add_argument("version", help="a number or an alias")
    check.add_argument(
        "--source",
        choices=["auto", "archive", "topic"],
        default="auto",
        help="where the examples come from; auto: the archive when it holds them, else the topic",
    )
    return parser


def _evaluate(registry: Registry, args: argparse.Namespace, console: Console) -> None:
    from streamlearn.archive_query import connect
    from streamlearn.evaluation import Figures, evaluate_versions
    from streamlearn.reports import evaluation_html

    settings = get_settings()
    con = connect(settings.store_url, settings.archive_options)
    ev = evaluate_versions(registry, con, args.model, args.versions, args.start, args.end)
    table = Table(title=f"{args.model}: offline evaluation, {args.start} to {args.end}")
    table.add_column("day")
    table.add_column("examples")
    table.add_column("conversion")
    for v in ev.versions:
        for figure in ("AUC", "log loss", "calibration"):
            table.add_column(f"v{v} {figure}")

    def cells(by: dict[int, Figures]) -> list[str]:
        first = by[ev.versions[0]]
        out = [str(first.examples), f"{first.conversion_rate:.4f}"]
        for v in ev.versions:
            f = by[v]
            for value in (f.roc_auc, f.log_loss, f.calibration):
                out.append("-" if value is None else f"{value:.4f}")
        return out

    for day, by in ev.days.items():
        table.add_row(day, *cells(by))
    table.add_row("period", *cells(ev.period), style="bold")
    console.print(table)
    if args.html:
        args.html.write_text(evaluation_html(ev))
        console.print(f"report -> {args.html}")
    if args.json:
        args.json.write_bytes(orjson.dumps(ev.as_json(), option=orjson.OPT_INDENT_2))
        console.print(f"figures -> {args.json}")


def _verify(registry: Registry, args: argparse.Namespace, console: Console) -> int:
    from streamlearn.archive_query import connect
    from streamlearn.verification import Example, archived, from_topic, span, verify

    settings = get_settings()
    version = registry.resolve(args.model, args.version)
    if version is None:
        raise SnapshotNotFound(f"model {args.model!r} has no version {args.version!r}")
    child = registry.store.get(args.model, version)
    parent = None
    if child.parent_version is not None:
        parent = registry.store.get(args.model, child.parent_version)
    starts, ends = span(parent, child)
    examples: Iterable[Example] | None = None
    if args.source != "topic":
        examples = archived(connect(settings.store_url, settings.archive_options), starts, ends)
        if examples is None and args.source == "archive":
            raise ReplayError(f"the archive does not hold the examples from {starts} to {ends}")
    source = "archive"
    if examples is None:
        source = "topic"
        examples = from_topic(settings.kafka_bootstrap, settings.topic("examples"), starts, ends)
    verdict = verify(parent, child, examples, source)
    what = f"{args.model} v{version} from v{child.parent_version} + {verdict.examples} examples"
    if verdict.identical:
        console.print(f"identical: {what} ({source}), fingerprint {verdict.expected}")
        return 0
    console.print(
        f"[red]DIFFERS:[/red] {what} ({source}): the snapshot's fingerprint {verdict.expected}, "
        f"rebuilt {verdict.rebuilt} (examples learned: {verdict.examples}, the snapshot says "
        f"{child.samples_seen - (parent.samples_seen if parent else 0)})"
    )
    return 1


def _backfill(registry: Registry, args: argparse.Namespace, console: Console) -> None:
    from streamlearn.archive_query import connect
    from streamlearn.backfill import backfill
    from streamlearn.clock import SystemClock

    settings = get_settings()
    spec = next((m for m in settings.models if m.name == args.model), None)
    if spec is None:
        names = [m.name for m in settings.models]
        raise ConfigError(f"{args.model!r} is not a configured model ({names}): add its spec")
    con = connect(settings.store_url, settings.archive_options)
    with Progress(console=console, transient=False) as bar:
        task = bar.add_task(f"backfilling {spec.name}", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        result = backfill(
            con,
            spec,
            registry.store,
            settings.training,
            SystemClock(),
            args.start,
            args.end,
            progress,
        )
    console.print(
        f"{spec.name}: {result.examples} examples learned, versions {result.versions}; the "
        f"trainer goes on from offsets {result.offsets}"
    )


def _query(args: argparse.Namespace, console: Console) -> int:
    import duckdb

    from streamlearn.archive_query import connect

    settings = get_settings()
    try:
        result = connect(settings.store_url, settings.archive_options).sql(args.sql)
        if result is None:
            return 0
        if args.csv or args.parquet:
            (result.write_csv if args.csv else result.write_parquet)(args.csv or args.parquet)
            console.print(f"{len(result)} rows -> {args.csv or args.parquet}")
            return 0
        table = Table()
        for column in result.columns:
            table.add_column(column)
        for row in result.fetchall():
            table.add_row(*("" if v is None else str(v) for v in row))
        console.print(table)
        return 0
    except duckdb.Error as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1


def _process(command: list[str]) -> int:
    """Run a process in the foreground, with this command's environment."""
    return subprocess.call(command)


def _infra(action: str) -> int:
    script = Path(__file__).resolve().parent.parent / "infra" / "infra.sh"
    if not script.exists():
        raise StreamlearnError(f"{script} not found: run from a checkout (pip install -e .)")
    return subprocess.call(["bash", str(script), action])


def _score(registry: Registry, args: argparse.Namespace, console: Console) -> None:
    model = args.model or get_settings().model.name
    if args.version is None:
        model, version = registry.serving(model)  # what the API serves under that name
    else:
        version = registry.resolve(model, args.version)
    if version is None:
        raise SnapshotNotFound(f"model {model!r} has no version to score with")
    snapshot = registry.store.get(model, version)
    served = Served(model, snapshot.version, snapshot.model)
    total, _ = read_rows(args.input)
    with Progress(console=console, transient=False) as bar:
        task = bar.add_task(f"scoring with {served.tag}", total=total)
        counts = score_file(
            args.input, args.output, served, lambda n: bar.advance(task, n), args.explain
        )
    console.print(
        f"{counts.requests} requests, {counts.scored} candidates scored with {served.tag}, "
        f"{counts.invalid} invalid (rows with an error) -> {args.output}"
    )


def _table(registry: Registry, model: str) -> Table:
    serves = registry.store.read_registry(model).serves
    table = Table(title=f"model {model}" + (f" (serves {serves})" if serves else ""))
    columns = ("version", "parent", "created", "samples", "served AUC", "AUC", "log loss")
    for col in (*columns, "aliases"):
        table.add_column(col)
    for m in registry.versions(model):
        metrics = m.get("metrics", {})
        created = datetime.fromtimestamp(m["created_at"], UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(
            str(m["version"]),
            str(m["parent_version"] or ""),
            created,
            str(m["samples_seen"]),
            # As served first (progressive figures are in the order the join emits labels).
            f"{metrics.get('served_roc_auc', float('nan')):.4f}",
            f"{metrics.get('roc_auc', float('nan')):.4f}",
            f"{metrics.get('log_loss', float('nan')):.4f}",
            ", ".join(m["aliases"] + (["pinned"] if m["pinned"] else [])),
        )
    return table


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console()
    try:
        if args.area == "infra":
            return _infra(args.action)
        if args.area == "topics":
            from topics import ensure_topics

            created = ensure_topics(get_settings())
            console.print(f"created {len(created)} topics: {created}")
            return 0
        if args.area == "run":
            return _process(PROCESSES[args.process].command(*args.args))
        if args.area == "simulate":
            return _process(PROCESSES["simulator"].command(*args.args))
        if args.area == "replay":
            return _process([sys.executable, "-m", "consumers.replay", args.file])
        if args.area == "report":
            extra = ["--no-retrain"] if args.no_retrain else []
            return _process(PROCESSES["reporter"].command("--day", args.day, *extra))
        if args.area == "archive":
            return _query(args, console)
    except StreamlearnError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1
    try:
        settings = get_settings()
        settings.check_safe()
        registry = Registry(open_store(settings))
        if args.area == "score":
            _score(registry, args, console)
        elif args.area == "backfill":
            _backfill(registry, args, console)
        elif args.area == "evaluate":
            _evaluate(registry, args, console)
        elif args.area == "verify":
            return _verify(registry, args, console)
        elif args.op == "list":
            for model in [args.model] if args.model else registry.store.models():
                console.print(_table(registry, model))
        elif args.op == "show":
            meta = registry.show(args.model, args.version)
            sys.stdout.write(orjson.dumps(meta, option=orjson.OPT_INDENT_2).decode() + "\n")
        elif args.op == "promote":
            if args.source is not None or args.alias == CHAMPION:
                if args.source is None and args.version is None:
                    raise ConfigError("promote needs a VERSION (or --from OTHER)")
                served = registry.serve(args.model, args.source or args.model, args.version)
                console.print(f"{args.model} serves {tag(served)}")
            elif args.version is None:
                raise ConfigError(f"promoting alias {args.alias!r} needs a VERSION")
            else:
                registry.promote(args.model, args.version, args.alias)
                console.print(f"{args.model}:{args.alias} -> v{args.version}")
        elif args.op == "rollback":
            if args.alias == CHAMPION:
                console.print(f"{args.model} serves {tag(registry.step_back(args.model))}")
            else:
                version = registry.rollback(args.model, args.alias)
                console.print(f"{args.model}:{args.alias} -> v{version}")
        elif args.op in ("pin", "unpin"):
            registry.pin(args.model, args.version, pinned=args.op == "pin")
            console.print(f"{args.model} v{args.version} {args.op}ned")
        elif args.op == "retain":
            spec = next((m for m in settings.models if m.name == args.model), None)
            policy = (spec and spec.retention) or settings.retention
            if args.keep_last is not None:
                policy = policy.model_copy(update={"keep_last": args.keep_last})
            plan = registry.retain(args.model, policy, time.time())
            console.print(f"deleted {len(plan.delete)} versions: {plan.delete}")
    except StreamlearnError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
