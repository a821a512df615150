"""Small statistics the reports share: the t quantile behind every 95% interval (simulations'
compare and sweep, the Overview's money)."""

from __future__ import annotations

import math

# two-sided 95% t quantiles by degrees of freedom; beyond 120 the normal 1.96 is close enough
T95 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    11: 2.201,
    12: 2.179,
    13: 2.160,
    14: 2.145,
    15: 2.131,
    16: 2.120,
    17: 2.110,
    18: 2.101,
    19: 2.093,
    20: 2.086,
    21: 2.080,
    22: 2.074,
    23: 2.069,
    24: 2.064,
    25: 2.060,
    26: 2.056,
    27: 2.052,
    28: 2.048,
    29: 2.045,
    30: 2.042,
    40: 2.021,
    60: 2.000,
    120: 1.980,
}


def t95(df: int) -> float:
    """The two-sided 95% t quantile for `df` degrees of freedom (inf below 1, 1.96 beyond the table)."""
    if df <= 0:
        return math.inf
    for k in sorted(T95):
        if k >= df:
            return T95[k]
    return 1.960


__all__ = ["T95", "t95"]
