"""The ``posthog-customerio`` command line.

Exit codes: 0 ok, 1 runtime failure, 2 bad usage or config. Errors are one sentence naming the
option or input at fault; a traceback only with ``--debug``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import orjson
import typer
from rich.table import Table

from posthog_customerio import __version__, logs
from posthog_customerio.cli.backfill import backfill as backfill_cmd
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
from posthog_customerio.settings import (
    Settings,
    load_settings,
    missing_webhook_secret,
    secret_values,
)

if TYPE_CHECKING:
    from posthog_customerio.admin import Selection

app = typer.Typer(
    name="posthog-customerio",
    help="Stream PostHog events into Customer.io: durable, batched, ordered, deduplicated.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
dead_letters_app = typer.Typer(help="Inspect and resend what Customer.io rejected.")
app.add_typer(dead_letters_app, name="dead-letters")

_debug = False


def _print_version(value: bool) -> None:
    """Eager, so that ``--version`` alone works without a command."""
    if value:
        out.print(__version__)
        raise typer.Exit(0)


@app.callback()
def root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.", metavar="")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the version.",
            metavar="",
            is_eager=True,
            callback=_print_version,
        ),
    ] = False,
) -> None:
    global _debug
    _debug = debug


@app.command()
def serve(
    config: ConfigOpt = None,
    plugin_config: PluginOpt = None,
    data_dir: DataDirOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address \\[default: 127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option(help="Port \\[default: 8787]; 0 picks one.")] = None,
    sandbox: Annotated[
        bool, typer.Option("--sandbox", help="Send to an embedded local sandbox.", metavar="")
    ] = False,
    insecure_no_auth: Annotated[
        bool,
        typer.Option(
            "--insecure-no-auth",
            help="Allow a public bind without a webhook secret.",
            metavar="",
        ),
    ] = False,
    database_url: DatabaseUrlOpt = None,
    log_format: Annotated[
        str | None, typer.Option("--log-format", help="text or json.", show_default=False)
    ] = None,
    follow_posthog: Annotated[
        bool,
        typer.Option(
            "--follow-posthog",
            help="Also poll PostHog's query API for new events (needs posthog_url, "
            "posthog_project_id, posthog_personal_api_key).",
            metavar="",
        ),
    ] = False,
) -> None:
    """Webhook + delivery + status page in one process. SIGHUP reloads the config."""
    cli_values: dict[str, Any] = {
        "data_dir": data_dir,
        "host": host,
        "port": port,
        "sandbox": sandbox or None,
        "insecure_no_auth": insecure_no_auth or None,
        "database_url": database_url,
        "log_format": log_format,
        "follow_posthog": follow_posthog or None,
    }
    settings = settings_from(config, plugin_config, **cli_values)
    logs.configure(settings.log_format, secrets=secret_values(settings))
    if missing_webhook_secret(settings):
        fail(
            f"refusing to listen on {settings.host} without webhook_secret "
            "(set POSTHOG_CUSTOMERIO_WEBHOOK_SECRET, or pass --insecure-no-auth)",
            2,
        )
    from posthog_customerio.web.server import run_server

    def reload_settings() -> Settings:  # SIGHUP: the same sources, read again
        return load_settings(cli=cli_values, config_file=config, plugin_config=plugin_config)

    try:
        run_server(settings, reload_settings)
    except ConnectorError as exc:
        if _debug:
            raise
        fail(str(exc))
    except OSError as exc:
        if _debug:
            raise
        fail(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}")


@app.command()
def check(config: ConfigOpt = None, plugin_config: PluginOpt = None) -> None:
    """Validate the config and the Customer.io credentials; print the region."""
    settings = settings_from(config, plugin_config)
    if not settings.has_credentials:
        fail("no Customer.io credentials: set CUSTOMERIO_SITE_ID and CUSTOMERIO_API_KEY", 1)
    from posthog_customerio.admin import check_credentials

    assert settings.site_id is not None and settings.api_key is not None
    url = settings.effective_track_url
    result = asyncio.run(
        check_credentials(url, settings.site_id, settings.api_key.get_secret_value())
    )
    if result.accepted:
        region = result.region
        out.print(f"config ok; credentials accepted by {url}; account region: {region}")
        if region in ("us", "eu") and settings.track_url is None and region != settings.region:
            err.print(f"[yellow]warning:[/] the account is in {region!r}; set region={region}")
        return
    if result.rejected:
        fail(f"Customer.io rejected the credentials ({result.status}) at {url}")
    why = {
        "connect": "cannot connect (check track_url / region and the network)",
        "timeout": "no answer in time (check the network or a proxy)",
    }.get(result.error, result.error)
    fail(f"could not check the credentials at {url}: {why}")


@app.command("sandbox")
def sandbox_cmd(
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8788,
    site_id: Annotated[str, typer.Option(help="Basic-auth user it accepts.")] = "sandbox",
    api_key: Annotated[str, typer.Option(help="Basic-auth password it accepts.")] = "sandbox",
    fail_rate: Annotated[float, typer.Option(help="Share of requests answered 5xx.")] = 0.0,
    fail_status: Annotated[int, typer.Option(help="Status used by --fail-rate.")] = 503,
    rate_limit_rps: Annotated[
        float | None, typer.Option(help="Answer 429 above this rate.", show_default=False)
    ] = None,
    retry_after_secs: Annotated[int, typer.Option(help="Retry-After sent with 429.")] = 1,
    latency_ms: Annotated[int, typer.Option(help="Added latency per request.")] = 0,
    seed: Annotated[int | None, typer.Option(help="Seed for --fail-rate.")] = None,
    reject_anonymous_batch: Annotated[
        bool,
        typer.Option(
            "--reject-anonymous-batch",
            help="Refuse batch items identified by anonymous_id (207).",
            metavar="",
        ),
    ] = False,
) -> None:
    """A local Customer.io Track API that validates against the official spec."""
    from posthog_customerio.customerio.sandbox import SandboxConfig, run_sandbox

    out_of_range = [
        f"{flag} {value}: {rule}"
        for flag, value, ok, rule in (
            ("--port", port, 0 <= port <= 65535, "must be between 0 and 65535"),
            ("--fail-rate", fail_rate, 0 <= fail_rate <= 1, "must be between 0 and 1"),
            ("--fail-status", fail_status, 100 <= fail_status <= 599, "must be 100-599"),
            (
                "--rate-limit-rps",
                rate_limit_rps,
                rate_limit_rps is None or rate_limit_rps > 0,
                "must be > 0 (leave it out for no limit)",
            ),
            ("--retry-after-secs", retry_after_secs, retry_after_secs >= 0, "must be >= 0"),
            ("--latency-ms", latency_ms, latency_ms >= 0, "must be >= 0"),
        )
        if not ok
    ]
    if out_of_range:
        fail("; ".join(out_of_range), 2)
    # The sandbox's own default key is well known, not a secret; redacting it would blank
    # every "sandbox" in the log. A key the user chose is redacted everywhere.
    logs.configure("text", secrets=[] if api_key == SandboxConfig().api_key else [api_key])
    cfg = SandboxConfig(
        site_id=site_id,
        api_key=api_key,
        fail_rate=fail_rate,
        fail_status=fail_status,
        rate_limit_rps=rate_limit_rps,
        retry_after_secs=retry_after_secs,
        latency_ms=latency_ms,
        seed=seed,
        reject_anonymous_batch=reject_anonymous_batch,
    )
    err.print(f"sandbox: Customer.io Track API on http://{host}:{port} (site id {site_id!r})")
    run_sandbox(host, port, cfg)


@app.command()
def status(
    config: ConfigOpt = None,
    plugin_config: PluginOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseUrlOpt = None,
    host: Annotated[str | None, typer.Option(help="Where serve listens.")] = None,
    port: Annotated[int | None, typer.Option(help="Where serve listens.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Machine-readable output.", metavar="")
    ] = False,
) -> None:
    """Queue depth, oldest pending age, delivered, dead-lettered, last error."""
    settings = settings_from(
        config, plugin_config, data_dir=data_dir, database_url=database_url, host=host, port=port
    )
    shown_host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    snapshot: dict[str, Any]
    try:
        r = httpx.get(f"http://{shown_host}:{settings.port}/api/status", timeout=2)
        r.raise_for_status()
        snapshot = r.json()
        snapshot["server"] = "running"
    except httpx.HTTPError:
        from posthog_customerio.admin import offline_status

        snapshot = _queue_call(settings, offline_status)
    if as_json:
        sys.stdout.write(orjson.dumps(snapshot, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    q = snapshot["queue"]
    out.print(f"server:          {snapshot['server']}")
    out.print(f"credentials:     {snapshot.get('credentials', 'unknown')}")
    out.print(f"queue depth:     {q['depth']} operations")
    out.print(f"oldest pending:  {q['oldest_age_secs']:.1f} s")
    out.print(f"dead letters:    {q['dead_letters']}")
    for w in snapshot.get("workers") or []:
        this = " (answering this status)" if w.get("this_process") else ""
        sample = ", ".join(w.get("partition_sample") or [])
        label = f"worker {w['id']}:"
        out.print(
            f"{label:<16} {w['host']} pid {w['pid']}, "
            f"{w['partitions']} partition(s) leased, heartbeat {w['heartbeat_age_secs']:.1f} s ago"
            f"{this}" + (f" [{sample}]" if sample else ""),
            markup=False,
        )
    d = snapshot.get("delivery") or {}
    if d:
        totals = d.get("totals") or {}
        out.print(f"delivered:       {totals.get('delivered', 0)} operations")
        out.print(f"dead-lettered:   {totals.get('dead_lettered', 0)} (since start)")
        out.print(f"last error:      {d.get('last_error') or '-'}")


@app.command()
def migrate(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseUrlOpt = None,
) -> None:
    """Create the queue or bring its schema up to date (serve also does it on start-up)."""
    from posthog_customerio.runtime import store_location

    settings = settings_from(config, None, data_dir=data_dir, database_url=database_url)
    applied = asyncio.run(store_location(settings).migrate())
    if applied:
        out.print(f"applied migration(s) {', '.join(map(str, applied))}")
    else:
        out.print("the schema is up to date")


def _is_json(data: bytes) -> bool:
    """Whether ``data`` is one JSON document (a webhook body), not JSON Lines."""
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


def _read_events(paths: list[str], reporting: list[tuple[str, bytes]] | None = None) -> list[Any]:
    """PostHog events from webhook bodies or JSON Lines; with ``reporting``, a file that is a
    Customer.io reporting webhook goes there instead, as ``(name, bytes)``."""
    from posthog_customerio.mapping.reporting import looks_like_reporting
    from posthog_customerio.sources.normalize import event_from_mapping
    from posthog_customerio.sources.webhook import parse_webhook_body

    events: list[Any] = []
    now_ms = int(time.time() * 1000)
    for name in paths or ["-"]:
        try:
            data = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
        except OSError as exc:
            fail(f"{name}: cannot read ({exc.strerror})", 2)
        if reporting is not None and _is_json(data) and looks_like_reporting(orjson.loads(data)):
            reporting.append((name, data))
            continue
        try:
            events.extend(parse_webhook_body(data, received_ms=now_ms, max_depth=1000))
            continue
        except InputError as whole:
            lines = [ln for ln in data.splitlines() if ln.strip()]
            if len(lines) < 2 or _is_json(data):  # one JSON document: its own problem
                fail(f"{name}: {whole}", 2)
        for lineno, line in enumerate(data.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
                if not isinstance(row, dict):
                    raise InputError("", "expected a JSON object per line")
                events.append(event_from_mapping(row, person=None, received_ms=now_ms, path=""))
            except (orjson.JSONDecodeError, InputError) as exc:
                fail(f"{name}:{lineno}: {exc}", 2)
    return events


@app.command()
def explain(
    files: Annotated[
        list[str] | None, typer.Argument(help="Webhook bodies or JSON Lines; - for stdin.")
    ] = None,
    config: ConfigOpt = None,
    plugin_config: PluginOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Machine-readable output.", metavar="")
    ] = False,
) -> None:
    """Print, for each PostHog event, the operations that would be sent or why it is dropped;
    for a Customer.io reporting webhook, the PostHog event it becomes."""
    from posthog_customerio.mapping.explain import explain as run_explain
    from posthog_customerio.mapping.explain import format_explanation

    settings = settings_from(config, plugin_config)
    reporting: list[tuple[str, bytes]] = []
    results = run_explain(_read_events(files or [], reporting), settings.mapping_rules())
    reports = _explain_reporting(settings, reporting)
    if as_json:
        sys.stdout.write(
            orjson.dumps(
                [*(r.as_dict() for r in results), *reports],
                option=orjson.OPT_INDENT_2,
                default=str,
            ).decode()
            + "\n"
        )
        return
    for r in results:
        out.print(format_explanation(r), markup=False)
        out.print()
    for report in reports:
        out.print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode(), markup=False)
        out.print()


def _explain_reporting(settings: Settings, bodies: list[tuple[str, bytes]]) -> list[Any]:
    from posthog_customerio.mapping.reporting import explain_reporting
    from posthog_customerio.pipeline.reporting import options_of
    from posthog_customerio.sources.reporting import parse_reporting_body

    found = []
    for name, data in bodies:
        try:
            report = parse_reporting_body(data)
        except InputError as exc:
            fail(f"{name}: Customer.io reporting webhook: {exc}", 2)
        found.append(explain_reporting(report, options_of(settings)))
    return found


def _queue_call(settings: Settings, fn: Any) -> Any:
    from posthog_customerio.runtime import store_location

    async def go() -> Any:
        async with store_location(settings).opened() as queue:
            return await fn(queue)

    return asyncio.run(go())


ReasonOpt = Annotated[
    str | None, typer.Option("--reason", help="Only this reason.", show_default=False)
]
SinceOpt = Annotated[
    str | None,
    typer.Option("--since", help="Only newer: ISO time or 30m/2h/1d.", show_default=False),
]


@dead_letters_app.command("list")
def dl_list(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseUrlOpt = None,
    reason: ReasonOpt = None,
    since: SinceOpt = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 100,
    as_json: Annotated[
        bool, typer.Option("--json", help="Machine-readable output.", metavar="")
    ] = False,
) -> None:
    """List dead letters, newest first."""
    from posthog_customerio import admin

    settings = settings_from(config, None, data_dir=data_dir, database_url=database_url)
    after = parse_since(since)
    rows = _queue_call(
        settings, lambda q: admin.list_dead_letters(q, reason=reason, since=after, limit=limit)
    )
    if as_json:
        sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    table = Table("id", "time", "reason", "action", "person", "detail")
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created_at"]))
        table.add_row(
            str(r["id"]), when, r["reason"], r["action"], r["partition"], r["detail"][:80]
        )
    out.print(table)
    out.print(f"{len(rows)} dead letter(s)")


@dead_letters_app.command("show")
def dl_show(
    dead_letter_id: Annotated[int, typer.Argument(help="The id from `list`.")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseUrlOpt = None,
) -> None:
    """Everything about one dead letter: the operation, the request, the response."""
    from posthog_customerio import admin

    settings = settings_from(config, None, data_dir=data_dir, database_url=database_url)
    letter = _queue_call(settings, lambda q: admin.show_dead_letter(q, dead_letter_id))
    if letter is None:
        fail(f"no dead letter with id {dead_letter_id}", 1)
    sys.stdout.write(orjson.dumps(letter, option=orjson.OPT_INDENT_2).decode() + "\n")


def _select(ids: list[int] | None, all_: bool, reason: str | None, since: str | None) -> Selection:
    """The ``admin.Selection`` the arguments name: ids, else --all/--reason/--since."""
    from posthog_customerio.admin import Selection

    if ids:
        return Selection(ids=tuple(ids))
    if not (all_ or reason or since):
        fail("name dead-letter ids, or select with --all / --reason / --since", 2)
    return Selection(reason=reason, since=parse_since(since))


IdsArg = Annotated[list[int] | None, typer.Argument(help="Dead-letter ids.")]
AllOpt = Annotated[bool, typer.Option("--all", help="Every dead letter.", metavar="")]


def _on_selection(
    action: Callable[..., Awaitable[int]],
    ids: list[int] | None,
    all_: bool,
    reason: str | None,
    since: str | None,
    settings: Settings,
) -> int:
    """Run ``admin.replay`` or ``admin.purge`` on the dead letters the arguments select."""
    chosen = _select(ids, all_, reason, since)
    return int(_queue_call(settings, lambda q: action(q, chosen, via="cli")))


@dead_letters_app.command("replay")
def dl_replay(
    ids: IdsArg = None,
    all_: AllOpt = False,
    reason: ReasonOpt = None,
    since: SinceOpt = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseUrlOpt = None,
) -> None:
    """Re-enqueue dead letters with their original event ids (nothing duplicates)."""
    from posthog_customerio import admin

    settings = settings_from(config, None, data_dir=data_dir, database_url=database_url)
    n = _on_selection(admin.replay, ids, all_, reason, since, settings)
    out.print(f"replayed {n} dead letter(s); the running server delivers them")


@dead_letters_app.command("purge")
def dl_purge(
    ids: IdsArg = None,
    all_: AllOpt = False,
    reason: ReasonOpt = None,
    since: SinceOpt = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseUrlOpt = None,
) -> None:
    """Delete dead letters for good."""
    from posthog_customerio import admin

    settings = settings_from(config, None, data_dir=data_dir, database_url=database_url)
    n = _on_selection(admin.purge, ids, all_, reason, since, settings)
    out.print(f"purged {n} dead letter(s)")


def forget_summary(result: Any, suppress: bool) -> str:
    """What ``forget`` did, in words."""
    action = "suppress" if suppress else "delete"
    ids = ", ".join(result.distinct_ids)
    lines = [
        f"forgot {len(result.distinct_ids)} distinct_id(s): {ids}",
        f"  removed: {result.identities} identity state(s), {result.operations} pending "
        f"operation(s), {result.dead_letters} dead letter(s)",
        f"  enqueued: {result.enqueued} Customer.io {action} operation(s); "
        "they are delivered by `serve` (now if it is running)",
    ]
    if result.in_flight:
        lines.append(
            f"  {result.in_flight} operation(s) were being delivered at that moment: they "
            f"reach Customer.io first, the {action} follows them"
        )
    return "\n".join(lines)


@app.command()
def forget(
    distinct_ids: Annotated[list[str], typer.Argument(help="PostHog distinct_id(s) to forget.")],
    suppress: Annotated[
        bool,
        typer.Option(
            "--suppress",
            help="Suppress in Customer.io (delete, and refuse the identifiers from now on).",
            metavar="",
        ),
    ] = False,
    config: ConfigOpt = None,
    plugin_config: PluginOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseUrlOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Machine-readable output.", metavar="")
    ] = False,
) -> None:
    """Delete a person in Customer.io and everything the connector keeps about them (GDPR).

    Removes the identity state, pending operations and dead letters of each DISTINCT_ID,
    records (distinct_id, time) in the queue's `forgotten` table, and enqueues a Customer.io
    delete (or suppress) delivered like any operation. Safe beside a running `serve`.
    """
    from posthog_customerio import admin
    from posthog_customerio.mapping.mapper import EventMapper

    ids = [d for d in distinct_ids if d]
    if not ids:
        fail("name at least one non-empty distinct_id", 2)
    settings = settings_from(config, plugin_config, data_dir=data_dir, database_url=database_url)
    forgetter = EventMapper(settings.mapping_rules())
    result = _queue_call(
        settings, lambda q: admin.forget(q, forgetter, ids, suppress=suppress, via="cli")
    )
    if as_json:
        data = admin.forget_json(result, suppress)
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    out.print(forget_summary(result, suppress), markup=False)


def main() -> None:
    try:
        app()
    except ConnectorError as exc:
        if _debug:
            raise
        err.print(f"[bold red]error:[/] {exc}")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


app.command("backfill")(backfill_cmd)  # last, where `--help` has always listed it

__all__ = ["app", "main"]
