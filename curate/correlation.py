"""Two correlations the item statistics rest on: point-biserial (discriminability) and Kendall's tau-b.

Why its own module: :mod:`curate.item_stats` scores each item's discriminability with the
point-biserial r, :mod:`curate.subsets` orders items by it and judges a subset's model ranking with
Kendall's tau -- one definition each, pure functions of plain sequences (numpy only; importing
scipy.stats costs seconds).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def point_biserial(solved: Sequence[bool], ability: Sequence[float]) -> float | None:
    """Pearson's r between 0/1 ``solved`` and ``ability``; None with < 3 models or no variance.

    >>> round(point_biserial([True, True, False, False], [0.9, 0.8, 0.5, 0.4]), 3)
    0.97
    >>> point_biserial([True, True, True], [0.9, 0.5, 0.4]) is None
    True
    """
    x = np.asarray(solved, dtype=float)
    y = np.asarray(ability, dtype=float)
    if x.size < 3 or x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b between two score lists (ties handled as scipy's ``kendalltau`` does);
    None when undefined (< 2 values, or either list constant). O(n^2): n is a number of models,
    and importing scipy.stats costs seconds.

    >>> kendall_tau([1, 2, 3], [1, 3, 2])
    0.3333333333333333
    """
    n = len(x)
    if n != len(y):
        raise ValueError("kendall_tau: lists of different lengths")
    conc = disc = tie_x = tie_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                tie_x += 1
            elif dy == 0:
                tie_y += 1
            elif (dx > 0) == (dy > 0):
                conc += 1
            else:
                disc += 1
    denom = math.sqrt((conc + disc + tie_x) * (conc + disc + tie_y))
    return None if denom == 0 or n < 2 else (conc - disc) / denom
