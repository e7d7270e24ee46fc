"""The neural fields: proposal density, density/colour (nerfacto-style), language and DINO.

Every field takes positions already normalised to the hash grids' domain [0, 1]^3 (scene
normalisation + contraction, see ``sampling.contract_to_unit``), flattened to (N, 3).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from lerf_ros.field.hash_encoding import HashEncoding


class _TruncExp(torch.autograd.Function):
    """exp(x) whose backward clamps x at 15: keeps density gradients finite (instant-ngp)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    return _TruncExp.apply(x)


def mlp(in_dim: int, hidden_dim: int, out_dim: int, num_hidden: int) -> nn.Sequential:
    """``num_hidden`` ReLU layers of ``hidden_dim`` then a linear output layer."""
    layers: List[nn.Module] = []
    d = in_dim
    for _ in range(num_hidden):
        layers += [nn.Linear(d, hidden_dim), nn.ReLU(inplace=True)]
        d = hidden_dim
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


def spherical_harmonics(dirs: torch.Tensor, degree: int) -> torch.Tensor:
    """Real spherical-harmonics basis of unit directions. dirs (N, 3) -> (N, degree^2), degree 1..4."""
    if not 1 <= degree <= 4:
        raise ValueError(f"spherical harmonics degree {degree}: expected 1..4")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, 0.28209479177387814)]
    if degree > 1:
        out += [-0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x]
    if degree > 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            1.0925484305920792 * x * y,
            -1.0925484305920792 * y * z,
            0.94617469575755997 * zz - 0.31539156525251999,
            -1.0925484305920792 * x * z,
            0.54627421529603959 * (xx - yy),
        ]
    if degree > 3:
        out += [
            0.59004358992664352 * y * (3.0 * xx - yy),
            2.8906114426405538 * x * y * z,
            0.45704579946446572 * y * (5.0 * zz - 1.0),
            0.3731763325901154 * z * (5.0 * zz - 3.0),
            0.45704579946446572 * x * (5.0 * zz - 1.0),
            1.4453057213202769 * z * (xx - yy),
            0.59004358992664352 * x * (xx - 3.0 * yy),
        ]
    return torch.stack(out, dim=-1)


