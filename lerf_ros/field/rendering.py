"""Volume rendering kernels and the sampler losses: tensors in, tensors out.

Notation: R rays, S samples per ray. A ray's samples are the intervals between consecutive bin
edges ``t`` (R, S + 1), increasing along the ray. Distances are whatever unit the caller uses
(the model uses scene-normalised units); densities are per that unit.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch


def _check_edges(edges: torch.Tensor, name: str = "edges") -> None:
    if edges.ndim != 2 or edges.shape[1] < 2:
        raise ValueError(f"{name} must be (R, S + 1) with S >= 1, got {tuple(edges.shape)}")


def render_weights(density: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Per-sample rendering weights ``w_i = T_i (1 - exp(-sigma_i delta_i))``.

    Args:
        density: (R, S) non-negative densities.
        edges: (R, S + 1) bin edges along each ray.
    Returns:
        (R, S) weights; each row sums to the ray's accumulated opacity (<= 1).
    """
    _check_edges(edges)
    if density.shape != (edges.shape[0], edges.shape[1] - 1):
        raise ValueError(f"density {tuple(density.shape)} does not match edges {tuple(edges.shape)}")
    deltas = edges[:, 1:] - edges[:, :-1]
    tau = density * deltas  # optical depth of each interval
    alpha = 1.0 - torch.exp(-tau)
    # Transmittance before sample i: exp(-sum_{j<i} tau_j).
    trans = torch.exp(-torch.cumsum(torch.cat([torch.zeros_like(tau[:, :1]), tau[:, :-1]], dim=1), dim=1))
    return alpha * trans


def composite(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum along each ray. values (R, S, C), weights (R, S) -> (R, C).

    Elementwise (not a matmul) so that it stays in float32 under autocast."""
    return (weights[..., None] * values.to(weights.dtype)).sum(dim=1)


def render_rgb(rgb: torch.Tensor, weights: torch.Tensor, background: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Composite colour over a background. rgb (R, S, 3), weights (R, S), background (R, 3) or (3,)."""
    out = composite(rgb, weights)
    if background is not None:
        out = out + background * (1.0 - weights.sum(dim=1, keepdim=True))
    return out


def render_depth(weights: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Expected termination distance, normalised by the accumulation. -> (R,).

    Rays with (almost) no accumulation return the far end of the ray.
    """
    mids = 0.5 * (edges[:, 1:] + edges[:, :-1])
    acc = weights.sum(dim=1)
    depth = (weights * mids).sum(dim=1) / acc.clamp_min(1e-10)
    depth = torch.where(acc > 1e-6, depth, edges[:, -1])
    return torch.minimum(torch.maximum(depth, edges[:, 0]), edges[:, -1])


def render_embedding(embeds: torch.Tensor, weights: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Render per-sample features with (detached by the caller) weights.

    Args:
        embeds: (R, K, D) per-sample features.
        weights: (R, K) weights.
        normalize: True for CLIP (unit rows after rendering), False for DINO (plain weighted sum).
    Returns:
        (R, D).
    """
    out = composite(embeds, weights)
    if normalize:
        out = out / out.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return out


def top_k_samples(weights: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` highest-weighted samples of each ray. weights (R, S) -> (values (R, k), index (R, k))."""
    k = min(k, weights.shape[1])
    return torch.topk(weights, k, dim=1, sorted=False)


# ---------------------------------------------------------------------------------- sampler losses
def outer_measure(edges: torch.Tensor, env_edges: torch.Tensor, env_weights: torch.Tensor) -> torch.Tensor:
    """Upper bound of the weight of each interval of ``edges`` implied by a coarser histogram.

    For interval ``[e_j, e_{j+1}]`` this is the total ``env_weights`` of every ``env`` interval that
    overlaps it (mip-NeRF 360, eq. 13).

    Args:
        edges: (R, S + 1) target intervals.
        env_edges: (R, P + 1) proposal intervals (same rays, same distance unit).
        env_weights: (R, P) proposal weights.
    Returns:
        (R, S).
    """
    cum = torch.cat([torch.zeros_like(env_weights[:, :1]), torch.cumsum(env_weights, dim=1)], dim=1)  # (R, P+1)
    n_env = env_weights.shape[1]
    env_edges = env_edges.contiguous()
    # Proposal interval containing the start of each target interval: e_k <= s < e_{k+1}.
    lo = (torch.searchsorted(env_edges, edges[:, :-1].contiguous(), right=True) - 1).clamp(0, n_env - 1)
    # ... and the one containing its end: e_k < s <= e_{k+1}.
    hi = (torch.searchsorted(env_edges, edges[:, 1:].contiguous(), right=False) - 1).clamp(0, n_env - 1)
    return torch.gather(cum, 1, hi + 1) - torch.gather(cum, 1, lo)


def interlevel_loss(
    edges: torch.Tensor, weights: torch.Tensor, env_edges: torch.Tensor, env_weights: torch.Tensor
) -> torch.Tensor:
    """Proposal supervision: penalise final weights not covered by the proposal histogram.

    ``sum_j max(0, w_j - outer_j)^2 / w_j`` averaged over rays, with the final weights ``w``
    (and their edges) detached so that only the proposal network learns from it.
    Edges should be in the normalised "spacing" coordinate shared by both histograms.
    """
    w = weights.detach()
    outer = outer_measure(edges.detach(), env_edges.detach(), env_weights)
    return ((w - outer).clamp_min(0.0).square() / (w + 1e-7)).sum(dim=1).mean()


def distortion_loss(edges: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """mip-NeRF 360 distortion loss, computed in O(S) per ray.

    ``sum_{i,j} w_i w_j |m_i - m_j| + 1/3 sum_i w_i^2 (e_{i+1} - e_i)`` with interval midpoints
    ``m``; edges in the normalised spacing coordinate. Averaged over rays.
    """
    mids = 0.5 * (edges[:, 1:] + edges[:, :-1])
    widths = edges[:, 1:] - edges[:, :-1]
    wm = weights * mids
    # Midpoints are sorted, so sum_{i,j} w_i w_j |m_i - m_j| = 2 sum_i w_i (m_i W_{<i} - (wm)_{<i}).
    w_before = torch.cumsum(weights, dim=1) - weights
    wm_before = torch.cumsum(wm, dim=1) - wm
    inter = 2.0 * (weights * (mids * w_before - wm_before)).sum(dim=1)
    intra = (weights.square() * widths).sum(dim=1) / 3.0
    return (inter + intra).mean()
