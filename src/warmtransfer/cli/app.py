"""The `warmtransfer` command."""

from __future__ import annotations

import asyncio
import logging
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


@app.callback()
def _root() -> None:
    """warmtransfer"""


def main() -> None:
    app()
