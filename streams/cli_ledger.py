"""`tollway` subcommands for the ledger area (registered by streams/cli.py)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main `tollway` app."""
