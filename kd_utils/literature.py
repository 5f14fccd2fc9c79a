"""Our CPU-scale CIFAR-10 results against the field's published numbers (Task 1 and Task 3 second editions).

* :data:`PUBLISHED` -- the published CIFAR-100 top-1 accuracies (percent) the notebooks compare with, each
  with its source and whether the source reports the last epoch or the best epoch: the VGG-13 -> VGG-8
  table (RepDistiller's README, last epoch; DKD and KD+DOT from mdistiller's README, best epoch) and the
  deep mutual learning anchor (Zhang et al. 2018, two ResNet-32 peers). :func:`published_reference` gives
  ``{our method name: top-1}`` for :func:`ranking_agreement`; :func:`epoch_conventions` says which
  convention each number follows, for the table's caption.
* :func:`gap_closed` -- the share of the teacher-student gap a method closes (scalars, or per-seed lists
  with a delta-method standard error); :func:`published_gap_closed` gives the same for a published method,
  so a notebook compares like with like (published KD: 2.62 of 4.28 points, 0.612).
* :func:`ranking_agreement` -- Kendall's tau-b between our mean ranking of methods and a reference
  ranking, with a bootstrap over our seeds and the p-value under no association.
* :func:`load_epoch_ratios`, :func:`compute_estimate` -- the budget line: each method's epochs x seeds x
  CE-epoch seconds x its measured epoch cost ratio (``benchmarks``' ``method_epoch_cost`` figure).

Accuracies may be fractions (0.7236) or percents (72.36): a set of values all in [0, 1] is read as
fractions and shown in percent. Nothing here trains or imports torch.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

# ------------------------------------------------------------------ published numbers ----
VGG_PAIR = "CIFAR-100 VGG-13 -> VGG-8"
DML_PAIR = "CIFAR-100 ResNet-32 + ResNet-32 (mutual)"
REPDISTILLER = "RepDistiller README (Tian et al., ICLR 2020, CRD), CIFAR-100 vgg13 -> vgg8, 240 epochs"
MDISTILLER = "mdistiller README (megvii-research), CIFAR-100 vgg13 -> vgg8, 240 epochs"
DML_SOURCE = "Zhang et al., CVPR 2018 (Deep Mutual Learning), CIFAR-100, Table 1, ResNet-32 + ResNet-32"
EPOCHS = ("last epoch", "best epoch", "not stated")


@dataclass(frozen=True)
class Published:
    """One published top-1 accuracy (percent).

    ``name``: as the source names it; ``method``: our registered distiller (``train_kd.DISTILLERS``), or
    ``None`` for the baselines (``role`` "teacher", "student", "alone") and for a method we do not have;
    ``epoch``: "last epoch", "best epoch" or "not stated" (what the source reports)."""
    name: str
    method: str | None
    role: str
    top1: float
    epoch: str
    source: str
    setting: str = VGG_PAIR
    note: str = ""


def _rd(name: str, method: str | None, top1: float, role: str = "distilled") -> Published:
    return Published(name, method, role, top1, "last epoch", REPDISTILLER)


PUBLISHED: dict[str, Published] = {
    "teacher": _rd("vgg13 (teacher)", None, 74.64, "teacher"),
    "student": _rd("vgg8 (student, cross-entropy)", None, 70.36, "student"),
    "kd": _rd("KD", "kd", 72.98),
    "fitnets": _rd("FitNet", "fitnets", 71.02),
    "at": _rd("AT", "at", 71.43),
    "sp": _rd("SP", "sp", 72.68),
    "cc": _rd("CC", "cc", 70.71),
    "vid": _rd("VID", "vid", 71.23),
    "rkd": _rd("RKD", "rkd", 71.48),
    "pkt": _rd("PKT", "pkt", 72.88),
    "ab": _rd("AB", "ab", 70.94),
    "ft": _rd("FT", "ft", 70.58),
    "fsp": _rd("FSP", "fsp", 70.23),
    "nst": _rd("NST", "nst", 71.53),
    "crd": _rd("CRD", "crd", 73.94),
    "dkd": Published("DKD", "dkd", "distilled", 74.68, "best epoch", MDISTILLER),
    "kd+dot": Published("KD+DOT", None, "distilled", 73.77, "best epoch", MDISTILLER,
                        note="KD trained with the DOT optimiser (Zhao et al., ICCV 2023); no counterpart here"),
    "dml_alone": Published("ResNet-32 alone", None, "alone", 68.99, "not stated", DML_SOURCE, DML_PAIR),
    "dml_peer_1": Published("DML ResNet-32, peer 1", "cohort", "distilled", 71.19, "not stated", DML_SOURCE,
                            DML_PAIR, "our counterpart: cohort with the mutual term (beta > 0), no teacher"),
    "dml_peer_2": Published("DML ResNet-32, peer 2", "cohort", "distilled", 70.75, "not stated", DML_SOURCE,
                            DML_PAIR, "our counterpart: cohort with the mutual term (beta > 0), no teacher"),
}


def published_table(setting: str | None = None) -> pd.DataFrame:
    """:data:`PUBLISHED` as a DataFrame (one row per entry), optionally only one ``setting``."""
    rows = [{"key": k, **vars(p)} for k, p in PUBLISHED.items() if setting is None or p.setting == setting]
    if not rows:
        raise ValueError(f"no published entry for setting {setting!r}; settings: {sorted(_settings())}")
    return pd.DataFrame(rows).set_index("key")


def _settings() -> set[str]:
    return {p.setting for p in PUBLISHED.values()}


def published_reference(epoch: str | None = None, setting: str = VGG_PAIR) -> dict[str, float]:
    """``{our method name: published top-1 (percent)}`` of the distilled entries of ``setting`` that have a
    counterpart here; ``epoch`` ("last epoch" or "best epoch") keeps only that convention (None: both, so
    DKD's best-epoch number sits among RepDistiller's last-epoch ones: :func:`epoch_conventions` says so)."""
    if epoch is not None and epoch not in EPOCHS:
        raise ValueError(f"epoch must be one of {EPOCHS} or None, got {epoch!r}")
    if setting not in _settings():
        raise ValueError(f"setting must be one of {sorted(_settings())}, got {setting!r}")
    return {p.method: p.top1 for p in PUBLISHED.values()
            if p.setting == setting and p.role == "distilled" and p.method is not None
            and (epoch is None or p.epoch == epoch)}


def epoch_conventions(methods: Sequence[str], setting: str = VGG_PAIR) -> str:
    """A caption fragment naming which published numbers among ``methods`` are last-epoch and which are
    best-epoch, e.g. "published: last epoch (RepDistiller) for kd, at; best epoch (mdistiller) for dkd"."""
    by_epoch: dict[tuple[str, str], list[str]] = {}
    for m in methods:
        p = next((p for p in PUBLISHED.values() if p.method == m and p.setting == setting), None)
        if p is None:
            raise ValueError(f"no published {setting} number for method {m!r}; published: "
                             f"{sorted(published_reference(setting=setting))}")
        by_epoch.setdefault((p.epoch, p.source.split(" ")[0]), []).append(m)
    return "published: " + "; ".join(f"{e} ({src}) for {', '.join(ms)}" for (e, src), ms in by_epoch.items())


# ------------------------------------------------------------------ validation ----
def _finite(values: Any, name: str) -> np.ndarray:
    try:
        a = np.asarray(values, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or a sequence of numbers, got {values!r}") from None
    if a.size == 0:
        raise ValueError(f"{name} holds no values")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite, got {a.tolist()}")
    return a


def _one_number(value: Any, name: str) -> float:
    a = _finite(value, name)
    if a.size != 1:
        raise ValueError(f"{name} must be one number, got {a.tolist()}")
    return float(a[0])


def _percent_scale(arrays: Mapping[str, np.ndarray], what: str) -> float:
    """100 when every value of ``arrays`` lies in [0, 1] (fractions), 1 when all lie in [0, 100] and above 1
    (percents); a mixture, or values outside [0, 100], is an error naming the values."""
    values = np.concatenate(list(arrays.values()))
    if values.min() < 0 or values.max() > 100:
        raise ValueError(f"{what} must be accuracies in [0, 1] (fractions) or [0, 100] (percents), got "
                         f"{ {k: v.tolist() for k, v in arrays.items()} }")
    if values.max() <= 1:
        return 100.0
    if values.min() <= 1:
        raise ValueError(f"{what} mix fractions (<= 1) and percents (> 1): "
                         f"{ {k: v.tolist() for k, v in arrays.items()} }; give them in one unit")
    return 1.0


# ------------------------------------------------------------------ gap closed ----
@dataclass(frozen=True)
class GapClosed:
    """The share of the teacher-student gap closed, from per-seed values: ``mean`` is the ratio of the
    means, ``se`` its delta-method standard error (the three groups taken as independent; a group of one
    value contributes no variance), ``n`` the number of values of each group."""
    mean: float
    se: float
    n: dict[str, int]
    method: str = "delta method on the ratio of means; student, distilled and teacher groups independent"


def gap_closed(student: float | Sequence[float], distilled: float | Sequence[float],
               teacher: float | Sequence[float]) -> float | GapClosed:
    """``(distilled - student) / (teacher - student)``: 0 is no better than the student trained alone, 1
    matches the teacher, negative is worse than the student alone.

    All three numbers plain: returns a float. Any of them a per-seed sequence: returns a :class:`GapClosed`
    with the ratio of the means and its delta-method standard error, each mean's variance being its sample
    variance (ddof=1) / n. Fractions or percents, one unit for all three. The teacher's mean must be above
    the student's (otherwise there is no gap to close)."""
    groups = {"student": _finite(student, "student"), "distilled": _finite(distilled, "distilled"),
              "teacher": _finite(teacher, "teacher")}
    _percent_scale(groups, "student, distilled and teacher")  # one unit, all in range
    s, d, t = (float(g.mean()) for g in groups.values())
    if t <= s:
        raise ValueError(f"teacher ({t:g}) must be above the student ({s:g}): gap_closed is the share of a "
                         "positive teacher-student gap")
    gap, gain = t - s, d - s
    value = gain / gap
    if all(np.ndim(x) == 0 for x in (student, distilled, teacher)):
        return value
    var = {k: (float(g.var(ddof=1)) / g.size if g.size > 1 else 0.0) for k, g in groups.items()}
    # partial derivatives of (d - s) / (t - s) with respect to each mean
    grad = {"distilled": 1.0 / gap, "student": -(t - d) / gap ** 2, "teacher": -gain / gap ** 2}
    se = math.sqrt(sum(grad[k] ** 2 * var[k] for k in groups))
    return GapClosed(value, se, {k: int(g.size) for k, g in groups.items()})


