"""CLI commands of this stage (registered into the ``mmcurate`` app by ``curate.cli``)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to ``app``. (Placeholder until the stage lands.)"""
