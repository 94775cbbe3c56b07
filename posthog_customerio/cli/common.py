"""What every command shares: the consoles, the option types, loading settings, failing.

Commands live in ``main.py`` and ``backfill.py``; both import from here and never each other.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from posthog_customerio.errors import ConfigError
from posthog_customerio.settings import Settings, load_settings

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="TOML config file.", show_default=False)
]
PluginOpt = Annotated[
    Path | None,
    typer.Option(
        "--plugin-config",
        help="The PostHog Customer.io app's config (plugin.json keys) to import.",
        show_default=False,
    ),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Where the SQLite queue lives.", show_default=False),
]
DatabaseUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="The queue: sqlite:///PATH or postgresql://USER@HOST/DB "
        "\\[default: DATA_DIR/connector.db].",
        show_default=False,
    ),
]


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def settings_from(config: Path | None, plugin_config: Path | None, **cli: Any) -> Settings:
    try:
        return load_settings(cli=cli, config_file=config, plugin_config=plugin_config)
    except ConfigError as exc:
        err.print("[bold red]error:[/] invalid configuration:")
        for problem in exc.problems:
            err.print(f"  - {problem}")
        raise typer.Exit(2) from None


def parse_since(value: str | None) -> float | None:
    """``30m``, ``2h``, ``1d`` ago, or an ISO 8601 time."""
    if value is None:
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", value.strip())
    if m:
        scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return time.time() - float(m.group(1)) * scale
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        fail(f"--since {value!r}: use an ISO 8601 time or a duration like 30m, 2h, 1d", 2)
