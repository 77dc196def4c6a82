"""Shared by the secondary-suppression tests: can a hidden cell be solved for?"""

from __future__ import annotations

import numpy as np


def solvable(cell: int, hidden: set[int], equations: list[tuple[int, list[int]]]) -> bool:
    """Whether ``cell`` is determined by equations ``total = sum(parts)`` once every cell not
    in ``hidden`` is known: its unit vector lies in the row space over the hidden cells."""
    unknown = sorted(hidden)
    pos = {c: i for i, c in enumerate(unknown)}
    rows = []
    for total, parts in equations:
        v = np.zeros(len(unknown))
        for c, coef in ((total, 1), *((p, -1) for p in parts)):
            if c in pos:
                v[pos[c]] += coef
        if v.any():
            rows.append(v)
    if not rows:
        return False
    a = np.array(rows)
    e = np.zeros(len(unknown))
    e[pos[cell]] = 1
    return np.linalg.matrix_rank(np.vstack([a, e])) == np.linalg.matrix_rank(a)