def published_gap_closed(method: str = "kd", setting: str = VGG_PAIR) -> float:
    """:func:`gap_closed` of a published method against the same table's teacher and student (VGG-13 ->
    VGG-8: KD closes 2.62 of 4.28 points, 0.612). DKD's best-epoch number is set against RepDistiller's
    last-epoch baselines (the only ones published for the pair); :func:`epoch_conventions` names it."""
    if setting != VGG_PAIR:
        raise ValueError(f"published gaps need a teacher: only {VGG_PAIR!r} has one, got {setting!r} "
                         "(deep mutual learning has no teacher)")
    ref = published_reference(setting=setting)
    if method not in ref:
        raise ValueError(f"no published {setting} number for method {method!r}; published: {sorted(ref)}")
    return gap_closed(PUBLISHED["student"].top1, ref[method], PUBLISHED["teacher"].top1)


# ------------------------------------------------------------------ ranking agreement ----
def kendall_tau_b_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of every row of ``x`` (B, n) with ``y`` (n,), by counting pairs:
    ``(concordant - discordant) / sqrt((pairs - ties in x) * (pairs - ties in y))``; NaN for a row (or a
    ``y``) whose values are all tied. Vectorised for the bootstrap; :func:`scipy.stats.kendalltau` gives the
    same on one row."""
    x, y = np.atleast_2d(np.asarray(x, dtype=float)), np.asarray(y, dtype=float)
    if x.shape[1] != y.shape[0] or y.ndim != 1:
        raise ValueError(f"x must be (B, n) and y (n,), got {x.shape} and {y.shape}")
    i, j = np.triu_indices(y.shape[0], k=1)
    sx, sy = np.sign(x[:, i] - x[:, j]), np.sign(y[i] - y[j])
    pairs = i.size
    denom = np.sqrt((pairs - (sx == 0).sum(axis=1)) * float(pairs - (sy == 0).sum()))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (sx * sy).sum(axis=1) / np.where(denom > 0, denom, 1.0), np.nan)


@dataclass
class RankingAgreement:
    """Kendall's tau-b between our mean accuracies and a reference over ``methods`` (the methods both
    have). ``ci``: 2.5/97.5 percentiles of tau over ``n_boot`` bootstrap resamples of our seeds (each
    method's seeds resampled with replacement); ``share_positive``: the share of resamples with tau > 0
    (resamples whose means all tie, where tau is undefined, are left out: ``n_boot_valid``; ``boot_taus``
    holds the valid resamples' taus, for a histogram); ``p_value``:
    two-sided, under no association (``p_method`` "exact" without ties, else scipy's "asymptotic")."""
    methods: list[str]
    ours_mean: dict[str, float]
    reference: dict[str, float]
    seeds: dict[str, int]
    tau: float
    ci: tuple[float, float]
    share_positive: float
    p_value: float
    p_method: str
    n: int
    n_boot: int
    n_boot_valid: int
    only_ours: list[str] = field(default_factory=list)
    only_reference: list[str] = field(default_factory=list)
    boot_taus: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)

    def table(self) -> pd.DataFrame:
        """One row per common method: our mean (percent), its rank, the reference and its rank (1 = best;
        ties share their mean rank)."""
        df = pd.DataFrame({"ours_mean": self.ours_mean, "seeds": self.seeds, "reference": self.reference},
                          index=self.methods)
        df.insert(1, "ours_rank", df["ours_mean"].rank(ascending=False))
        df["reference_rank"] = df["reference"].rank(ascending=False)
        return df.sort_values("reference_rank")

    def summary(self) -> str:
        """One sentence for a notebook, quoting tau, its interval, the share above 0 and the p-value."""
        return (f"Kendall's tau-b {self.tau:.2f} over {self.n} methods (bootstrap over seeds: 95% interval "
                f"[{self.ci[0]:.2f}, {self.ci[1]:.2f}], tau > 0 in {self.share_positive:.0%} of "
                f"{self.n_boot_valid} resamples; p = {self.p_value:.3g} under no association, {self.p_method})")


def ranking_agreement(ours: Mapping[str, Sequence[float]], reference: Mapping[str, float], n_boot: int = 2000,
                      seed: int = 0) -> RankingAgreement:
    """How well our ranking of methods follows a reference's (e.g. :func:`published_reference`).

    ``ours``: method -> per-seed accuracies (fractions or percents, one unit; a single number counts as
    one seed); ``reference``: method -> one number. Over the methods both have (at least 3), Kendall's
    tau-b of our means against the reference (:func:`scipy.stats.kendalltau`), a bootstrap over our seeds
    (``n_boot`` resamples from ``numpy.random.default_rng(seed)``) and the p-value under no association.
    A method with one seed, or with every seed equal, does not move in the bootstrap."""
    if not isinstance(n_boot, (int, np.integer)) or isinstance(n_boot, bool) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    common = sorted(set(ours) & set(reference))
    only_ours, only_ref = sorted(set(ours) - set(reference)), sorted(set(reference) - set(ours))
    if len(common) < 3:
        raise ValueError(f"ranking agreement needs at least 3 methods in both ours and the reference, got "
                         f"{len(common)}: {common}; only in ours: {only_ours}; only in the reference: {only_ref}")
    per_seed = {m: _finite(ours[m], f"ours[{m!r}]") for m in common}
    scale = _percent_scale(per_seed, "our accuracies")
    per_seed = {m: a * scale for m, a in per_seed.items()}
    ref = np.array([_one_number(reference[m], f"reference[{m!r}]") for m in common])
    means = np.array([per_seed[m].mean() for m in common])
    if np.unique(means).size == 1 or np.unique(ref).size == 1:
        which = "our means" if np.unique(means).size == 1 else "the reference values"
        raise ValueError(f"{which} are all equal over {common}: Kendall's tau-b is undefined")
    ties = np.unique(means).size < means.size or np.unique(ref).size < ref.size
    p_method = "asymptotic" if ties else "exact"
    res = stats.kendalltau(means, ref, variant="b", method=p_method)

    rng = np.random.default_rng(seed)
    boot = np.empty((n_boot, len(common)))
    for k, m in enumerate(common):
        a = per_seed[m]
        boot[:, k] = a[rng.integers(0, a.size, size=(n_boot, a.size))].mean(axis=1)
    taus = kendall_tau_b_rows(boot, ref)
    taus = taus[np.isfinite(taus)]
    lo, hi = np.percentile(taus, [2.5, 97.5])
    return RankingAgreement(
        methods=common, ours_mean={m: float(v) for m, v in zip(common, means)},
        reference={m: float(v) for m, v in zip(common, ref)}, seeds={m: int(per_seed[m].size) for m in common},
        tau=float(res.statistic), ci=(float(lo), float(hi)), share_positive=float((taus > 0).mean()),
        p_value=float(res.pvalue), p_method=p_method, n=len(common), n_boot=int(n_boot),
        n_boot_valid=int(taus.size), only_ours=only_ours, only_reference=only_ref, boot_taus=taus)


# ------------------------------------------------------------------ budget ----
COST_FIGURE = "method_epoch_cost"
BASELINE = "ce"  # the cost figure's denominator: its ratio is 1 by definition


def _cost_detail(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no benchmark file at {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON: {e}") from None
    figures = doc.get("figures") if isinstance(doc, dict) else None
    if not isinstance(figures, list):
        raise ValueError(f"{path} has no 'figures' list: not a benchmarks result file")
    fig = next((f for f in figures if isinstance(f, dict) and f.get("name") == COST_FIGURE), None)
    if fig is None:
        raise ValueError(f"{path} has no {COST_FIGURE!r} figure; its figures: "
                         f"{[f.get('name') for f in figures if isinstance(f, dict)]}")
    detail = fig.get("detail") or {}
    if not isinstance(detail.get("methods"), dict):
        raise ValueError(f"{path}: the {COST_FIGURE!r} figure has no per-method detail")
    return detail


def load_epoch_ratios(path: str | Path, stage: bool = False) -> dict[str, float]:
    """Each method's epoch / a cross-entropy epoch of the same student, from a ``benchmarks`` result file
    holding the ``method_epoch_cost`` figure (``figures[*].detail.methods[m].ratio``). ``stage=True``: the
    ratio of one epoch of the method's pre-training stage instead (``stage_ratio``: ab, ft, fsp,
    fitnets_two_stage), for the methods that have one. Methods the benchmark skipped (its
    ``detail.skipped``, e.g. fsp on unequal widths) are absent."""
    key = "stage_ratio" if stage else "ratio"
    out: dict[str, float] = {}
    for m, row in _cost_detail(path)["methods"].items():
        if isinstance(row, dict) and key in row:
            r = float(row[key])
            if not (math.isfinite(r) and r > 0):
                raise ValueError(f"{path}: method {m!r} has a {key} of {row[key]!r}; a ratio must be positive")
            out[m] = r
    return out


@dataclass
class Estimate:
    """The budget line: ``rows`` (method, epochs, seeds, ratio, hours; ratio and hours NaN where no ratio
    was measured), ``total_hours`` over the methods with a ratio, ``missing`` the methods without one."""
    rows: pd.DataFrame
    total_hours: float
    missing: list[str]
    fixed: list[str] = field(default_factory=list)  # rows of fixed costs (a teacher, cache builds), not methods

    def text(self) -> str:
        """e.g. "about 3.4 h of training for 4 methods (not counted, no measured epoch ratio: fsp)"."""
        counted = len(self.rows) - len(self.missing) - len(self.fixed)
        line = f"about {self.total_hours:.1f} h of training for {counted} method{'s' * (counted != 1)}"
        if self.fixed:
            line += " and " + ", ".join(self.fixed)
        if self.missing:
            line += f" (not counted, no measured epoch ratio: {', '.join(self.missing)})"
        return line


def _per_method(value: int | Mapping[str, int], name: str, methods: Sequence[str]) -> dict[str, int]:
    if isinstance(value, Mapping):
        unknown, absent = sorted(set(value) - set(methods)), [m for m in methods if m not in value]
        if unknown or absent:
            raise ValueError(f"{name} must give a value for exactly the methods {list(methods)}; "
                             f"unknown: {unknown}, missing: {absent}")
        out = dict(value)
    else:
        out = {m: value for m in methods}
    for m, v in out.items():
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{name} for {m!r} must be a non-negative integer, got {v!r}")
    return {m: int(v) for m, v in out.items()}


def compute_estimate(methods: Sequence[str], epochs: int | Mapping[str, int], seeds: int | Mapping[str, int],
                     ce_epoch_s: float, ratios: Mapping[str, float],
                     stage_epochs: Mapping[str, int] | None = None,
                     stage_ratios: Mapping[str, float] | None = None,
                     fixed_s: Mapping[str, float] | None = None) -> Estimate:
    """Hours each method's runs will take: ``epochs x seeds x ce_epoch_s x ratio`` (``ratios`` from
    :func:`load_epoch_ratios`; ``ce_epoch_s``: seconds of one cross-entropy epoch at the notebook's scale;
    ``epochs``/``seeds``: one number for all or a mapping over exactly ``methods``). The CE baseline
    ("ce") costs ratio 1 by definition; any other method without a ratio is reported in ``missing`` with
    NaN hours and left out of the total (never counted as 1). ``stage_epochs`` (method -> epochs of its
    pre-training stage, e.g. ab's ``init_epochs``) adds ``stage_epochs x seeds x ce_epoch_s x
    stage_ratio`` per seed; a staged method without a stage ratio is missing too. ``fixed_s``: costs that
    are not per-method epochs, in seconds (``{"teacher, 30 epochs": 2700, "teacher-output caches": 240}``),
    one row each (epochs, seeds and ratio NaN), counted in the total."""
    methods = list(methods)
    if not methods or len(set(methods)) != len(methods):
        raise ValueError(f"methods must be a non-empty list of distinct names, got {methods}")
    if isinstance(ce_epoch_s, bool) or not isinstance(ce_epoch_s, (int, float, np.number)) \
            or not (math.isfinite(ce_epoch_s) and ce_epoch_s > 0):
        raise ValueError(f"ce_epoch_s must be a positive number of seconds, got {ce_epoch_s!r}")
    ep, sd = _per_method(epochs, "epochs", methods), _per_method(seeds, "seeds", methods)
    stage_epochs = dict(stage_epochs or {})
    unknown = sorted(set(stage_epochs) - set(methods))
    if unknown:
        raise ValueError(f"stage_epochs names methods not in methods {methods}: {unknown}")
    st = _per_method(stage_epochs, "stage_epochs", list(stage_epochs)) if stage_epochs else {}
    ratios, stage_ratios = {**dict(ratios), BASELINE: 1.0}, dict(stage_ratios or {})
    for name, table in (("ratios", ratios), ("stage_ratios", stage_ratios)):
        for m, r in table.items():
            if not (isinstance(r, (int, float, np.number)) and math.isfinite(r) and r > 0):
                raise ValueError(f"{name}[{m!r}] must be a positive number, got {r!r}")
    rows, missing = [], []
    for m in methods:
        ratio = ratios.get(m, math.nan)
        staged = st.get(m, 0) > 0
        s_ratio = stage_ratios.get(m, math.nan) if staged else 0.0
        seconds = sd[m] * ce_epoch_s * (ep[m] * ratio + (st.get(m, 0) * s_ratio if staged else 0.0))
        if math.isnan(seconds):
            missing.append(m)
        rows.append({"method": m, "epochs": ep[m], "seeds": sd[m], "ratio": ratio,
                     "stage_epochs": st.get(m, 0), "stage_ratio": s_ratio if staged else math.nan,
                     "hours": seconds / 3600})
    fixed = dict(fixed_s or {})
    for name, sec in fixed.items():
        if name in methods or isinstance(sec, bool) or not isinstance(sec, (int, float, np.number)) \
                or not (math.isfinite(sec) and sec >= 0):
            raise ValueError(f"fixed_s[{name!r}] must be a non-negative number of seconds under a name that is not "
                             f"a method, got {sec!r}")
        rows.append({"method": name, "epochs": math.nan, "seeds": math.nan, "ratio": math.nan, "stage_epochs": 0,
                     "stage_ratio": math.nan, "hours": float(sec) / 3600})
    df = pd.DataFrame(rows).set_index("method")
    return Estimate(df, float(df["hours"].sum(skipna=True)), missing, list(fixed))
