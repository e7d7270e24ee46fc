"""Relevancy of 3D points with the LERF scale search, and the projections that make it fast.

The relevancy itself is ``lerf_ros.teachers.text.relevancy``; this module feeds it.

Projection onto the text span. The relevancy needs only the dot products of phi with the query
and the negatives. With B an orthonormal basis of the span of those T text embeddings,
``phi . e == (phi B^T) . (e B^T)`` for each of them, so the scale search can move (S, N, T)
numbers instead of (S, N, D), exactly.

Projection onto the field's output span. The language field's outputs (unit rows) lie in a
subspace of dimension r (an MLP's outputs span at most its last hidden width + 1; an analytic field
its classes). With C an orthonormal basis of it, ``phi = (phi C^T) C`` and so
``phi . e == (phi C^T) . (e C^T)`` for ANY text e. ``ProjectedFeatures`` stores the (N, S, r)
coefficients of every surface point at every scale once per snapshot; each query is then a
small matrix product instead of S evaluations of the field.

Where the basis comes from. ``FieldSnapshot.language_basis()`` guarantees a span (for the LERF
MLP: the columns of its output layer and its bias, r <= hidden width + 1). When that basis is
narrow enough to save work and its coefficients fit ``query.feature_cache_mb``, it is used as is:
one pass over the points, exact. Otherwise (a wide head: 257 of 512 dimensions for the ``lerf``
presets, 1 GiB at 50k points and 21 scales) a narrower basis is estimated from the outputs at a
sample of the points, extended wherever a point's output is not captured, and accepted once every
output keeps at least BASIS_MIN_ENERGY of its squared norm (a residual under ~0.003, which moves a
relevancy by at most ~0.008 at temperature 10).

Every field evaluation goes through ``FieldSnapshot.language_multi_scale``: all candidate scales
of a chunk of points in one call (the real field encodes each point once).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from lerf_ros.field.snapshot import FieldSnapshot
from lerf_ros.query.cancel import StopFlag, check
from lerf_ros.teachers.text import relevancy

#: a basis is accepted when every projected unit row keeps at least this much of its squared norm;
#: rows below it are checked directly (their residual must stay under BASIS_MAX_RESIDUAL)
BASIS_MIN_ENERGY = 1.0 - 1e-5
BASIS_MAX_RESIDUAL = 1e-3
#: points sampled (all scales each) to estimate the output span when language_basis() is too wide
BASIS_SAMPLE_POINTS = 512


def orthonormal_rows(vectors: torch.Tensor, rel_tol: float = 1e-6) -> torch.Tensor:
    """Orthonormal basis of the span of some vectors.

    Args:
        vectors: (T, D) rows.
        rel_tol: directions with singular value below rel_tol * the largest are dropped.
    Returns:
        (r, D) orthonormal rows, r = numerical rank <= min(T, D), same dtype and device.
    """
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be (T, D), got shape {tuple(vectors.shape)}")
    v = vectors.double()
    if v.shape[0] <= v.shape[1]:
        # Left singular structure through the (T, T) Gram matrix would square the condition number;
        # an SVD of the (T, D) rows is cheap for the few rows this is used with.
        _, s, vh = torch.linalg.svd(v, full_matrices=False)
    else:
        # Many rows: eigen-decompose the (D, D) Gram matrix instead.
        evals, evecs = torch.linalg.eigh(v.T @ v)
        order = torch.argsort(evals, descending=True)
        s = evals[order].clamp_min(0).sqrt()
        vh = evecs[:, order].T
    if s.numel() == 0 or float(s[0]) == 0.0:
        raise ValueError("the vectors are all zero")
    keep = s > rel_tol * s[0]
    return vh[keep].to(vectors.dtype).contiguous()


def text_basis(embeddings: torch.Tensor) -> torch.Tensor:
    """(T, D) text embeddings -> (r, D) orthonormal basis of their span (r <= T)."""
    return orthonormal_rows(embeddings, rel_tol=1e-7)


def language_projected(
    snapshot: FieldSnapshot, xyz: torch.Tensor, scales: torch.Tensor, project: Optional[torch.Tensor]
) -> torch.Tensor:
    """The language field at every (scale, point), optionally projected (``language_multi_scale``
    with its output shape checked).

    Args:
        xyz: (N, 3) points on the snapshot's device; scales: (S,) metres; project: (T, D) or None.
    Returns:
        (S, N, T) = language(xyz, s) @ project.T for each scale s ((S, N, D) without ``project``).
    """
    S, N = len(scales), len(xyz)
    out = snapshot.language_multi_scale(xyz, scales, project)
    width = int(snapshot.clip_dim) if project is None else project.shape[0]
    if tuple(out.shape) != (S, N, width):
        raise ValueError(f"language_multi_scale returned shape {tuple(out.shape)}, expected ({S}, {N}, {width})")
    return out.float()


def guaranteed_basis(snapshot: FieldSnapshot) -> torch.Tensor:
    """``snapshot.language_basis()`` as float32, its shape checked: (r, D)."""
    basis = snapshot.language_basis().float()
    if basis.ndim != 2 or basis.shape[1] != int(snapshot.clip_dim) or basis.shape[0] < 1:
        raise ValueError(f"language_basis returned shape {tuple(basis.shape)}, expected (r, {snapshot.clip_dim})")
    return basis


def estimated_basis(
    snapshot: FieldSnapshot,
    xyz: torch.Tensor,
    scales: torch.Tensor,
    sample_points: int = BASIS_SAMPLE_POINTS,
    seed: int = 0,
) -> torch.Tensor:
    """(r, D) orthonormal basis of the language field's outputs at a random sample of the points
    (all scales): possibly narrower than ``language_basis()``, possibly missing outputs elsewhere."""
    g = torch.Generator().manual_seed(int(seed))
    n = min(len(xyz), sample_points)
    idx = torch.randperm(len(xyz), generator=g)[:n].to(xyz.device)
    phi = language_projected(snapshot, xyz[idx], scales, None)  # (S, n, D)
    return orthonormal_rows(phi.reshape(-1, phi.shape[-1]), rel_tol=1e-5).float()


@dataclass
class ProjectedFeatures:
    """The language field of one snapshot at every surface point and scale, in its output basis.

    Attributes:
        basis: (r, D) orthonormal rows spanning the field's outputs.
        coeffs: (N, S, r) float32 coefficients: language(xyz_n, scale_s) == coeffs[n, s] @ basis
            (point-major, so a chunk of points is a contiguous block).
        build_ms: time it took to compute.
    """

    basis: torch.Tensor
    coeffs: torch.Tensor
    build_ms: float

    @property
    def nbytes(self) -> int:
        return self.coeffs.numel() * self.coeffs.element_size()

    @classmethod
    def build(
        cls,
        snapshot: FieldSnapshot,
        xyz: torch.Tensor,
        scales: torch.Tensor,
        chunk: int,
        max_bytes: int,
        max_extensions: int = 3,
        stop: Optional[StopFlag] = None,
    ) -> Tuple[Optional["ProjectedFeatures"], str]:
        """(features, "") or (None, why not): the basis is too wide to save anything, the
        coefficients would exceed ``max_bytes``, or the basis keeps missing part of the outputs.

        The guaranteed basis (``language_basis()``) is used when it is narrow enough and fits:
        one pass, exact. Otherwise a basis is estimated from a sample of the points; it may miss
        outputs the sample did not reach (a class or a hidden unit active only at some points).
        One pass over all points finds every point whose projection keeps too little of its norm;
        the basis is extended with their residual directions and one more pass adds the
        coefficients along the new directions, at most ``max_extensions`` times.

        ``stop`` is checked between chunks of ``chunk`` points (raises ``Cancelled`` when set)."""
        t0 = time.perf_counter()
        S, N, D = len(scales), len(xyz), int(snapshot.clip_dim)
        if N == 0 or max_bytes <= 0:
            return None, "disabled"
        with torch.no_grad():
            basis = guaranteed_basis(snapshot).to(xyz.device)
            r = basis.shape[0]
            exact = r <= 0.75 * D and S * N * r * 4 <= max_bytes
            if not exact:
                basis = estimated_basis(snapshot, xyz, scales)
            coeffs = torch.zeros(N, S, 0, dtype=torch.float32, device=xyz.device)
            new_dirs = basis
            for _ in range(max_extensions + 1):
                r = basis.shape[0]
                if r > 0.75 * D:
                    return None, f"the field's outputs span {r} of {D} dimensions (no saving)"
                if S * N * r * 4 > max_bytes:
                    return None, f"{S * N * r * 4 / 2**20:.0f} MiB needed > query.feature_cache_mb"
                more = torch.empty(N, S, new_dirs.shape[0], dtype=torch.float32, device=xyz.device)
                for a in range(0, N, chunk):
                    check(stop)
                    more[a : a + chunk] = language_projected(snapshot, xyz[a : a + chunk], scales, new_dirs).transpose(
                        0, 1
                    )
                coeffs = torch.cat([coeffs, more], dim=2) if coeffs.shape[2] else more
                del more
                energy = torch.cat(
                    [(coeffs[a : a + chunk] ** 2).sum(-1).min(-1).values for a in range(0, N, chunk)]
                )  # (N,) worst scale
                low = torch.nonzero(energy < BASIS_MIN_ENERGY).flatten()
                if low.numel() == 0:
                    return cls(basis, coeffs, 1000 * (time.perf_counter() - t0)), ""
                pick = low[
                    torch.randperm(low.numel(), generator=torch.Generator().manual_seed(1))[:BASIS_SAMPLE_POINTS].to(
                        low.device
                    )
                ]
                phi = language_projected(snapshot, xyz[pick], scales, None).reshape(-1, D)
                resid = phi - (phi @ basis.T) @ basis
                if float(resid.norm(dim=1).max()) < BASIS_MAX_RESIDUAL:
                    # The rows were short, not outside the basis (rounding, or zero outputs): exact.
                    return cls(basis, coeffs, 1000 * (time.perf_counter() - t0)), ""
                if exact:
                    return None, "language_basis() does not span the field's outputs"
                new_dirs = orthonormal_rows(resid, rel_tol=1e-4)
                new_dirs = new_dirs - (new_dirs @ basis.T) @ basis  # keep them orthogonal
                new_dirs = orthonormal_rows(new_dirs, rel_tol=1e-6)
                basis = torch.cat([basis, new_dirs])
        return None, "the estimated output basis keeps missing part of the field"


class FeatureCache:
    """``ProjectedFeatures`` of the newest (snapshot, surface) pair. Thread-safe: the first caller
    builds them, concurrent callers for the same pair wait and share the result."""

    def __init__(self, max_bytes: int, stop: Optional[StopFlag] = None) -> None:
        self.max_bytes = int(max_bytes)
        self.stop = stop
        self._lock = threading.Lock()
        self._key: Optional[Tuple[object, object]] = None  # (snapshot, surface), held strongly
        self._value: Optional[ProjectedFeatures] = None
        self.note = ""
        """Why the newest pair has no features (empty when it has them)."""

    @property
    def value(self) -> Optional[ProjectedFeatures]:
        """The features of the newest pair (None when it has none, or before the first build)."""
        with self._lock:
            return self._value

    def get(
        self,
        snapshot: FieldSnapshot,
        surface,
        xyz: torch.Tensor,
        scales: torch.Tensor,
        chunk: int,
        stop: Optional[StopFlag] = None,
    ) -> Tuple[Optional[ProjectedFeatures], bool]:
        """(features or None, whether this call built them). ``stop``: checked between chunks instead
        of the cache's own flag (a paced view of it, for background work)."""
        if self.max_bytes <= 0:
            self.note = "disabled (query.feature_cache_mb = 0)"
            return None, False
        with self._lock:
            if self._key is not None and self._key[0] is snapshot and self._key[1] is surface:
                return self._value, False
            value, note = ProjectedFeatures.build(
                snapshot, xyz, scales, chunk, self.max_bytes, stop=stop if stop is not None else self.stop
            )
            self._key, self._value, self.note = (snapshot, surface), value, note
            return value, True


