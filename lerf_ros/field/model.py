"""The LERF model: proposal sampling, the radiance field, the language/DINO fields, and losses.

Units. World positions are metres. Inside the model, space is normalised to *scene units*:
``x_scene = (x_world - scene_center) / scene_scale``, then contracted (L-inf) into [-2, 2]^3 and
mapped to the hash grids' [0, 1]^3. Ray distances, densities and the sampler's spacing are in
scene units; depths and language scales leave the model in metres.

Language scale. A training ray carries the side ``crop_px`` (pixels) of the CLIP crop its target
was interpolated at. At a sample at distance ``t`` (metres, along the unit-direction ray) a crop
of ``crop_px`` pixels spans ``crop_px * t / fy`` metres (pinhole footprint), which is the scale fed
to ``F_lang``. The reference code computes the same quantity as ``scale * H * dist / fy`` with
``scale`` the crop side as a fraction of the image height ``H``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lerf_ros.config import ModelConfig, TrainerConfig
from lerf_ros.field.fields import LanguageField, ProposalDensityField, RadianceField
from lerf_ros.field.rendering import (
    distortion_loss,
    interlevel_loss,
    render_depth,
    render_embedding,
    render_rgb,
    render_weights,
    top_k_samples,
)
from lerf_ros.field.sampling import (
    anneal_weights,
    contract_to_unit,
    pdf_edges,
    sample_points,
    spacing_inv,
    uniform_edges,
)


class NoLanguageFieldError(RuntimeError):
    """A language method was called on a model built without a language field (teacher kind 'none')."""


@dataclass
class RenderOutput:
    """What one pass over a batch of rays gives.

    rgb (R, 3); accumulation (R,); depth (R,) expected ray distance in metres; weights (R, S) and
    t_edges (R, S + 1) (scene units) and s_edges (R, S + 1) (spacing coordinate) of the final
    samples; prop_weights / prop_s_edges: the same for each proposal stage (for the interlevel
    loss); origins/dirs in scene units.
    """

    rgb: torch.Tensor
    accumulation: torch.Tensor
    depth: torch.Tensor
    weights: torch.Tensor
    t_edges: torch.Tensor
    s_edges: torch.Tensor
    prop_weights: List[torch.Tensor]
    prop_s_edges: List[torch.Tensor]
    origins: torch.Tensor
    dirs: torch.Tensor


class LerfModel(nn.Module):
    """Radiance field + proposal networks + language/DINO fields.

    Args:
        cfg: model configuration (sizes, sampling, scene normalisation).
        clip_dim: output dimension of ``F_lang`` (the teacher's CLIP dimension).
        dino_dim: output dimension of ``F_dino`` (the teacher's dense-feature dimension).
            Both 0: no language or DINO field (``lang`` is None; teacher kind 'none', geometry and
            colour only); the language methods then raise ``NoLanguageFieldError``.
    """

    def __init__(self, cfg: ModelConfig, clip_dim: int, dino_dim: int) -> None:
        super().__init__()
        cfg.check()
        no_language = clip_dim == 0 and dino_dim == 0
        if not no_language and (clip_dim < 1 or dino_dim < 1):
            raise ValueError(
                f"clip_dim and dino_dim must be >= 1 (or both 0: no language field), got {clip_dim}, {dino_dim}"
            )
        self.cfg = copy.deepcopy(cfg)
        self.clip_dim = int(clip_dim)
        self.dino_dim = int(dino_dim)
        b = cfg.hash_backend
        self.register_buffer("scene_center", torch.tensor(cfg.scene_center, dtype=torch.float32))
        self.register_buffer("scene_scale", torch.tensor(float(cfg.scene_scale), dtype=torch.float32))
        self.field = RadianceField(
            cfg.num_levels,
            cfg.features_per_level,
            cfg.log2_hashmap_size,
            cfg.base_resolution,
            cfg.max_resolution,
            cfg.hidden_dim,
            cfg.hidden_dim_color,
            cfg.geo_feat_dim,
            cfg.sh_degree,
            b,
            appearance_dim=cfg.appearance_dim,
        )
        max_res = list(cfg.proposal_max_resolution) or [cfg.proposal_base_resolution]
        self.proposals = nn.ModuleList(
            [
                ProposalDensityField(
                    cfg.proposal_num_levels,
                    cfg.proposal_log2_hashmap_size,
                    cfg.proposal_base_resolution,
                    max_res[min(i, len(max_res) - 1)],
                    cfg.proposal_hidden_dim,
                    b,
                )
                for i in range(len(cfg.num_proposal_samples))
            ]
        )
        self.lang: Optional[LanguageField] = None
        if not no_language:
            self.lang = LanguageField(
                self.clip_dim,
                self.dino_dim,
                cfg.lang_num_levels,
                cfg.lang_log2_hashmap_size,
                cfg.lang_base_resolution,
                cfg.lang_max_resolution,
                cfg.lang_features_per_level,
                cfg.lang_hidden_dim,
                cfg.lang_num_layers,
                cfg.dino_hidden_dim,
                cfg.dino_num_layers,
                b,
            )

    # ------------------------------------------------------------------ parameters
    def param_groups(self) -> Dict[str, List[nn.Parameter]]:
        """Parameters by optimiser group: 'fields', 'proposal', 'lang'."""
        return {
            "fields": list(self.field.parameters()),
            "proposal": list(self.proposals.parameters()),
            "lang": [] if self.lang is None else list(self.lang.parameters()),
        }

    @property
    def has_language(self) -> bool:
        """Whether the model has its language and DINO fields (not with teacher kind 'none')."""
        return self.lang is not None

    def _language_field(self) -> LanguageField:
        if self.lang is None:
            raise NoLanguageFieldError(
                "this model has no language field (trained with teacher kind 'none': geometry and colour only)"
            )
        return self.lang

    def density_parameters(self) -> List[nn.Parameter]:
        """Everything that shapes the geometry (radiance field and proposal networks)."""
        return list(self.field.parameters()) + list(self.proposals.parameters())

    # ------------------------------------------------------------------ coordinates
    def to_scene(self, xyz: torch.Tensor) -> torch.Tensor:
        """World metres (N, 3) -> scene units."""
        return (xyz - self.scene_center) / self.scene_scale

    def to_grid(self, xyz_world: torch.Tensor) -> torch.Tensor:
        """World metres (N, 3) -> hash-grid domain [0, 1]^3 (normalised and contracted)."""
        return contract_to_unit(self.to_scene(xyz_world))

    # ------------------------------------------------------------------ geometry
    def render_rays(
        self,
        origins: torch.Tensor,
        dirs: torch.Tensor,
        *,
        generator: Optional[torch.Generator] = None,
        step: Optional[int] = None,
        background: Optional[torch.Tensor] = None,
        appearance: Optional[torch.Tensor] = None,
    ) -> RenderOutput:
        """Sample and render rays.

        Args:
            origins: (R, 3) world metres; dirs: (R, 3) unit directions.
            generator: CPU generator for stratification jitter (training); None renders the
                deterministic midpoint layout (evaluation).
            step: training step (proposal-weight annealing); None = fully annealed.
            background: (R, 3) or (3,) colour behind the scene, or None (black).
            appearance: (R, model.appearance_dim) per-ray appearance embedding (fed to the colour
                head only), or None for the neutral one (zeros: renders that have no keyframe).
        """
        if origins.ndim != 2 or origins.shape[1] != 3 or dirs.shape != origins.shape:
            raise ValueError(f"origins and dirs must both be (R, 3), got {tuple(origins.shape)}, {tuple(dirs.shape)}")
        cfg = self.cfg
        n_rays = origins.shape[0]
        dev = origins.device
        o = self.to_scene(origins.float())
        d = dirs.float()
        scale = self.scene_scale
        near = torch.full((n_rays,), cfg.near, device=dev) / scale
        far = torch.full((n_rays,), cfg.far, device=dev) / scale

        def jitter() -> Optional[torch.Tensor]:
            if generator is None:
                return None
            return torch.rand((n_rays, 1), generator=generator).to(dev)

        counts = list(cfg.num_proposal_samples) + [cfg.num_nerf_samples]
        s_edges = uniform_edges(near, far, counts[0], jitter())
        prop_w: List[torch.Tensor] = []
        prop_s: List[torch.Tensor] = []
        anneal = cfg.proposal_anneal_steps if step is not None else 0
        # The proposal stages only place the final samples: rays that carry gradients (learned camera
        # corrections) reach them through the final samples alone, which spares the backward pass
        # through the proposal grids' positions.
        o_prop, d_prop = o.detach(), d.detach()
        for i, prop in enumerate(self.proposals):
            t_edges = spacing_inv(s_edges)
            pts = sample_points(o_prop, d_prop, t_edges)  # (R, S, 3)
            sigma = prop(contract_to_unit(pts.reshape(-1, 3))).view(n_rays, -1)
            w = render_weights(sigma, t_edges)
            prop_w.append(w)
            prop_s.append(s_edges)
            s_edges = pdf_edges(s_edges, anneal_weights(w.detach(), step or 0, anneal), counts[i + 1], jitter())
        t_edges = spacing_inv(s_edges)
        pts = sample_points(o, d, t_edges)
        n_s = pts.shape[1]
        app = None
        if appearance is not None:
            if appearance.shape != (n_rays, cfg.appearance_dim):
                raise ValueError(f"appearance must be ({n_rays}, {cfg.appearance_dim}), got {tuple(appearance.shape)}")
            app = appearance[:, None, :].expand(-1, n_s, -1).reshape(n_rays * n_s, -1)
        sigma, rgb = self.field(
            contract_to_unit(pts.reshape(-1, 3)), d[:, None, :].expand(-1, n_s, -1).reshape(-1, 3), app
        )
        w = render_weights(sigma.view(n_rays, n_s), t_edges)
        color = render_rgb(rgb.view(n_rays, n_s, 3), w, background)
        return RenderOutput(
            rgb=color,
            accumulation=w.sum(dim=1),
            depth=render_depth(w, t_edges) * scale,
            weights=w,
            t_edges=t_edges,
            s_edges=s_edges,
            prop_weights=prop_w,
            prop_s_edges=prop_s,
            origins=o,
            dirs=d,
        )

    # ------------------------------------------------------------------ language
    def render_language(
        self,
        out: RenderOutput,
        rows: Optional[torch.Tensor],
        *,
        crop_px: Optional[torch.Tensor] = None,
        fy: Optional[torch.Tensor] = None,
        scale: Optional[torch.Tensor] = None,
        with_dino: bool = True,
    ) -> Dict[str, torch.Tensor]:
        """Render ``F_lang`` (and ``F_dino``) on the top-weighted samples of some rays.

        The geometry's weights are detached: these outputs never move the density.

        Args:
            out: the geometry pass.
            rows: (M,) indices of the rays to render, or None for all.
            crop_px, fy: (M,) crop side (pixels) and focal length (pixels) of each ray: the world
                scale of a sample at distance t (metres) is ``crop_px * t / fy``.
            scale: (M,) or scalar world scale (metres) to use instead (queries).
            with_dino: also render F_dino.
        Returns:
            'clip': (M, clip_dim) unit rows; 'dino': (M, dino_dim) (when with_dino).
        """
        w, t_edges, o, d = out.weights, out.t_edges, out.origins, out.dirs
        if rows is not None:
            w, t_edges, o, d = w[rows], t_edges[rows], o[rows], d[rows]
        m = w.shape[0]
        if m == 0:
            res = {"clip": w.new_zeros((0, self.clip_dim))}
            if with_dino:
                res["dino"] = w.new_zeros((0, self.dino_dim))
            return res
        wk, idx = top_k_samples(w.detach(), self.cfg.num_lang_samples)
        k = wk.shape[1]
        mids = 0.5 * (t_edges[:, 1:] + t_edges[:, :-1])
        tk = torch.gather(mids, 1, idx).detach()  # (M, k) scene units
        pts = o[:, None, :] + d[:, None, :] * tk[..., None]
        x01 = contract_to_unit(pts.reshape(-1, 3)).detach()
        if scale is None:
            if crop_px is None or fy is None:
                raise ValueError("render_language needs crop_px and fy, or an explicit scale")
            s = crop_px.float()[:, None] * (tk * self.scene_scale) / fy.float()[:, None]
        else:
            s = torch.as_tensor(scale, dtype=torch.float32, device=w.device)
            s = s.reshape(-1, 1).expand(m, k) if s.numel() > 1 else s.reshape(1, 1).expand(m, k)
        lang = self._language_field()
        feats = lang.features(x01)
        res = {"clip": render_embedding(lang.clip(feats, s.reshape(-1)).view(m, k, -1), wk, normalize=True)}
        if with_dino:
            res["dino"] = render_embedding(lang.dino(feats).view(m, k, -1), wk, normalize=False)
        return res

    # ------------------------------------------------------------------ point queries (world units)
    def density_at(self, xyz: torch.Tensor) -> torch.Tensor:
        """Density of the radiance field at world points, per metre. (N, 3) -> (N,)."""
        sigma, _ = self.field.density(self.to_grid(xyz.float()))
        return sigma / self.scene_scale

    def language_at(self, xyz: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``F_lang`` at world points and world scales (metres). (N, 3), (N,) -> (N, clip_dim) unit rows."""
        scale = torch.as_tensor(scale, dtype=torch.float32, device=xyz.device).reshape(-1)
        if scale.numel() == 1:
            scale = scale.expand(xyz.shape[0])
        if scale.shape[0] != xyz.shape[0]:
            raise ValueError(f"scale has {scale.shape[0]} values for {xyz.shape[0]} points")
        lang = self._language_field()
        return lang.clip(lang.features(self.to_grid(xyz.float())), scale)

    def language_multi_scale_at(
        self,
        xyz: torch.Tensor,
        scales: torch.Tensor,
        project: Optional[torch.Tensor] = None,
        basis: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``F_lang`` at world points for every scale: the hash grids run once per point
        (``LanguageField.clip_multi_scale``). xyz (N, 3), scales (S,) metres, project (T, clip_dim) or
        None, basis ``lang.clip_basis()`` or None -> (S, N, T or clip_dim)."""
        scales = torch.as_tensor(scales, dtype=torch.float32, device=xyz.device).reshape(-1)
        lang = self._language_field()
        return lang.clip_multi_scale(lang.features(self.to_grid(xyz.float())), scales, project, basis)


# ---------------------------------------------------------------------------------- losses
def geometry_losses(
    out: RenderOutput,
    target_rgb: torch.Tensor,
    cfg: TrainerConfig,
    target_depth: Optional[torch.Tensor] = None,
    dir_z: Optional[torch.Tensor] = None,
    scene_scale: float = 1.0,
) -> Dict[str, torch.Tensor]:
    """RGB MSE, interlevel and distortion losses, and the optional depth loss.

    Args:
        out: the geometry pass.
        target_rgb: (R, 3) in [0, 1].
        target_depth: (R,) metric z-depth (0 or non-finite = none), or None.
        dir_z: (R,) camera-z component of each unit ray direction (ray distance = z / dir_z).
    Returns:
        unweighted losses 'rgb', 'interlevel', 'distortion', 'depth' (when any ray has depth).
    """
    losses = {"rgb": F.mse_loss(out.rgb, target_rgb)}
    if out.prop_weights:
        losses["interlevel"] = sum(
            interlevel_loss(out.s_edges, out.weights, s, w) for s, w in zip(out.prop_s_edges, out.prop_weights)
        )
    losses["distortion"] = distortion_loss(out.s_edges, out.weights)
    if target_depth is not None and cfg.depth_weight > 0:
        if dir_z is None:
            raise ValueError("the depth loss needs dir_z to convert z-depth to ray distance")
        valid = torch.isfinite(target_depth) & (target_depth > 0)
        if bool(valid.any()):
            t_target = target_depth[valid] / dir_z[valid]
            # L1 on the expected termination distance, in scene units.
            losses["depth"] = (out.depth[valid] - t_target).abs().mean() / scene_scale
    return losses


def language_losses(
    rendered: Dict[str, torch.Tensor],
    target_clip: torch.Tensor,
    target_dino: Optional[torch.Tensor],
    cfg: TrainerConfig,
) -> Dict[str, torch.Tensor]:
    """Language loss (Huber on the difference, summed over channels, as the reference code; or
    1 - cosine) and DINO MSE (summed over channels, not normalised), both averaged over rays.
    Unweighted."""
    clip = rendered["clip"]
    if cfg.lang_loss == "huber":
        lang = F.huber_loss(clip, target_clip, delta=cfg.lang_huber_delta, reduction="none").sum(-1).mean()
    else:
        lang = (1.0 - F.cosine_similarity(clip, target_clip, dim=-1)).mean()
    losses = {"lang": lang}
    if target_dino is not None and "dino" in rendered:
        losses["dino"] = (rendered["dino"] - target_dino).square().sum(-1).mean()
    return losses


LOSS_WEIGHT_KEYS = {
    "rgb": None,
    "interlevel": "interlevel_weight",
    "distortion": "distortion_weight",
    "depth": "depth_weight",
    "lang": "lang_weight",
    "dino": "dino_weight",
}


def total_loss(losses: Dict[str, torch.Tensor], cfg: TrainerConfig) -> torch.Tensor:
    """Weighted sum of the losses (RGB has weight 1)."""
    total = None
    for name, value in losses.items():
        key = LOSS_WEIGHT_KEYS[name]
        term = value if key is None else getattr(cfg, key) * value
        total = term if total is None else total + term
    return total
