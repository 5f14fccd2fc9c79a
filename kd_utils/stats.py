"""Differences between methods over seeds, stated the way the notebooks' prose must state them: the
difference of means with its standard error, a 95% interval, a test, and "inside the noise" when the
interval holds zero.

    d = difference(kd_accs, scratch_accs, names=("KD", "scratch"), paired=True)
    d.text()   # 'KD - scratch = +D ± SE points (SE, paired over 3 seeds; 95% CI LOW to HIGH, p = P)'
    differences_table({"kd": [...], "dkd": [...], "ce": [...]}, baseline="ce", paired=True)

``paired=True`` pairs the i-th value of both groups: runs that share a seed (the suite's seeds fix the
initialisation and the augmentation plan, so two methods' seed-i runs differ only in the method). Its
standard error is that of the per-seed differences (a paired t-test); unpaired groups use Welch's
standard error and degrees of freedom. With three seeds the t quantile is 4.30 (paired) or about that
(Welch), so a difference needs about 2.5 standard errors to leave the noise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as _st


@dataclass(frozen=True)
class Difference:
    """``mean_a - mean_b`` (in ``unit``s: values times ``scale``) with its standard error, 95% interval
    and two-sided p-value; ``noise``: the interval holds zero."""
    names: tuple[str, str]
    mean_a: float
    mean_b: float
    diff: float
    se: float
    dof: float
    ci95: tuple[float, float]
    p_value: float
    paired: bool
    n: tuple[int, int]
    unit: str

    @property
    def noise(self) -> bool:
        return not (self.ci95[0] > 0 or self.ci95[1] < 0)

    def to_dict(self) -> dict[str, object]:
        """JSON-safe fields for a results file (a non-finite value, e.g. the p-value of a zero
        difference with zero spread, becomes None), plus ``inside_noise``."""
        def num(x):
            return float(x) if math.isfinite(x) else None
        return {"names": list(self.names), "mean_a": num(self.mean_a), "mean_b": num(self.mean_b),
                "difference": num(self.diff), "se": num(self.se), "dof": num(self.dof),
                "ci95": [num(c) for c in self.ci95], "p_value": num(self.p_value), "paired": bool(self.paired),
                "n": [int(k) for k in self.n], "unit": self.unit, "inside_noise": bool(self.noise)}

    def text(self) -> str:
        """One sentence for a notebook's prose (every number computed, none typed)."""
        how = f"paired over {self.n[0]} seeds" if self.paired else f"Welch, {self.n[0]} and {self.n[1]} seeds"
        verdict = " -- inside the noise" if self.noise else ""
        return (f"{self.names[0]} - {self.names[1]} = {self.diff:+.2f} ± {self.se:.2f} {self.unit} (SE, {how}; "
                f"95% CI {self.ci95[0]:+.2f} to {self.ci95[1]:+.2f}, p = {self.p_value:.3g}){verdict}")


def _values(x, name: str) -> np.ndarray:
    v = np.asarray(list(x) if not isinstance(x, np.ndarray) else x, dtype=float).ravel()
    if v.size < 2:
        raise ValueError(f"{name} needs at least 2 values (seeds) for a standard error, got {v.size}")
    if not np.isfinite(v).all():
        raise ValueError(f"{name} holds a non-finite value: {v.tolist()}")
    return v


def difference(a: Sequence[float], b: Sequence[float], *, names: tuple[str, str] = ("a", "b"), paired: bool = False,
               scale: float = 100.0, unit: str = "points") -> Difference:
    """The difference of means of ``a`` and ``b`` (e.g. per-seed test accuracies as fractions; ``scale``
    100 reports percentage points). ``paired``: the i-th values belong together (same seed)."""
    va, vb = _values(a, names[0]) * scale, _values(b, names[1]) * scale
    if paired:
        if va.size != vb.size:
            raise ValueError(f"paired groups need as many values each, got {va.size} ({names[0]}) and {vb.size} "
                             f"({names[1]})")
        d = va - vb
        se, dof = float(d.std(ddof=1) / math.sqrt(d.size)), float(d.size - 1)
    else:
        qa, qb = va.var(ddof=1) / va.size, vb.var(ddof=1) / vb.size
        se = float(math.sqrt(qa + qb))
        # Welch-Satterthwaite; identical constant groups leave no variance to estimate: dof of the pooled case
        dof = float((qa + qb) ** 2 / (qa ** 2 / (va.size - 1) + qb ** 2 / (vb.size - 1))) if qa + qb > 0 \
            else float(va.size + vb.size - 2)
    diff = float(va.mean() - vb.mean())
    if se == 0:
        p = 1.0 if diff == 0 else 0.0
        ci = (diff, diff)
    else:
        t = diff / se
        p = float(2 * _st.t.sf(abs(t), dof))
        h = float(_st.t.ppf(0.975, dof)) * se
        ci = (diff - h, diff + h)
    return Difference(tuple(names), float(va.mean()), float(vb.mean()), diff, se, dof, ci, p, paired,
                      (int(va.size), int(vb.size)), unit)


