"""The `warmtransfer` command."""

from __future__ import annotations

import asyncio
import logging
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    help="Warm transfers of phone calls from an AI voice agent to a human, over SIP.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


class LogFormat(StrEnum):
    JSON = "json"
    TEXT = "text"


def _run(coro: object) -> object:
    try:
        import uvloop
    except ImportError:  # uvloop is optional (e.g. on Windows)
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type]


@app.command()
def demo(
    decline: Annotated[
        bool, typer.Option("--decline", help="the human says no: shows the failure path")
    ] = False,
    keys: Annotated[
        bool,
        typer.Option("--keys", help="the human answers with a key (1 or 2) instead of speaking"),
    ] = False,
    out: Annotated[
        Path, typer.Option("--out", help="folder for recordings and the JSON timeline")
    ] = Path("warmtransfer-demo"),
) -> None:
    """Run a complete warm transfer locally: engine, caller and human over SIP/RTP on 127.0.0.1."""
    from warmtransfer.demo.runner import run_demo

    logging.basicConfig(level=logging.WARNING)
    result = _run(run_demo(out, decline=decline, keys=keys, console=console))
    outcome = getattr(result, "outcome", None)
    expected_ok = not decline
    if outcome is None or bool(outcome.ok) != expected_ok:
        raise typer.Exit(1)


@app.command()
def report(
    call_id: Annotated[str, typer.Argument(help="the caller's SIP Call-ID")],
    records: Annotated[Path, typer.Option("--records", help="the records store (SQLite file)")],
    out: Annotated[
        Path | None, typer.Option("--out", help="the HTML file to write (default: by call id)")
    ] = None,
) -> None:
    """Write one call's record as a self-contained HTML page: timeline, SIP ladder, audio."""
    import re

    from warmtransfer.server.report import write_report

    target = out or Path(f"warmtransfer-call-{re.sub(r'[^A-Za-z0-9_.-]+', '_', call_id)}.html")
    try:
        written = write_report(records, call_id, target)
    except (FileNotFoundError, LookupError) as exc:  # a Call-ID is never read as rich markup
        Console(stderr=True).print(f"error: {exc}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    console.print(f"wrote {written}", markup=False, highlight=False)


@app.command("merge-records")
def merge_records(
    into: Annotated[Path, typer.Argument(help="the records file to merge into (created)")],
    sources: Annotated[list[Path], typer.Argument(help="records files of other instances")],
) -> None:
    """Merge the records files of several instances (one per host) into one; safe to repeat."""
    from warmtransfer.server.records_merge import MergeError
    from warmtransfer.server.records_merge import merge_records as merge

    try:
        summary = merge(into, sources)
    except MergeError as exc:
        Console(stderr=True).print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(f"{into}: {summary}", markup=False, highlight=False, soft_wrap=True)


@app.command("check-config")
def check_config(
    file: Annotated[Path, typer.Argument(help="the service's config file (TOML)")],
) -> None:
    """Validate a config file and print what it sets up; exit 0 if it is usable, 2 if not."""
    from warmtransfer.config import ConfigError
    from warmtransfer.config import check_config as check
    from warmtransfer.config.summary import describe

    try:
        config = check(file)
    except ConfigError as exc:
        errors = Console(stderr=True)
        for problem in exc.problems:  # markup=False: config text is never read as rich markup
            errors.print(f"error: {problem}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    console.print(describe(config))
    console.print(f"{file}: OK", markup=False, highlight=False)


@app.command()
def serve(
    config_file: Annotated[Path, typer.Option("--config", help="the service's config (TOML)")],
    drain_timeout: Annotated[
        float | None,
        typer.Option(
            "--drain-timeout",
            min=0,
            help="on SIGTERM: seconds calls may go on (default: service.drain_timeout, 30)",
        ),
    ] = None,
    log_format: Annotated[
        LogFormat,
        typer.Option(
            "--log-format",
            help="json: one JSON object a line, with call_id and transfer_id; text: for people",
        ),
    ] = LogFormat.JSON,
) -> None:
    """Run the service: answer calls with the configured agent, warm-transfer them to humans.
    SIGTERM refuses new calls (503), lets calls finish for --drain-timeout, then ends them."""
    from warmtransfer.config import ConfigError
    from warmtransfer.config import check_config as check
    from warmtransfer.config.build import TrunkRegistrationError
    from warmtransfer.server.http import ListenError
    from warmtransfer.server.logs import install_json_logging, install_text_logging
    from warmtransfer.server.service import Service

    try:  # the same checks and errors as check-config, before any socket is opened
        config = check(config_file)
    except ConfigError as exc:
        errors = Console(stderr=True)
        for problem in exc.problems:
            errors.print(f"error: {problem}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    if log_format is LogFormat.JSON:
        install_json_logging(logging.INFO)
    else:  # control characters escaped: a logged Call-ID must not forge a line
        install_text_logging(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per webhook POST is noise
    try:
        _run(Service(config, drain_timeout=drain_timeout).run())
    except (TrunkRegistrationError, ListenError) as exc:  # an answer, not a crash
        Console(stderr=True).print(
            f"error: {config_file}: {exc}", markup=False, highlight=False, soft_wrap=True
        )
        raise typer.Exit(1) from None


@app.callback()
def _root() -> None:
    """warmtransfer"""


def main() -> None:
    app()
