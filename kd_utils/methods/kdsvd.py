"""KDSVD: self-supervised knowledge distillation using singular value decomposition (Lee et al., ECCV 2018).

Each matched feature map, read as a matrix (spatial positions x channels), is compressed to its leading
right singular vectors (directions in channel space). The teacher keeps its top ``k``; the student keeps
``k + 3`` and, for each teacher vector, uses the one most aligned with it (sign-corrected). Both sets are
scaled by the teacher's normalised singular values, and the knowledge is the correlation between
consecutive layers: an RBF kernel ``exp(-(v_i[a] - v_{i-1}[b])^2 / 8)`` over every pair of vector
entries of layer ``i`` and layer ``i-1``. The student matches the teacher's kernels in squared error.

Numerical guard: the gradient of singular vectors contains ``1 / (s_k^2 - s_j^2)`` and, for wide
matrices (fewer positions than channels, e.g. stage5 at 2x2), ``1 / s_k``; post-ReLU maps with dead
positions have repeated (zero) singular values, where ``torch.linalg.svd``'s backward is infinite or NaN
(the reference only zeroes non-finite *forward* values). :func:`top_right_singular_vectors` computes the
same forward values (in float64, from the eigendecomposition of the smaller Gram matrix, a few times
faster than ``torch.linalg.svd`` on these shapes) with a hand-written backward in which ``1/d`` becomes
``d / (d^2 + delta^2)``, ``delta = eps * s_max^2`` for eigen-gaps and ``eps * s_max`` for ``1/s``
(``eps = 1e-4``): bounded (at most ``1/(2 eps)`` times the well-conditioned scale), zero for exact ties,
and equal to the exact gradient up to a relative ``(delta/d)^2`` away from ties.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from kd_utils.feature_kd import REFERENCE_LAYERS, FeatureDistiller
from kd_utils.train_kd import DISTILLERS

LAYOUTS = ("hw_c", "ch_w")


def svd_matrix(feat: torch.Tensor, layout: str = "hw_c") -> torch.Tensor:
    """The matrix whose SVD KDSVD takes, (N, rows, cols), in float64.

    ``"hw_c"`` (RepDistiller, and the original TensorFlow code on NHWC maps): rows are the H*W positions,
    columns the C channels. ``"ch_w"`` (mdistiller's ``feat.view(N, C*H, W)`` of an NCHW map): rows C*H,
    columns W, so the singular vectors live in the width axis and channel counts may differ."""
    if feat.dim() != 4:
        raise ValueError(f"KDSVD needs (N, C, H, W) maps, got shape {tuple(feat.shape)}")
    n, c, h, w = feat.shape
    f = feat.double()
    if layout == "hw_c":
        return f.reshape(n, c, h * w).transpose(1, 2)
    if layout == "ch_w":
        return f.reshape(n, c * h, w)
    raise ValueError(f"unknown KDSVD layout {layout!r}; allowed: {', '.join(LAYOUTS)}")


def _regularised_inverse(d: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``1 / d`` where ``|d| >> delta``, going smoothly to 0 at ``d = 0``."""
    return d / (d * d + delta * delta)


def right_singular(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Thin SVD's right singular vectors (..., cols, r) and singular values (..., r), descending,
    ``r = min(rows, cols)``, from the eigendecomposition of the smaller Gram matrix (a few times faster
    than ``torch.linalg.svd`` here; float64 keeps it accurate). For a wide matrix the vectors of (near-)zero
    singular values, which the SVD leaves arbitrary within the null space, are returned as zeros."""
    rows, cols = x.shape[-2], x.shape[-1]
    if rows >= cols:
        lam, v = torch.linalg.eigh(x.transpose(-2, -1) @ x)
        lam, v = lam.flip(-1).clamp_min(0), v.flip(-1)
        return v, lam.sqrt()
    lam, u = torch.linalg.eigh(x @ x.transpose(-2, -1))
    lam, u = lam.flip(-1).clamp_min(0), u.flip(-1)
    s = lam.sqrt()
    tiny = 1e-12 * s.amax(dim=-1, keepdim=True)
    v = (x.transpose(-2, -1) @ u) * torch.where(s > tiny, 1 / s.clamp_min(1e-300), torch.zeros_like(s))[..., None, :]
    return v, s


class _TopRightSingular(torch.autograd.Function):
    """Top ``n`` right singular vectors of a batch of matrices, with a guarded backward (module docstring).

    With ``X = U S V^T`` and ``A = X^T X`` (eigenvalues ``lam = s^2``), the vectors' gradient is
    ``dL/dX = X (G + G^T)``, ``G = V (K o V^T g) V_n^T + (I - V V^T) g Lam_n^-1 V_n^T``,
    ``K[j, k] = 1 / (lam_k - lam_j)`` (``j != k``): every ``1/d`` regularised to ``d / (d^2 + delta^2)``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, n: int, eps: float):
        ctx.set_materialize_grads(False)
        v, s = right_singular(x)
        ctx.save_for_backward(x, v, s)
        ctx.n, ctx.eps = n, eps
        return v[..., :n], s

    @staticmethod
    def backward(ctx, g_v: torch.Tensor | None, g_s: torch.Tensor | None):
        x, v, s = ctx.saved_tensors
        n, eps = ctx.n, ctx.eps
        g_v = torch.zeros_like(v[..., :n]) if g_v is None else torch.where(torch.isfinite(g_v), g_v, 0.0)
        lam = s * s                                                    # eigenvalues of X^T X, (N, r)
        lam_max = lam.amax(dim=-1, keepdim=True).clamp_min(1e-100)     # per matrix (an all-zero map: no 0/0)
        delta_gap, delta_s2 = eps * lam_max, eps * eps * lam_max       # for 1/(lam_k - lam_j) and for 1/lam_k
        k_fac = _regularised_inverse(lam[..., None, :n] - lam[..., :, None], delta_gap[..., None])  # (N, r, n)
        k_fac = k_fac * (1 - torch.eye(s.shape[-1], n, dtype=s.dtype, device=s.device))
        m = k_fac * (v.transpose(-2, -1) @ g_v)                         # (N, r, n)
        xv = x @ v                                                      # = U S
        xv_n, v_n = xv[..., :n], v[..., :n]
        grad = xv @ m @ v_n.transpose(-2, -1) + xv_n @ m.transpose(-2, -1) @ v.transpose(-2, -1)
        # outside span(V) (wide matrices only): X V_n Lam_n^-1 g^T (I - V V^T)
        g_perp = g_v - v @ (v.transpose(-2, -1) @ g_v)
        inv_lam = 1 / (lam[..., :n] + delta_s2)
        grad = grad + (xv_n * inv_lam[..., None, :]) @ g_perp.transpose(-2, -1)
        if g_s is not None:  # d s_k = u_k^T dX v_k, u_k = X v_k / s_k
            g_s = torch.where(torch.isfinite(g_s), g_s, 0.0)
            grad = grad + (xv * (g_s * s / (lam + delta_s2))[..., None, :]) @ v.transpose(-2, -1)
        return grad, None, None


def top_right_singular_vectors(x: torch.Tensor, n: int, eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """``(V[..., :n], S)`` of the thin SVD of ``x`` (..., rows, cols), in float64: the leading right singular
    vectors as columns, and all singular values, descending; ``n`` is capped at ``min(rows, cols)``."""
    n = min(int(n), x.shape[-1], x.shape[-2])
    return _TopRightSingular.apply(x.double(), n, float(eps))


def _finite(t: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(t), t, torch.zeros_like(t))


def align_signs(v_s: torch.Tensor, v_t: torch.Tensor) -> torch.Tensor:
    """For each teacher vector (column of ``v_t``, (N, D, k)), the student vector (column of ``v_s``,
    (N, D, m)) of largest absolute cosine with it, multiplied by that cosine's sign: (N, D, k). As
    RepDistiller's ``align_rsv`` (an exact tie selects the sum of the tied vectors)."""
    cos = v_s.transpose(-2, -1) @ v_t                                   # (N, m, k)
    best = cos.abs().amax(dim=-2, keepdim=True)
    mask = torch.where(cos.abs() == best, torch.sign(cos), torch.zeros_like(cos))
    return v_s @ mask


def teacher_vectors(feat: torch.Tensor, k: int, layout: str = "hw_c") -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's top ``k`` right singular vectors, (N, D, k) unit columns, sign-canonicalised (each
    vector's entries sum to >= 0), and its top ``k`` singular values L2-normalised, (N, k); float64."""
    with torch.no_grad():
        v, s = right_singular(svd_matrix(feat, layout))
        k = min(k, s.shape[-1])
        v, s = _finite(v[..., :k]), _finite(s[..., :k])
        v = v * torch.where(v.sum(dim=-2, keepdim=True) < 0, -1.0, 1.0).to(v.dtype)
        return F.normalize(v, dim=-2), F.normalize(s, dim=-1)


def rbf_correlation(v: torch.Tensor, v_prev: torch.Tensor) -> torch.Tensor:
    """``exp(-(v[:, a, c] - v_prev[:, b, c])^2 / 8)``: (N, D, D_prev, k)."""
    d = v[:, :, None, :] - v_prev[:, None, :, :]
    return torch.exp(d * d * -0.125)


def kdsvd_loss(student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor], k: int = 1,
               layout: str = "hw_c", eps: float = 1e-4) -> torch.Tensor:
    """RepDistiller's ``KDSVD`` loss summed over the consecutive layer pairs: per pair
    ``sum((rbf_s - rbf_t)^2) / N``. Non-finite singular-vector entries are zeroed, so every kernel entry is
    finite (the reference zeroes non-finite kernel entries instead). SVDs in float64, kernels in float32."""
    if len(student_feats) != len(teacher_feats) or len(student_feats) < 2:
        raise ValueError(f"KDSVD needs as many student as teacher maps, at least two (one pair), got "
                         f"{len(student_feats)} and {len(teacher_feats)}")
    device_type = student_feats[0].device.type
    total, prev = 0.0, None
    with torch.autocast(device_type=device_type, enabled=False):
        for f_s, f_t in zip(student_feats, teacher_feats):
            v_t, s_t = teacher_vectors(f_t, k, layout)
            v_s, _ = top_right_singular_vectors(svd_matrix(f_s, layout), k + 3, eps)
            v_s = F.normalize(_finite(v_s), dim=-2)
            if v_s.shape[-2] != v_t.shape[-2]:
                raise ValueError(f"KDSVD ({layout!r}): student singular vectors have {v_s.shape[-2]} entries and the "
                                 f"teacher's {v_t.shape[-2]}; they must match")
            v_s, v_t, s_t = v_s.float(), v_t.float(), s_t.float()  # the kernels need no float64
            v_s = align_signs(v_s, v_t)
            v_t, v_s = v_t * s_t[:, None, :], v_s * s_t[:, None, :]
            if prev is not None:  # every vector entry is finite here, so the kernels are (the reference's guard)
                with torch.no_grad():
                    rbf_t = rbf_correlation(v_t, prev[1])
                diff = rbf_correlation(v_s, prev[0]) - rbf_t
                total = total + (diff * diff).sum() / f_s.shape[0]
            prev = (v_s, v_t)
    return total


class KDSVD(FeatureDistiller):
    """KDSVD (Lee et al., ECCV 2018): ``(1 - alpha) * CE + alpha * KD + beta * kdsvd_loss``.

    Reference: HobbitLong/RepDistiller ``distiller_zoo/KDSVD.py`` (``k=1``: teacher top-1, student top
    ``k+3`` right singular vectors of the (H*W, C) matrix, normalised; singular values normalised over the
    top k; student vectors sign-aligned to the teacher's; both scaled by the teacher's values; RBF
    ``exp(-d^2/8)`` between consecutive layers; loss per pair summed / batch), ``helper/loops.py`` (layers
    ``feat[1:-1]``: post-ReLU outputs of blocks 1-4 = our ``stage2``..``stage5``; loss = sum over pairs).
    beta 1 and CE weight 1: mdistiller ``mdistiller/engine/cfg.py`` (``KDSVD.K 1``, ``LOSS.CE_WEIGHT 1.0``,
    ``LOSS.FEAT_WEIGHT 1.0``); RepDistiller's scripts give no ``-b`` for it. ``alpha`` 0 (no KD) as both.

    With ``layout="hw_c"`` (default, RepDistiller) the singular vectors live in channel space, so every
    matched layer needs the same channel count in student and teacher (RepDistiller's ``align_rsv`` matmul
    fails otherwise); a ``ValueError`` says so. The suite's pair vgg13 w0.5 -> vgg8 w0.25 differs by 2x in
    width: use a width-matched student, or ``layout="ch_w"``, mdistiller's reshape ``(N, C*H, W)`` of the
    NCHW map (``mdistiller/distillers/KDSVD.py``; vectors over the width axis, any channel counts).

    Deviations (numerics only): the SVD runs in float64 (Gram eigendecomposition) with the guarded
    backward of :func:`top_right_singular_vectors` (``eps``, module docstring); the teacher's vector signs
    are canonicalised (entries sum >= 0) where the reference keeps LAPACK's arbitrary sign, on which its
    RBF values depend. No extra parameters; the teacher runs online (its feature maps are needed, not a
    pooled vector).
    """
    term = "loss_kdsvd"
    family = "kdsvd"
    student_layers = REFERENCE_LAYERS
    teacher_layers = REFERENCE_LAYERS

    def __init__(self, student, teacher, *, beta: float = 1.0, k: int = 1, layout: str = "hw_c", eps: float = 1e-4,
                 **kw):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k (teacher singular vectors per layer) must be an int >= 1, got {k!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"unknown KDSVD layout {layout!r}; allowed: {', '.join(LAYOUTS)}")
        if not (isinstance(eps, (int, float)) and math.isfinite(eps) and 0 < eps < 1):
            raise ValueError(f"eps (SVD gradient guard) must be a number in (0, 1), got {eps!r}")
        self.k, self.layout, self.eps = k, layout, float(eps)
        super().__init__(student, teacher, beta=beta, **kw)

    def make_adapters(self, s_shapes, t_shapes):
        if len(self.s_layers) < 2:
            raise ValueError(f"KDSVD needs at least two layers (one consecutive pair), got {list(self.s_layers)}")
        axis, idx = ("channel count C", 0) if self.layout == "hw_c" else ("width W", 2)
        bad = self.unmatched_pairs(s_shapes, t_shapes, idx)
        if bad:
            hint = (" (or layout='ch_w', mdistiller's reshape, which needs equal widths only)"
                    if self.layout == "hw_c" else "")
            raise ValueError(f"KDSVD with layout {self.layout!r} compares singular vectors entry by entry, so every "
                             f"matched layer must be a (C, H, W) map with the same {axis} in student and teacher; "
                             f"unmatched: {'; '.join(bad)}. Use a student of the teacher's channel widths{hint}")
        return super().make_adapters(s_shapes, t_shapes)

    def feature_loss(self, s_feats, t_feats):
        return kdsvd_loss(s_feats, t_feats, self.k, self.layout, self.eps)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "k": self.k, "layout": self.layout, "eps": self.eps}


DISTILLERS.update({"kdsvd": KDSVD})