def differences_table(groups: Mapping[str, Sequence[float]], baseline: str, *, paired: bool = False,
                      scale: float = 100.0) -> pd.DataFrame:
    """Every group against ``baseline``: one row per other group with its mean, the difference, its SE,
    the 95% interval, p and whether the difference is inside the noise."""
    if baseline not in groups:
        raise ValueError(f"baseline {baseline!r} is not one of the groups {sorted(groups)}")
    rows = []
    for name, values in groups.items():
        if name == baseline:
            continue
        d = difference(values, groups[baseline], names=(name, baseline), paired=paired, scale=scale)
        rows.append({"method": name, "mean": d.mean_a, f"{baseline} mean": d.mean_b, "difference": d.diff,
                     "se": d.se, "ci95_low": d.ci95[0], "ci95_high": d.ci95[1], "p": d.p_value,
                     "inside_noise": d.noise})
    return pd.DataFrame(rows).set_index("method")


def pairs_table(groups: Mapping[str, Sequence[float]], pairs: Sequence[tuple[str, str]], *, paired: bool = False,
                scale: float = 100.0) -> pd.DataFrame:
    """Any chosen comparisons ``[(a, b), ...]`` of ``groups``: one row ``"a - b"`` each, with the columns of
    :func:`differences_table` (``a``'s mean as ``mean``, ``b``'s as ``baseline mean``)."""
    unknown = sorted({n for pair in pairs for n in pair} - set(groups))
    if unknown or not pairs:
        raise ValueError(f"pairs must name groups among {sorted(groups)}; " +
                         (f"unknown: {unknown}" if unknown else "got none"))
    rows = []
    for a, b in pairs:
        d = difference(groups[a], groups[b], names=(a, b), paired=paired, scale=scale)
        rows.append({"comparison": f"{a} - {b}", "mean": d.mean_a, "baseline mean": d.mean_b, "difference": d.diff,
                     "se": d.se, "ci95_low": d.ci95[0], "ci95_high": d.ci95[1], "p": d.p_value,
                     "inside_noise": d.noise})
    return pd.DataFrame(rows).set_index("comparison")


@dataclass(frozen=True)
class Share:
    """``(part - base) / (whole - base)``: how much of ``whole``'s gain over ``base`` ``part`` reaches, with
    its delta-method standard error over paired seeds."""
    share: float
    se: float
    part_gain: float   # mean of part - base, in points
    whole_gain: float  # mean of whole - base, in points
    n: int

    def text(self, names: tuple[str, str] = ("part", "whole")) -> str:
        return (f"{names[0]} reaches {self.share:.2f} ± {self.se:.2f} of {names[1]}'s gain "
                f"({self.part_gain:+.2f} of {self.whole_gain:+.2f} points; SE by the delta method, paired over "
                f"{self.n} seeds)")


def share_of_gain(part: Sequence[float], whole: Sequence[float], base: Sequence[float], *,
                  scale: float = 100.0) -> Share:
    """How much of ``whole``'s gain over ``base`` (e.g. KD over scratch) ``part`` (a control) reaches,
    seeds paired (the i-th values of all three share a seed). With per-seed gains ``g_p = part - base`` and
    ``g_w = whole - base``, means ``m_p``, ``m_w``: share ``m_p / m_w`` and, by the delta method,
    ``Var = (Var(m_p) - 2 r Cov(m_p, m_w) + r^2 Var(m_w)) / m_w^2`` with ``r = m_p / m_w``. A whole gain
    inside its own noise makes the share meaningless: the SE is then large, and the caller should say so."""
    vp, vw, vb = (_values(x, n) * scale for x, n in ((part, "part"), (whole, "whole"), (base, "base")))
    if not vp.size == vw.size == vb.size:
        raise ValueError(f"share_of_gain pairs seeds: part, whole and base need as many values each, got "
                         f"{vp.size}, {vw.size}, {vb.size}")
    gp, gw = vp - vb, vw - vb
    mp, mw, n = float(gp.mean()), float(gw.mean()), gp.size
    if mw == 0:
        raise ValueError("whole - base has mean 0: no gain to take a share of")
    r = mp / mw
    cov = np.cov(gp, gw, ddof=1) / n
    var = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / mw ** 2
    return Share(r, float(math.sqrt(max(var, 0.0))), mp, mw, int(n))


def seed_entry(values: Sequence[float]) -> dict[str, object]:
    """A results file's entry for one method: ``{"accuracy_per_seed", "mean", "std"}`` (sample std,
    ddof 1; 0.0 for a single seed), values as given (fractions)."""
    v = [float(x) for x in values]
    if not v or not all(math.isfinite(x) for x in v):
        raise ValueError(f"values must be a non-empty list of finite numbers, got {list(values)}")
    return {"accuracy_per_seed": v, "mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