@dataclass
class ScaleSearch:
    """Result of the scale search.

    Attributes:
        relevancy: (S, N) float32 CPU relevancy of every point at every candidate scale.
        index: index of the chosen scale (highest maximum relevancy; the first on ties).
        scale: the chosen scale (m).
        max_relevancy: the maximum relevancy at the chosen scale.
    """

    relevancy: torch.Tensor
    index: int
    scale: float
    max_relevancy: float

    @property
    def scores(self) -> np.ndarray:
        """(N,) relevancy at the chosen scale."""
        return self.relevancy[self.index].numpy()


def scale_search(
    snapshot: FieldSnapshot,
    xyz: torch.Tensor,
    scales: Sequence[float],
    text_emb: torch.Tensor,
    temperature: float,
    chunk: int,
    features: Optional[ProjectedFeatures] = None,
) -> ScaleSearch:
    """LERF relevancy of every point at every scale; choose the scale with the highest maximum.

    Args:
        snapshot: the field. xyz: (N, 3) points on its device. scales: S candidate scales (m).
        text_emb: (1 + M, D): the query's embedding, then the negatives'.
        temperature: relevancy temperature. chunk: points per field evaluation (memory bound).
        features: precomputed ``ProjectedFeatures`` for exactly these points and scales, or None
            to evaluate the field (projected onto the text span).
    """
    if text_emb.ndim != 2 or text_emb.shape[0] < 2:
        raise ValueError(f"text_emb must be (1 + M, D) with M >= 1 negatives, got {tuple(text_emb.shape)}")
    dev = xyz.device
    S, N = len(scales), len(xyz)
    if N == 0:
        raise ValueError("no points to score")
    scales_t = torch.tensor([float(s) for s in scales], dtype=torch.float32, device=dev)
    basis = features.basis if features is not None else text_basis(text_emb.float()).to(dev)
    e = text_emb.float().to(dev) @ basis.T  # (1 + M, r or T)
    q, negs = e[0], e[1:]
    out = torch.empty(S, N, dtype=torch.float32)
    with torch.no_grad():
        for a in range(0, N, chunk):
            if features is not None:
                phi = features.coeffs[a : a + chunk]  # (c, S, r)
                r = relevancy(phi.reshape(-1, phi.shape[-1]), q, negs, temperature)
                out[:, a : a + chunk] = r.reshape(-1, S).T.float().cpu()
            else:
                phi = language_projected(snapshot, xyz[a : a + chunk], scales_t, basis)  # (S, c, T)
                r = relevancy(phi.reshape(-1, phi.shape[-1]), q, negs, temperature)
                out[:, a : a + chunk] = r.reshape(S, -1).float().cpu()
    best = out.max(dim=1).values
    i = int(torch.argmax(best))
    return ScaleSearch(out, i, float(scales[i]), float(best[i]))
