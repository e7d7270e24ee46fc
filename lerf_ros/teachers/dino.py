"""Dense DINO features with timm (ViT-S/8 DINO by default).

The image is resized so that its longer side is at most ``dino_max_side`` (never enlarged beyond
the frame) and both sides are rounded down to multiples of the patch size; the ViT runs at that size (timm's
dynamic image size interpolates the position embedding) and yields one feature per patch, i.e. a
(H' / p, W' / p, D) map at the model's patch stride. The feature is either the key of the last
attention block (``facet='key'``, what the reference uses) or the final normalised patch token.

Weights come from ``dino_checkpoint`` (a local file) or the local caches (Hugging Face hub cache,
torch hub folder, ``teacher.weights_cache_dir``), never from the network; without them
construction raises ``TeacherWeightsError`` at once. ``random_weights=True`` is for tests and
cost benchmarks only and says so in ``description``.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from lerf_ros.config import ConfigError, TeacherConfig
from lerf_ros.teachers.weights import (
    RANDOM_WEIGHTS_NOTE,
    TeacherWeightsError,
    ensure_offline_hub,
    find_cached_weights,
    resolve_device,
)


def dino_input_size(height: int, width: int, max_side: int, patch: int) -> Tuple[int, int]:
    """(h, w) fed to the ViT: scaled by min(1, max_side / longer side), each rounded down to a multiple
    of ``patch`` (at least one patch), so never larger than the frame (unless it is smaller than a patch)."""
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if max_side < patch:
        raise ConfigError(f"teacher.dino_max_side = {max_side} is invalid: expected >= the patch size {patch}")
    scale = min(1.0, max_side / max(height, width))

    def side(n: int) -> int:
        return patch * max(1, int(np.floor(n * scale / patch + 1e-9)))

    return side(height), side(width)


class DinoEncoder:
    """A frozen timm ViT producing dense patch features.

    Attributes:
        embed_dim: feature dimension.
        patch_size: stride of the feature map in model-input pixels.
        description: one line naming the model and its weights.
    """

    def __init__(
        self,
        model_name: str = "vit_small_patch8_224.dino",
        checkpoint: str = "",
        random_weights: bool = False,
        max_side: int = 448,
        facet: str = "key",
        device: str = "auto",
        cache_dir: str = "",
        model_kwargs: Optional[dict] = None,
    ) -> None:
        """
        Args:
            model_name: timm model name with pretrained tag (``vit_small_patch8_224.dino``).
            checkpoint: local checkpoint file (timm or original DINO state dict).
            random_weights: tests and cost benchmarks only.
            max_side: longest side of the model input.
            facet: 'key' or 'token' (see the module docstring).
            device: 'auto', 'cpu' or 'cuda[:N]'.
            cache_dir: warm weights cache (see ``TeacherConfig.weights_cache_dir``).
            model_kwargs: extra timm constructor arguments (e.g. ``depth`` for small test models).
        Raises:
            TeacherWeightsError: no weights available offline; ConfigError: unknown model or facet.
        """
        ensure_offline_hub()
        import timm

        if facet not in ("key", "token"):
            raise ConfigError(f"teacher.dino_facet = {facet!r} is invalid: expected 'key' or 'token'")
        if not timm.is_model(model_name):
            raise ConfigError(f"teacher.dino_model = {model_name!r} is not a timm model")
        self.model_name = model_name
        self.device = resolve_device(device)
        self.max_side = int(max_side)
        self.facet = facet
        self.random_weights = bool(random_weights)
        kwargs = dict(num_classes=0, dynamic_img_size=True, **(model_kwargs or {}))
        if random_weights:
            model = timm.create_model(model_name, pretrained=False, **kwargs)
            source = RANDOM_WEIGHTS_NOTE
        else:
            if checkpoint:
                if not os.path.isfile(checkpoint):
                    raise TeacherWeightsError(f"teacher.dino_checkpoint = {checkpoint!r}: no such file")
                path, source = checkpoint, os.path.basename(checkpoint)
            else:
                path = self._find_cached(model_name, cache_dir)
                if path is None:
                    raise TeacherWeightsError(self._missing_message(model_name, cache_dir))
                source = "pretrained"
            try:
                model = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=dict(file=path), **kwargs)
            except Exception as exc:
                raise TeacherWeightsError(f"could not load {model_name} weights from {path}: {exc}") from exc
        self.model = model.to(self.device).eval().requires_grad_(False)
        patch = model.patch_embed.patch_size
        self.patch_size = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        self.embed_dim = int(model.embed_dim)
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 1))
        pcfg = getattr(model, "pretrained_cfg", {}) or {}
        mean = pcfg.get("mean", (0.485, 0.456, 0.406))
        std = pcfg.get("std", (0.229, 0.224, 0.225))
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        if facet == "key":
            attn = getattr(getattr(model, "blocks", [None])[-1], "attn", None)
            if attn is None or getattr(attn, "qkv", None) is None or not hasattr(attn, "num_heads"):
                raise ConfigError(
                    f"teacher.dino_facet = 'key' needs a ViT with fused qkv attention; "
                    f"{model_name} has none (use 'token')"
                )
            self.embed_dim = int(attn.qkv.out_features // 3)
        self.description = f"timm {model_name} [{facet}] ({source})"

    @classmethod
    def from_config(cls, cfg: TeacherConfig, device: str = "auto") -> "DinoEncoder":
        return cls(
            cfg.dino_model,
            cfg.dino_checkpoint,
            cfg.random_weights,
            cfg.dino_max_side,
            cfg.dino_facet,
            device,
            cfg.weights_cache_dir,
        )

    # ------------------------------------------------------------------ weights lookup
    @staticmethod
    def _find_cached(model_name: str, cache_dir: str) -> Optional[str]:
        from timm.models import get_pretrained_cfg

        pcfg = get_pretrained_cfg(model_name)
        if pcfg is None:
            return None
        names = (
            [pcfg.hf_hub_filename]
            if getattr(pcfg, "hf_hub_filename", None)
            else ["model.safetensors", "pytorch_model.bin"]
        )
        return find_cached_weights(
            pcfg.hf_hub_id or "",
            names,
            pcfg.url or "",
            cache_dir,
            url_dirs=[os.path.join(torch.hub.get_dir(), "checkpoints")],
        )

    @staticmethod
    def _missing_message(model_name: str, cache_dir: str) -> str:
        looked = cache_dir or "the default caches (HF_HUB_CACHE, the torch hub checkpoints folder)"
        return (
            f"DINO weights for {model_name} are not available offline (looked in {looked}). Weights are never "
            f"downloaded at run time. Provide them with either\n"
            f"  lerf-ros weights --preset <your preset>{' --cache-dir ' + cache_dir if cache_dir else ''}\n"
            f"    (fetches and verifies them on a machine with internet, into the default caches or, with\n"
            f"    --cache-dir DIR, into the folder teacher.weights_cache_dir names; --check lists what is\n"
            f"    missing, --from FILE imports a file downloaded elsewhere), or\n"
            f"  teacher.dino_checkpoint: /path/to/dino_deitsmall8_pretrain.pth   (a local checkpoint file).\n"
            f"For tests and cost benchmarks only, teacher.random_weights: true builds the architecture "
            f"with random weights."
        )

    # ------------------------------------------------------------------ features
    @torch.no_grad()
    def dense_features(self, rgb: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 image -> (h, w, embed_dim) float32 CPU feature map (h = H' / patch, ...)."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
        H, W = rgb.shape[:2]
        h_in, w_in = dino_input_size(H, W, self.max_side, self.patch_size)
        x = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        if (h_in, w_in) != (H, W):
            x = F.interpolate(x, size=(h_in, w_in), mode="bilinear", align_corners=False, antialias=True)
        x = (x - self._mean) / self._std
        captured = {}
        hook = None
        if self.facet == "key":
            attn = self.model.blocks[-1].attn
            hook = attn.qkv.register_forward_hook(lambda _m, _i, out: captured.__setitem__("qkv", out))
        try:
            with (
                torch.autocast("cuda", dtype=torch.float16)
                if self.device.type == "cuda"
                else torch.autocast("cpu", enabled=False)
            ):
                tokens = self.model.forward_features(x)
        finally:
            if hook is not None:
                hook.remove()
        if self.facet == "key":
            qkv = captured["qkv"]  # (1, N, 3 * C) laid out as (3, heads, head_dim)
            n = qkv.shape[1]
            heads = self.model.blocks[-1].attn.num_heads
            tokens = qkv.reshape(1, n, 3, heads, -1)[:, :, 1].reshape(1, n, -1)
        gh, gw = h_in // self.patch_size, w_in // self.patch_size
        feats = tokens[0, self.num_prefix_tokens :].float()
        if feats.shape[0] != gh * gw:
            raise RuntimeError(f"{self.model_name} returned {feats.shape[0]} patch tokens for a {gw}x{gh} grid")
        return feats.reshape(gh, gw, -1).cpu()
