"""Items without any image: a vision benchmark cannot use them, but an audit must still read them.

Why flag only (not in the default ``drop`` list): audits of text-only pools (VLMEvalKit result
files, MathVista's JSON without its images) screen exactly such items, and dropping them would
leave nothing to audit. The decision is made where it matters: ``balance`` never selects a
no-image item unless ``allow_no_image=True`` (``--allow-no-image``), and export refuses them.
Add ``no_image`` to ``[rules] drop`` to drop them at screening instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl

from curate.groups import no_image_expr
from filters.checks import check_frame

if TYPE_CHECKING:
    from filters.rules import RuleConfig

NAME = "no_image"
REASON = "the item has no image (a text-only item cannot test vision; balance skips it unless --allow-no-image)"


def check_no_image(items: pl.DataFrame, config: RuleConfig) -> pl.DataFrame:
    """``no_image_flag`` true (score 1.0, reason set) for items whose ``images`` is empty or null."""
    flags = items.with_columns(no_image_expr(items.columns).alias("__no_image"))["__no_image"].to_list()
    return check_frame(
        NAME, items["item_id"], flags, [1.0 if f else 0.0 for f in flags], [REASON if f else None for f in flags]
    )