class ProposalDensityField(nn.Module):
    """Small hash grid + one-hidden-layer MLP -> density (a proposal network)."""

    def __init__(
        self,
        num_levels: int,
        log2_hashmap_size: int,
        base_resolution: int,
        max_resolution: int,
        hidden_dim: int,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.encoding = HashEncoding(num_levels, 2, log2_hashmap_size, base_resolution, max_resolution, backend)
        self.mlp = mlp(self.encoding.output_dim, hidden_dim, 1, 1)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        """x01 (N, 3) in [0, 1] -> density (N,) in scene units^-1."""
        h = self.mlp(self.encoding(x01))
        return trunc_exp(h[:, 0].float())


class RadianceField(nn.Module):
    """Density and view-dependent colour (nerfacto-style).

    hash grid -> MLP -> (density logit, geometry features); spherical harmonics of the view
    direction + geometry features (+ an appearance embedding of ``appearance_dim`` values, when
    > 0: the colour head's only input that is not a function of the point and direction) -> MLP ->
    sigmoid RGB. The appearance never reaches the density.
    """

    def __init__(
        self,
        num_levels: int,
        features_per_level: int,
        log2_hashmap_size: int,
        base_resolution: int,
        max_resolution: int,
        hidden_dim: int,
        hidden_dim_color: int,
        geo_feat_dim: int,
        sh_degree: int,
        backend: str = "auto",
        appearance_dim: int = 0,
    ) -> None:
        super().__init__()
        self.encoding = HashEncoding(
            num_levels, features_per_level, log2_hashmap_size, base_resolution, max_resolution, backend
        )
        self.geo_feat_dim = geo_feat_dim
        self.sh_degree = sh_degree
        self.appearance_dim = int(appearance_dim)
        self.mlp_base = mlp(self.encoding.output_dim, hidden_dim, 1 + geo_feat_dim, 1)
        self.mlp_head = mlp(sh_degree**2 + geo_feat_dim + self.appearance_dim, hidden_dim_color, 3, 2)

    def density(self, x01: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x01 (N, 3) -> density (N,) in scene units^-1, geometry features (N, geo_feat_dim)."""
        h = self.mlp_base(self.encoding(x01))
        return trunc_exp(h[:, 0].float()), h[:, 1:]

    def forward(
        self, x01: torch.Tensor, dirs: torch.Tensor, appearance: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """x01 (N, 3), unit dirs (N, 3), appearance (N, appearance_dim) or None (neutral: zeros)
        -> density (N,), rgb (N, 3) in [0, 1]."""
        sigma, geo = self.density(x01)
        sh = spherical_harmonics(dirs, self.sh_degree).to(geo.dtype)
        parts = [sh, geo]
        if self.appearance_dim > 0:
            if appearance is None:
                appearance = geo.new_zeros((geo.shape[0], self.appearance_dim))
            elif appearance.shape != (geo.shape[0], self.appearance_dim):
                raise ValueError(
                    f"appearance must be ({geo.shape[0]}, {self.appearance_dim}), got {tuple(appearance.shape)}"
                )
            parts.append(appearance.to(geo.dtype))
        elif appearance is not None:
            raise ValueError("this radiance field has no appearance embedding (appearance_dim 0)")
        rgb = torch.sigmoid(self.mlp_head(torch.cat(parts, dim=-1)).float())
        return sigma, rgb


class LanguageField(nn.Module):
    """``F_lang(x, s)`` and ``F_dino(x)`` (reference LERF).

    Hash grids over contracted positions (features concatenated); the CLIP MLP takes the grid
    features plus the world scale ``s`` (metres) and outputs ``clip_dim`` values, unit-normalised
    per sample; the DINO MLP takes the grid features alone. No view direction.
    """

    def __init__(
        self,
        clip_dim: int,
        dino_dim: int,
        num_levels: Sequence[int],
        log2_hashmap_size: Sequence[int],
        base_resolution: Sequence[int],
        max_resolution: Sequence[int],
        features_per_level: int,
        hidden_dim: int,
        num_layers: int,
        dino_hidden_dim: int,
        dino_num_layers: int,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        n = len(num_levels)
        if not (len(log2_hashmap_size) == len(base_resolution) == len(max_resolution) == n) or n == 0:
            raise ValueError(
                "language hash grids: num_levels, log2_hashmap_size, base_resolution and "
                f"max_resolution need one entry per grid, got {n}, {len(log2_hashmap_size)}, "
                f"{len(base_resolution)}, {len(max_resolution)}"
            )
        self.clip_dim = clip_dim
        self.dino_dim = dino_dim
        self.encodings = nn.ModuleList(
            [
                HashEncoding(
                    num_levels[i],
                    features_per_level,
                    log2_hashmap_size[i],
                    base_resolution[i],
                    max_resolution[i],
                    backend,
                )
                for i in range(n)
            ]
        )
        feat_dim = sum(e.output_dim for e in self.encodings)
        self.clip_net = mlp(feat_dim + 1, hidden_dim, clip_dim, num_layers)
        self.dino_net = mlp(feat_dim, dino_hidden_dim, dino_dim, dino_num_layers)

    def features(self, x01: torch.Tensor) -> torch.Tensor:
        """Concatenated grid features. x01 (N, 3) -> (N, sum of grid output dims)."""
        return torch.cat([e(x01) for e in self.encodings], dim=-1)

    def clip(self, feats: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """feats (N, F), scale (N,) metres -> (N, clip_dim) unit rows (float32).

        The training path, and the reference for :meth:`clip_multi_scale`."""
        out = self.clip_net(torch.cat([feats, scale[:, None].to(feats.dtype)], dim=-1)).float()
        return out / out.norm(dim=-1, keepdim=True).clamp_min(1e-8)

    def clip_basis(self) -> torch.Tensor:
        """(r, clip_dim) float32 orthonormal rows spanning every output of :meth:`clip`.

        The CLIP head ends in a linear layer ``W h + b`` (W: clip_dim x hidden), so every output,
        normalised or not, lies in the span of W's columns and b: r <= hidden + 1 (r = clip_dim when
        the head is at least as wide as its output)."""
        last = self.clip_net[-1]
        cols = torch.cat([last.weight.detach().T, last.bias.detach()[None]]).double()  # (hidden + 1, D)
        _, sv, vh = torch.linalg.svd(cols, full_matrices=False)
        keep = sv > 1e-7 * sv[0].clamp_min(1e-300)
        return vh[keep].float().contiguous()

    def clip_multi_scale(
        self,
        feats: torch.Tensor,
        scales: torch.Tensor,
        project: Optional[torch.Tensor] = None,
        basis: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """:meth:`clip` of the same grid features at several scales, optionally projected.

        The scale is one input of the head's first layer, so that layer's feature part is computed
        once per point and each scale adds ``s * w_scale``; the hidden layers then run per scale. The
        output layer is folded into the output basis C (``basis``, from :meth:`clip_basis`): the
        head's output in C-coordinates ``y = (C W) h + C b`` has the norm of the full output, and
        ``project @ out / |out| == (project C^T) y / |y|``, so the clip_dim-wide output is never formed.

        Args:
            feats: (N, F) grid features (:meth:`features`). scales: (S,) metres.
            project: (T, clip_dim) rows to project onto, or None for the unit outputs themselves.
            basis: :meth:`clip_basis` (computed here when None; pass it when calling repeatedly).
        Returns:
            (S, N, T) ``clip(feats, s) @ project.T`` for each scale ((S, N, clip_dim) without project), float32.
        """
        if feats.ndim != 2 or scales.ndim != 1:
            raise ValueError(f"feats must be (N, F) and scales (S,), got {tuple(feats.shape)}, {tuple(scales.shape)}")
        first, hidden, last = self.clip_net[0], self.clip_net[1:-1], self.clip_net[-1]
        n_feat = feats.shape[1]
        base = F.linear(feats, first.weight[:, :n_feat], first.bias)  # (N, H0)
        w_scale = first.weight[:, n_feat]
        C = self.clip_basis() if basis is None else basis.to(last.weight.dtype)
        out_w, out_b = C @ last.weight, C @ last.bias  # (r, H), (r,)
        to_out = C if project is None else C @ project.to(C.dtype).T  # (r, T or D)
        outs = []
        for s in scales.to(feats.dtype).tolist():
            y = F.linear(hidden(base + s * w_scale), out_w, out_b).float()  # (N, r)
            y = y / y.norm(dim=-1, keepdim=True).clamp_min(1e-8)
            outs.append(y @ to_out.float())
        if not outs:
            return feats.new_zeros((0, feats.shape[0], self.clip_dim if project is None else project.shape[0]))
        return torch.stack(outs)

    def dino(self, feats: torch.Tensor) -> torch.Tensor:
        """feats (N, F) -> (N, dino_dim) (float32, not normalised)."""
        return self.dino_net(feats).float()
