"""Paired statistics that decide a comparison of two compression methods run on the same seeds.

For every seed both arms see the same data order, search and initialisation, so the
unit of analysis is the per-seed difference ``d = a - b`` (e.g. PSNR of coevo minus PSNR
of L1, in dB). :func:`paired` reports:

* the mean difference and its 95% interval (Student t, n - 1 degrees of freedom);
* a paired t-test and a Wilcoxon signed-rank test (two-sided);
* TOST (two one-sided t-tests) for equivalence within ``+-margin``: a small p says the
  difference is inside the margin, so "no difference" can be claimed rather than
  "not shown".

:func:`holm` adjusts the p-values of all comparisons in one table (Holm-Bonferroni), and
:func:`verdict` turns one comparison into ``better``, ``worse``, ``equivalent`` or
``undecided``. ``tests/test_paired_stats.py`` checks each against hand-computed numbers.

:func:`spearman` and :func:`spearman_ci` (rank correlation with a bootstrap interval) judge how well
one number predicts another (a fitness the fine-tuned result, a genome's narrowest width its fidelity).
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence

import numpy as np

ALPHA = 0.05
EQUIVALENCE_DB = 0.15  # the margin inside which two methods count as equal


def _t_sf(t: float, df: int) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom."""
    from scipy import stats

    return float(stats.t.sf(t, df))


def paired(a: Sequence[float], b: Sequence[float], margin: float = EQUIVALENCE_DB,
           confidence: float = 0.95) -> Dict[str, float]:
    """Statistics of the per-seed differences ``a[i] - b[i]`` (same seeds, same order)."""
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"paired statistics need two equally long lists of >= 2 per-seed values, got "
                         f"{a.shape} and {b.shape}")
    d = a - b
    n, df = len(d), len(d) - 1
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    if se > 0:
        t = mean / se
        p_t = 2 * _t_sf(abs(t), df)
        # H0 "d <= -margin" rejected when (mean + margin) / se is large; H0 "d >= margin" when (mean - margin) / se
        # is very negative; equivalence needs both
        p_tost = max(_t_sf((mean + margin) / se, df), _t_sf(-(mean - margin) / se, df))
    else:  # every seed gave the same difference: the sign (or its absence) is certain
        t = math.copysign(math.inf, mean) if mean else 0.0
        p_t = 0.0 if mean else 1.0
        p_tost = 0.0 if abs(mean) < margin else 1.0
    nonzero = d[d != 0]
    p_w = float(stats.wilcoxon(nonzero).pvalue) if len(nonzero) else 1.0
    return {"n": n, "mean": mean, "sd": sd, "ci_low": mean - half, "ci_high": mean + half, "t": float(t),
            "p_t": float(p_t), "p_wilcoxon": p_w, "margin": margin, "p_tost": float(p_tost)}


def holm(pvalues: Sequence[float]) -> List[float]:
    """Holm-Bonferroni adjusted p-values, in the order given (each at most 1, never below a smaller p's)."""
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return [float(x) for x in adjusted]


def verdict(stats: Dict[str, float], p_adjusted: float, p_tost_adjusted: float, alpha: float = ALPHA) -> str:
    """``better``/``worse`` (paired t-test, adjusted p < alpha), else ``equivalent`` (TOST, adjusted), else
    ``undecided``: the data show neither a difference nor its absence."""
    if p_adjusted < alpha:
        return "better" if stats["mean"] > 0 else "worse"
    if p_tost_adjusted < alpha:
        return "equivalent"
    return "undecided"


def compare_all(pairs: Dict[str, tuple], margin: float = EQUIVALENCE_DB, alpha: float = ALPHA) -> Dict[str, Dict]:
    """``{name: (a values, b values)}`` -> ``{name: stats + p_t_holm, p_tost_holm, verdict}``, Holm over all."""
    results = {name: paired(a, b, margin) for name, (a, b) in pairs.items()}
    names = list(results)
    p_t = holm([results[n]["p_t"] for n in names])
    p_tost = holm([results[n]["p_tost"] for n in names])
    for n, pt, pe in zip(names, p_t, p_tost):
        results[n].update(p_t_holm=pt, p_tost_holm=pe, verdict=verdict(results[n], pt, pe, alpha))
    return results


# ----------------------------------------------------------------------------- rank correlation
def spearman(x, y) -> float:
    """Spearman's rho (average ranks for ties)."""
    def ranks(v):
        v = np.asarray(v, dtype=np.float64)
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for val in np.unique(v):  # ties share their mean rank
            idx = np.flatnonzero(v == val)
            r[idx] = r[idx].mean()
        return r
    rx, ry = ranks(x), ranks(y)
    return float(np.corrcoef(rx, ry)[0, 1])


def spearman_ci(x, y, reps: int = 2000, seed: int = 0):
    """Spearman's rho and a 95% percentile bootstrap interval (pairs resampled with replacement)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(reps):
        i = rng.integers(0, len(x), len(x))
        if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0:  # a resample of one distinct value has no rank order
            draws.append(spearman(x[i], y[i]))
    lo, hi = (np.percentile(draws, [2.5, 97.5]) if draws else (float("nan"), float("nan")))
    return {"rho": spearman(x, y), "ci95": [float(lo), float(hi)]}
