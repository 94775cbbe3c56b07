"""``posthog-customerio backfill``: history from export files or PostHog's query API.

It enqueues; ``serve`` delivers. It opens the queue as a non-owner writer, so it runs beside a
live ``serve`` on the same data directory (SQLite serialises the two writers). Ctrl-C stops it
after the chunk in progress is committed with its checkpoint; the same command continues there.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)

from posthog_customerio.cli.common import (
    ConfigOpt,
    DatabaseUrlOpt,
    DataDirOpt,
    PluginOpt,
    err,
    fail,
    out,
    parse_since,
    settings_from,
)
from posthog_customerio.errors import ConnectorError, InputError
from posthog_customerio.mapping.explain import format_explanation
from posthog_customerio.pipeline.backfill import (
    DEFAULT_CHUNK_EVENTS,
    Backfill,
    BackfillStats,
    ChunkSource,
)
from posthog_customerio.pipeline.dryrun import DryRun
from posthog_customerio.pipeline.files import ExportFiles
from posthog_customerio.pipeline.follow import PostHogFollow
from posthog_customerio.queue.base import Queue
from posthog_customerio.settings import Settings, secret_values
from posthog_customerio.sources.export_files import BadRow, discover
from posthog_customerio.sources.posthog_api import ApiQuery, iso


def backfill(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Export files (.jsonl, .csv, optionally .gz) or folders of them."),
    ] = None,
    posthog_url: Annotated[
        str | None,
        typer.Option(
            "--posthog-url", help="Read from PostHog's query API at this URL.", show_default=False
        ),
    ] = None,
    project_id: Annotated[
        int | None, typer.Option("--project-id", help="PostHog project id.", show_default=False)
    ] = None,
    personal_api_key: Annotated[
        str | None,
        typer.Option(
            "--personal-api-key",
            help="PostHog personal API key (query:read); prefer "
            "POSTHOG_CUSTOMERIO_POSTHOG_PERSONAL_API_KEY.",
            show_default=False,
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since", help="API: from this time (ISO 8601, or 30d/12h ago).", show_default=False
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option("--until", help="API: before this time.", show_default=False),
    ] = None,
    event: Annotated[
        list[str] | None,
        typer.Option("--event", help="API: only this event (repeatable).", show_default=False),
    ] = None,
    page_size: Annotated[int, typer.Option(help="API: rows per query.", min=1, max=50_000)] = 1000,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", help="API: keep polling for new events once caught up.", metavar=""
        ),
    ] = False,
    poll_secs: Annotated[
        float | None,
        typer.Option(
            "--poll-secs", help="--follow: poll interval \\[default: 30].", show_default=False
        ),
    ] = None,
    lag_secs: Annotated[
        float | None,
        typer.Option(
            "--lag-secs",
            help="--follow: re-read this window for late events \\[default: 300].",
            show_default=False,
        ),
    ] = None,
    chunk_events: Annotated[
        int, typer.Option(help="Events per transaction (and checkpoint).", min=1, max=50_000)
    ] = DEFAULT_CHUNK_EVENTS,
    max_bad_rows: Annotated[
        int | None,
        typer.Option(
            "--max-bad-rows",
            help="Stop (exit 1) after more bad rows than this.",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Read and map, print what would be sent; write nothing.",
            metavar="",
        ),
    ] = False,
    restart: Annotated[
        bool,
        typer.Option(
            "--restart",
            help="Ignore saved positions and read from the start "
            "(events already queued are still skipped by uuid).",
            metavar="",
        ),
    ] = False,
    config: ConfigOpt = None,
    plugin_config: PluginOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseUrlOpt = None,
) -> None:
    """Enqueue PostHog history (export files, or the query API) with a progress bar; resumable."""
    from posthog_customerio import logs

    settings = settings_from(
        config,
        plugin_config,
        data_dir=data_dir,
        database_url=database_url,
        posthog_url=posthog_url,
        posthog_project_id=project_id,
        posthog_personal_api_key=personal_api_key,
        follow_poll_secs=poll_secs,
        follow_lag_secs=lag_secs,
    )
    logs.configure(settings.log_format, secrets=secret_values(settings))
    api = posthog_url is not None or (not paths and settings.posthog_url is not None)
    if paths and api:
        fail("give export files or --posthog-url, not both", 2)
    if not paths and not api:
        fail("name export files or folders, or --posthog-url with --project-id and --since", 2)
    if not api and (follow or since or until or event):
        fail("--since, --until, --event and --follow apply to --posthog-url only", 2)
    if follow and until:
        fail("--follow reads new events as they come: it cannot have --until", 2)
    source: ChunkSource
    if api:
        missing = [
            flag
            for flag, value in (
                ("--project-id", settings.posthog_project_id),
                ("--personal-api-key", settings.posthog_personal_api_key),
                ("--since", since),
            )
            if value is None
        ]
        if missing:
            fail(f"--posthog-url needs {', '.join(missing)}", 2)
        since_ts = parse_since(since)
        until_ts = parse_since(until)
        assert since_ts is not None
        query = ApiQuery(
            since=iso(int(since_ts * 1000)),
            until=iso(int(until_ts * 1000)) if until_ts is not None else None,
            events=tuple(event or ()),
            page_size=page_size,
        )
        source = PostHogFollow(settings, query, follow=follow)
    else:
        try:
            files = discover(list(paths or []))
        except InputError as exc:
            fail(str(exc), 2)
        if not files:
            fail("no export files found (.jsonl, .ndjson, .json, .csv, optionally .gz)", 2)
        source = ExportFiles(files)
    try:
        code = asyncio.run(
            _run(
                source,
                settings,
                chunk_events=chunk_events,
                max_bad_rows=max_bad_rows,
                dry_run=dry_run,
                restart=restart,
            )
        )
    except ConnectorError as exc:
        fail(str(exc), 1)
    raise typer.Exit(code)


# --- running --------------------------------------------------------------------------------


async def _open_queue(settings: Settings) -> tuple[Queue, bool]:
    """The queue as a non-owner writer (beside `serve`), created or migrated first as `serve`
    would (SQLite or PostgreSQL), and whether a server owns it now."""
    from posthog_customerio.runtime import store_location

    location = store_location(settings)
    await location.migrate()
    running = await location.owner_running()
    queue = location.open(owner=False)
    await queue.start()
    return queue, running


@contextmanager
def _interruptible(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> Iterator[None]:
    """First Ctrl-C (or SIGTERM): finish the chunk in progress and stop. Second: at once."""

    def first() -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        err.print("[yellow]stopping after the chunk in progress (Ctrl-C again to abort)[/]")

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, first)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _run(
    source: ChunkSource,
    settings: Settings,
    *,
    chunk_events: int,
    max_bad_rows: int | None,
    dry_run: bool,
    restart: bool,
) -> int:
    queue: Queue | None = None
    server_running = False
    if not dry_run:
        queue, server_running = await _open_queue(settings)
    runner = Backfill(
        source,
        settings.mapping_rules(),
        queue,
        restart=restart,
        chunk_events=chunk_events,
        max_bad_rows=max_bad_rows,
    )
    stats = runner.stats
    progress = _progress()
    task = progress.add_task(f"backfill {source.label}", total=None, counts="")

    def on_chunk(s: BackfillStats) -> None:
        progress.update(task, total=s.bytes_total, completed=s.bytes_done, counts=_counts(s))

    def on_bad_row(bad: BadRow) -> None:
        if stats.bad_rows <= 20:
            progress.console.print(f"[yellow]bad row[/] {bad}", markup=True, highlight=False)

    try:
        with progress, _interruptible(asyncio.get_running_loop(), runner.stop):
            error = await runner.run(on_chunk=on_chunk, on_bad_row=on_bad_row)
    finally:
        if queue is not None:
            await queue.close()
    _summary(stats, source.label, runner.dry_run, server_running, error)
    if error is not None:
        return 1
    return 130 if stats.stopped else 0


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[counts]}"),
        console=err,
        transient=False,
        disable=not err.is_terminal,
    )


def _counts(s: BackfillStats) -> str:
    dropped = sum(s.dropped.values())
    reasons = ", ".join(f"{r} {n}" for r, n in s.dropped.most_common(3))
    text = f"read {s.rows:,}  enqueued {s.accepted:,}  dropped {dropped:,}"
    if reasons:
        text += f" ({reasons})"
    if s.bad_rows:
        text += f"  bad {s.bad_rows:,}"
    return text + f"  {s.rate:,.0f} rows/s"


def _summary(
    s: BackfillStats,
    label: str,
    dry: DryRun | None,
    server_running: bool,
    error: ConnectorError | None,
) -> None:
    if dry is not None:
        for title, samples in (("would send", dry.sends), ("would drop", dry.drops)):
            for expl in samples:
                out.print(f"--- sample: {title}", markup=False)
                out.print(format_explanation(expl), markup=False)
    verb = "would enqueue" if dry is not None else "enqueued"
    ops = ", ".join(f"{a} {n:,}" for a, n in sorted(s.operations.items())) or "none"
    dropped = ", ".join(f"{r} {n:,}" for r, n in s.dropped.most_common()) or "none"
    head = "dry run" if dry is not None else "backfill"
    state = "interrupted" if s.stopped else ("stopped" if error else "done")
    out.print(
        f"{head} {state}: {s.rows:,} rows read from {label} in {s.elapsed_secs:.1f} s "
        f"({s.rate:,.0f} rows/s)",
        markup=False,
    )
    if s.files_skipped:
        out.print(f"  skipped:   {s.files_skipped} file(s) already complete", markup=False)
    out.print(
        f"  {verb}:  {s.accepted:,} events -> {s.operations_total:,} operations ({ops})",
        markup=False,
    )
    out.print(f"  dropped:   {sum(s.dropped.values()):,} ({dropped})", markup=False)
    out.print(f"  bad rows:  {s.bad_rows:,}", markup=False)
    for sample in s.bad_samples[:5]:
        out.print(f"    {sample}", markup=False)
    if error is not None:
        err.print(f"[bold red]error:[/] {error}")
    if dry is not None:
        out.print("nothing was written (--dry-run)", markup=False)
        return
    if s.stopped or error is not None:
        out.print("progress is saved: run the same command again to continue", markup=False)
    if server_running:
        out.print(
            f"{s.operations_total:,} operations queued; the running serve delivers them",
            markup=False,
        )
    else:
        out.print(
            f"{s.operations_total:,} operations queued; start `serve` to deliver them",
            markup=False,
        )
