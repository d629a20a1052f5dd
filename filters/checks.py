"""The one shape every rule check returns (cleanlab-style: a check's name fixes its columns)."""

from __future__ import annotations

import polars as pl


def check_frame(name: str, item_ids: pl.Series, flags: list, scores: list, reasons: list, **extra: pl.Series) -> pl.DataFrame:
    """``item_id``, ``<name>_flag`` (bool), ``<name>_score`` (float), ``<name>_reason`` (str), then
    ``<name>_<key>`` for each extra column, in item order."""
    return pl.DataFrame(
        {
            "item_id": item_ids,
            f"{name}_flag": pl.Series(flags, dtype=pl.Boolean),
            f"{name}_score": pl.Series(scores, dtype=pl.Float64),
            f"{name}_reason": pl.Series(reasons, dtype=pl.String),
            **{f"{name}_{key}": series for key, series in extra.items()},
        }
    )
