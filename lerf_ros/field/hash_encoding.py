"""Multi-resolution hash encoding (instant-ngp) with two backends behind one module.

``HashEncoding`` owns one flat parameter vector laid out exactly as tiny-cuda-nn's ``HashGrid``
lays out its parameters, so the same weights run on either backend:

- **tinycudann** when it is importable *and* the input is on CUDA (fast fused kernels);
- a **vectorised pure-PyTorch** implementation otherwise (CPU, or CUDA without tinycudann). It is
  the reference the tests check against a direct per-corner computation.

A checkpoint trained on a GPU with tinycudann therefore loads and evaluates identically on a
robot's CPU, and vice versa.

Layout (per level ``l`` of ``L``; positions ``x`` in [0, 1]^3):

- ``scale_l = 2^(l * log2(per_level_scale)) * base_resolution - 1`` (float32, as tinycudann);
  ``resolution_l = ceil(scale_l) + 1`` grid vertices per axis.
- continuous grid position ``p = x * scale_l + 0.5``; the cell corner is ``floor(p)`` and the
  trilinear weights come from ``p - floor(p)``.
- the level stores ``size_l = min(next_multiple(resolution_l^3, 8), 2^log2_hashmap_size)``
  entries of ``features_per_level`` floats, levels concatenated (``offsets``).
- coarse levels whose dense grid fits (``resolution_l^3 <= size_l``) index densely
  (``i = cx + cy*res + cz*res^2``); fine levels use the spatial hash
  ``i = (cx * 1) xor (cy * 2654435761) xor (cz * 805459861)`` in uint32 arithmetic. Both are
  taken modulo ``size_l``.
- output ``(N, L * features_per_level)``, level-major.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: spatial-hash multipliers per axis (instant-ngp)
HASH_PRIMES = (1, 2654435761, 805459861)

_BACKENDS = ("auto", "torch", "tcnn")
_TCNN = None  # cached import result: module, or False when unavailable


def tcnn_module():
    """The ``tinycudann`` module, or None when it cannot be imported (no CUDA, not installed)."""
    global _TCNN
    if _TCNN is None:
        try:
            import tinycudann  # type: ignore

            _TCNN = tinycudann
        except Exception:  # ImportError, or EnvironmentError raised by tinycudann without CUDA
            _TCNN = False
    return _TCNN or None


def tcnn_available() -> bool:
    """True when the tinycudann backend can run (CUDA present and tinycudann importable)."""
    return torch.cuda.is_available() and tcnn_module() is not None


@dataclass(frozen=True)
class HashGridLayout:
    """Sizes of a hash grid; identical to tiny-cuda-nn's for the same settings."""

    num_levels: int
    features_per_level: int
    log2_hashmap_size: int
    base_resolution: int
    per_level_scale: float
    scales: Tuple[float, ...]
    """Per level: float32 ``2^(l*log2(per_level_scale)) * base - 1``."""
    resolutions: Tuple[int, ...]
    """Per level: grid vertices per axis, ``ceil(scale) + 1``."""
    sizes: Tuple[int, ...]
    """Per level: table entries."""
    offsets: Tuple[int, ...]
    """Per level start in the concatenated table, plus the total at the end (length L + 1)."""
    hashed: Tuple[bool, ...]
    """Per level: True where the spatial hash is used (the dense grid does not fit)."""

    @property
    def num_entries(self) -> int:
        return self.offsets[-1]

    @property
    def num_params(self) -> int:
        return self.offsets[-1] * self.features_per_level

    @property
    def output_dim(self) -> int:
        return self.num_levels * self.features_per_level

    @property
    def num_dense_levels(self) -> int:
        return sum(1 for h in self.hashed if not h)

    @staticmethod
    def growth_factor(base_resolution: int, max_resolution: int, num_levels: int) -> float:
        """Per-level resolution growth so that the finest level reaches ``max_resolution``."""
        if num_levels <= 1:
            return 1.0
        return math.exp((math.log(max_resolution) - math.log(base_resolution)) / (num_levels - 1))

    @classmethod
    def build(
        cls, num_levels: int, features_per_level: int, log2_hashmap_size: int, base_resolution: int, max_resolution: int
    ) -> "HashGridLayout":
        if num_levels < 1 or num_levels > 32:
            raise ValueError(f"hash grid num_levels = {num_levels}: expected 1..32")
        if features_per_level not in (1, 2, 4, 8):
            raise ValueError(f"hash grid features_per_level = {features_per_level}: expected 1, 2, 4 or 8")
        if not 4 <= log2_hashmap_size <= 30:
            raise ValueError(f"hash grid log2_hashmap_size = {log2_hashmap_size}: expected 4..30")
        if base_resolution < 2 or max_resolution < base_resolution:
            raise ValueError(f"hash grid resolutions {base_resolution}..{max_resolution}: expected 2 <= base <= max")
        pls = cls.growth_factor(base_resolution, max_resolution, num_levels)
        log2_pls = np.float32(np.log2(np.float32(pls)))
        table = 1 << log2_hashmap_size
        scales, resolutions, sizes, offsets, hashed = [], [], [], [0], []
        for level in range(num_levels):
            s = np.float32(np.exp2(np.float32(level) * log2_pls)) * np.float32(base_resolution) - np.float32(1.0)
            s = float(np.float32(s))
            res = int(math.ceil(s)) + 1
            dense = res**3
            size = min(-(-dense // 8) * 8, table)
            scales.append(s)
            resolutions.append(res)
            sizes.append(size)
            offsets.append(offsets[-1] + size)
            hashed.append(size < dense)
        return cls(
            num_levels,
            features_per_level,
            log2_hashmap_size,
            base_resolution,
            float(pls),
            tuple(scales),
            tuple(resolutions),
            tuple(sizes),
            tuple(offsets),
            tuple(hashed),
        )

    def tcnn_config(self) -> dict:
        return {
            "otype": "HashGrid",
            "n_levels": self.num_levels,
            "n_features_per_level": self.features_per_level,
            "log2_hashmap_size": self.log2_hashmap_size,
            "base_resolution": self.base_resolution,
            "per_level_scale": self.per_level_scale,
        }


def hash_grid_indices(x: torch.Tensor, layout: HashGridLayout) -> Tuple[torch.Tensor, torch.Tensor]:
    """Table rows and trilinear weights of the 8 cell corners at every level (level-major).

    Args:
        x: (N, 3) float positions in [0, 1] (values outside are clamped).
        layout: the grid.
    Returns:
        rows: (L, N, 8) int32 rows of the concatenated table (level offsets included);
        weights: (L, N, 8) trilinear weights (dtype of ``x``; differentiable w.r.t. ``x``).
        Corner ``c`` has offset bits ``(c >> 2) & 1, (c >> 1) & 1, c & 1`` along x, y, z.
    """
    dev = x.device
    n = x.shape[0]
    n_levels = layout.num_levels
    x = x.clamp(0.0, 1.0)
    scales = torch.tensor(layout.scales, dtype=x.dtype, device=dev)
    half = torch.full((), 0.5, dtype=x.dtype, device=dev)
    # Level-major (L, 3, N) so that every per-level slice below is contiguous.
    pos = torch.addcmul(half, x.t()[None, :, :], scales[:, None, None])  # x * scale + 0.5
    grid = torch.floor(pos)
    frac = pos - grid  # gradient flows to x through pos
    gi = grid.detach().to(torch.int32)  # non-negative since x >= 0
    rows = torch.empty((n_levels, n, 2, 2, 2), dtype=torch.int32, device=dev)

    n_dense = layout.num_dense_levels
    if n_dense > 0:
        # Dense levels: index = cx + cy*res + cz*res^2 (mod size); res^3 <= 2^30 fits int32.
        res = torch.tensor(layout.resolutions[:n_dense], dtype=torch.int32, device=dev)
        size = torch.tensor(layout.sizes[:n_dense], dtype=torch.int32, device=dev)
        off = torch.tensor(layout.offsets[:n_dense], dtype=torch.int32, device=dev)
        g = gi[:n_dense]
        base = g[:, 0] + g[:, 1] * res[:, None] + g[:, 2] * (res * res)[:, None]  # (Ld, N)
        b = torch.arange(2, dtype=torch.int32, device=dev)
        r1 = res[:, None, None, None]
        corner = b[None, :, None, None] + b[None, None, :, None] * r1 + b[None, None, None, :] * (r1 * r1)  # (Ld,2,2,2)
        dense = rows[:n_dense]
        torch.remainder(base[:, :, None, None, None] + corner[:, None], size[:, None, None, None, None], out=dense)
        dense += off[:, None, None, None, None]
    if n_dense < n_levels:
        # Hashed levels all hold 2^log2 entries. Only the low log2 bits of each uint32 product
        # (coordinate * prime) survive the modulo, and those depend only on the low bits of the
        # prime: multiply by (prime & mask) in int64, mask, then xor in int32.
        mask = (1 << layout.log2_hashmap_size) - 1
        primes = torch.tensor([p & mask for p in HASH_PRIMES], dtype=torch.int64, device=dev)[None, :, None]
        a = gi[n_dense:].to(torch.int64) * primes  # (Lh, 3, N); corner bit 1: (c + 1) * p = a + p
        h = torch.stack([(a & mask).to(torch.int32), ((a + primes) & mask).to(torch.int32)], dim=-1)  # (Lh,3,N,2)
        xy = h[:, 0, :, :, None] ^ h[:, 1, :, None, :]  # (Lh, N, 2, 2)
        hashed = rows[n_dense:]
        torch.bitwise_xor(xy[..., None], h[:, 2, :, None, None, :], out=hashed)
        off = torch.tensor(layout.offsets[n_dense:-1], dtype=torch.int32, device=dev)
        hashed += off[:, None, None, None, None]

    w = torch.stack([1.0 - frac, frac], dim=-1)  # (L, 3, N, 2)
    wxy = w[:, 0, :, :, None] * w[:, 1, :, None, :]  # (L, N, 2, 2)
    weights = wxy[..., None] * w[:, 2, :, None, None, :]  # (L, N, 2, 2, 2)
    return rows.view(n_levels, n, 8), weights.reshape(n_levels, n, 8)


class _HashGridTable(torch.autograd.Function):
    """Encoding with gradients to the table (the training path): the forward gathers and blends the
    8 corners in one fused op and the backward scatters with a per-feature histogram (CPU) or
    ``index_add_`` (CUDA), several times faster than autograd through a gather on the CPU. When the
    corner weights require grad (positions that do: learned camera corrections), the backward also
    gives their gradient, the corners' values dotted with the output gradient (one gather), and
    autograd carries it on to the positions."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, weights: torch.Tensor, params: torch.Tensor, fpl: int) -> torch.Tensor:
        n_levels, n = rows.shape[0], rows.shape[1]
        table = params.view(-1, fpl)
        out = F.embedding_bag(rows.view(-1, 8), table, per_sample_weights=weights.reshape(-1, 8), mode="sum")
        ctx.save_for_backward(rows, weights, params if weights.requires_grad else None)
        ctx.fpl = fpl
        ctx.num_params = params.numel()
        return out.view(n_levels, n, fpl).permute(1, 0, 2).reshape(n, n_levels * fpl)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        rows, weights, params = ctx.saved_tensors
        fpl = ctx.fpl
        n_levels, n = rows.shape[0], rows.shape[1]
        g = grad_out.reshape(n, n_levels, fpl).permute(1, 0, 2).reshape(-1, 1, fpl).to(weights.dtype)  # (L*N, 1, F)
        grad_weights = None
        if ctx.needs_input_grad[1]:
            corners = F.embedding(rows.view(-1, 8), params.view(-1, fpl))  # (L*N, 8, F)
            grad_weights = (corners * g).sum(-1).view(n_levels, n, 8)
        vals = (g * weights.reshape(-1, 8, 1)).reshape(-1, fpl)  # (L*N*8, F)
        n_entries = ctx.num_params // fpl
        flat_rows = rows.reshape(-1)
        if vals.device.type == "cpu":
            # Rows repeat heavily (coarse levels); a histogram per feature beats index_add_ there.
            grad_table = torch.stack(
                [
                    torch.bincount(flat_rows, weights=vals[:, f], minlength=n_entries).to(weights.dtype)
                    for f in range(fpl)
                ],
                dim=1,
            )
        else:
            grad_table = torch.zeros(n_entries, fpl, dtype=weights.dtype, device=weights.device)
            grad_table.index_add_(0, flat_rows.long(), vals)
        return None, grad_weights, grad_table.view(-1), None


def hash_grid_forward_torch(x: torch.Tensor, params: torch.Tensor, layout: HashGridLayout) -> torch.Tensor:
    """Pure-PyTorch hash-grid encoding (the reference backend).

    Args:
        x: (N, 3) positions in [0, 1].
        params: (layout.num_params,) flat table (tinycudann layout).
        layout: the grid.
    Returns:
        (N, L * F) features, level-major, dtype of ``params``. Differentiable w.r.t. ``params``;
        also w.r.t. ``x`` when ``x`` requires grad.
    """
    if x.ndim != 2 or x.shape[1] != 3:
        raise ValueError(f"hash grid input must be (N, 3), got {tuple(x.shape)}")
    if params.numel() != layout.num_params:
        raise ValueError(f"hash grid table has {params.numel()} values, layout needs {layout.num_params}")
    n = x.shape[0]
    fpl = layout.features_per_level
    if n == 0:
        return params.new_zeros((0, layout.output_dim))
    x = x.to(params.dtype)
    if x.requires_grad and torch.is_grad_enabled():
        rows, weights = hash_grid_indices(x, layout)  # weights carry the gradient to x
        return _HashGridTable.apply(rows, weights, params, fpl)
    with torch.no_grad():
        rows, weights = hash_grid_indices(x, layout)
    return _HashGridTable.apply(rows, weights, params, fpl)


def coarse_to_fine_weights(step: int, total_steps: int, num_levels: int) -> Optional[torch.Tensor]:
    """Level weights (num_levels,) for ``step`` of a coarse-to-fine schedule over ``total_steps``: the
    coarsest level always 1, the switch-on point sweeping linearly over the others, each eased in by
    half a cosine over one level's share; None once every level is fully on (or with 0 steps)."""
    if total_steps <= 0 or step >= total_steps or num_levels <= 1:
        return None
    alpha = 1.0 + (num_levels - 1) * max(step, 0) / total_steps
    t = (alpha - torch.arange(num_levels, dtype=torch.float32)).clamp(0.0, 1.0)
    return 0.5 * (1.0 - torch.cos(math.pi * t))


class HashEncoding(nn.Module):
    """Multi-resolution hash encoding of positions in [0, 1]^3.

    Args:
        num_levels, features_per_level, log2_hashmap_size, base_resolution, max_resolution: the
            grid (per-level growth is geometric from base to max resolution).
        backend: 'auto' (tinycudann for CUDA inputs when importable, else PyTorch), 'torch' or
            'tcnn' (error when unavailable).
        init_scale: table initialised uniformly in [-init_scale, init_scale] (instant-ngp: 1e-4).

    Forward: ``x`` (N, 3) in [0, 1] -> (N, num_levels * features_per_level) float32.
    """

    def __init__(
        self,
        num_levels: int = 16,
        features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        base_resolution: int = 16,
        max_resolution: int = 2048,
        backend: str = "auto",
        init_scale: float = 1e-4,
    ) -> None:
        super().__init__()
        if backend not in _BACKENDS:
            raise ValueError(f"hash encoding backend '{backend}': expected one of {_BACKENDS}")
        self.layout = HashGridLayout.build(
            num_levels, features_per_level, log2_hashmap_size, base_resolution, max_resolution
        )
        self.backend = backend
        self.params = nn.Parameter(torch.empty(self.layout.num_params).uniform_(-init_scale, init_scale))
        self._tcnn = None  # the tinycudann module, built on first CUDA use (not part of state_dict)
        self.level_weights: Optional[torch.Tensor] = None  # (num_levels,) or None: every level as it is

    @property
    def output_dim(self) -> int:
        return self.layout.output_dim

    def active_backend(self, device: torch.device) -> str:
        """'tcnn' or 'torch': what a forward pass on ``device`` runs."""
        if self.backend == "torch":
            return "torch"
        ok = device.type == "cuda" and tcnn_module() is not None
        if self.backend == "tcnn" and not ok:
            raise RuntimeError(
                "hash encoding backend 'tcnn' requested but tinycudann is not importable or the input is not on CUDA"
            )
        return "tcnn" if ok else "torch"

    def set_level_weights(self, weights: Optional[torch.Tensor]) -> None:
        """Scale each level's features by ``weights`` (num_levels,) in [0, 1] (coarse-to-fine training:
        a level at 0 gives no features and gets no gradient), or None for every level as it is. A copy
        of the module (a snapshot) keeps them: it renders the field as trained at that step. Not in
        the state dict: a checkpoint loaded elsewhere renders every level."""
        if weights is not None:
            weights = torch.as_tensor(weights, dtype=torch.float32).flatten()
            ok = weights.numel() == self.layout.num_levels and bool(((weights >= 0) & (weights <= 1)).all())
            if not ok:
                raise ValueError(
                    f"level weights: expected {self.layout.num_levels} values in [0, 1], got {weights.tolist()}"
                )
            weights = weights.to(self.params.device)
        self.level_weights = weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != 3:
            raise ValueError(f"hash encoding input must be (N, 3), got {tuple(x.shape)}")
        if self.active_backend(x.device) == "tcnn":
            out = self._forward_tcnn(x)
        else:
            with torch.autocast(device_type=x.device.type, enabled=False):
                out = hash_grid_forward_torch(x.float(), self.params, self.layout)
        if self.level_weights is None:
            return out
        w = self.level_weights.to(out.device, non_blocking=True).repeat_interleave(self.layout.features_per_level)
        return out * w

    def _forward_tcnn(self, x: torch.Tensor) -> torch.Tensor:
        tcnn = tcnn_module()
        if self._tcnn is None:
            mod = tcnn.Encoding(3, self.layout.tcnn_config(), dtype=torch.float32)
            if mod.params.numel() != self.layout.num_params:
                raise RuntimeError(
                    f"tinycudann HashGrid has {mod.params.numel()} parameters, "
                    f"this layout {self.layout.num_params}: incompatible versions"
                )
            object.__setattr__(self, "_tcnn", mod)
        mod = self._tcnn
        # Run tinycudann's kernels on *our* parameter so both backends share the weights.
        mod.params = self.params
        if x.shape[0] == 0:
            return x.new_zeros((0, self.output_dim))
        return mod(x.float().clamp(0.0, 1.0).contiguous()).float()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_tcnn"] = None  # native module: rebuilt on demand
        return state

    def extra_repr(self) -> str:
        lay = self.layout
        return (
            f"levels={lay.num_levels}, features={lay.features_per_level}, log2_T={lay.log2_hashmap_size}, "
            f"res={lay.resolutions[0]}..{lay.resolutions[-1]}, dense_levels={lay.num_dense_levels}, "
            f"params={lay.num_params}, backend={self.backend}"
        )
