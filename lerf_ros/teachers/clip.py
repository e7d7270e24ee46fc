"""OpenCLIP image and text encoders, and the CLIP + DINO teacher.

Weights are never downloaded at run time. ``clip_pretrained`` (an OpenCLIP tag such as
``laion2b_s34b_b88k``) is resolved in the local caches only (Hugging Face hub cache, the OpenCLIP
URL cache, or ``teacher.weights_cache_dir``); ``clip_checkpoint`` names a local file directly. With
neither available, construction raises ``TeacherWeightsError`` at once, saying how to provide them.

``random_weights=True`` builds the real architecture with random weights, for tests and cost
benchmarks only; ``description`` then says "RANDOM WEIGHTS: tests/benchmarks only".
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lerf_ros.config import ConfigError, TeacherConfig
from lerf_ros.data.frame import Frame
from lerf_ros.teachers.base import Teacher
from lerf_ros.teachers.dino import DinoEncoder
from lerf_ros.teachers.weights import (
    RANDOM_WEIGHTS_NOTE,
    TeacherWeightsError,
    ensure_offline_hub,
    find_cached_weights,
    resolve_device,
)

#: Small OpenCLIP architectures (overrides of the ViT-B-16 config) for fast tests: random weights or a
#: local checkpoint of the same architecture, never a pretrained tag.
TEST_ARCHITECTURES: Dict[str, dict] = {
    "test-tiny-vit": dict(
        embed_dim=32,
        vision_cfg=dict(image_size=32, layers=2, width=64, head_width=32, patch_size=8),
        text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2),
    ),
}


def extract_crops(image: torch.Tensor, boxes: np.ndarray, out_size: int) -> torch.Tensor:
    """Cut boxes out of an image and resize them, batched.

    Args:
        image: (3, H, W) float image (already normalised: padding is 0, the mean colour).
        boxes: (N, 4) int boxes ``x0, y0, x1, y1`` (exclusive ends), possibly reaching outside the
            image; the outside is zero-padded. Non-square boxes are stretched to a square.
        out_size: side of the output crops.
    Returns:
        (N, 3, out_size, out_size) on the image's device; antialiased bicubic resize.
    """
    boxes = _check_boxes(boxes)
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must have shape (3, H, W), got {tuple(image.shape)}")
    n = len(boxes)
    _, H, W = image.shape
    out = image.new_zeros((n, 3, out_size, out_size))
    if n == 0:
        return out
    pad = int(max(0, -boxes[:, 0].min(), -boxes[:, 1].min(), boxes[:, 2].max() - W, boxes[:, 3].max() - H))
    padded = F.pad(image, (pad, pad, pad, pad)) if pad else image
    b = torch.as_tensor(boxes + np.array([pad, pad, pad, pad]), dtype=torch.long, device=image.device)
    sizes = boxes[:, 2:4] - boxes[:, 0:2]
    shapes, group = np.unique(sizes, axis=0, return_inverse=True)
    group = group.reshape(-1)
    for g, (bw, bh) in enumerate(shapes):
        sel = torch.as_tensor(np.nonzero(group == g)[0], device=image.device)
        xs = b[sel, 0, None] + torch.arange(int(bw), device=image.device)  # (n, bw)
        ys = b[sel, 1, None] + torch.arange(int(bh), device=image.device)  # (n, bh)
        crops = padded[:, ys[:, :, None], xs[:, None, :]].permute(1, 0, 2, 3)  # (n, 3, bh, bw)
        if (int(bh), int(bw)) != (out_size, out_size):
            crops = F.interpolate(crops, size=(out_size, out_size), mode="bicubic", align_corners=False, antialias=True)
        out[sel] = crops
    return out


def _check_boxes(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {boxes.shape}")
    if boxes.size and not np.issubdtype(boxes.dtype, np.integer):
        if not np.all(np.isfinite(boxes)) or not np.all(boxes == np.round(boxes)):
            raise ValueError("boxes must hold whole pixel coordinates")
    boxes = boxes.astype(np.int64)
    if boxes.size and np.any(boxes[:, 2:4] <= boxes[:, 0:2]):
        raise ValueError("boxes must have x1 > x0 and y1 > y0")
    return boxes


class ClipEncoder:
    """An OpenCLIP model used as a frozen image and text encoder.

    Attributes:
        embed_dim: dimension of the joint embedding space.
        image_size: side of the square model input.
        description: one line naming the model and its weights.
    """

    def __init__(
        self,
        model_name: str = "ViT-B-16",
        pretrained: str = "laion2b_s34b_b88k",
        checkpoint: str = "",
        random_weights: bool = False,
        device: str = "auto",
        cache_dir: str = "",
        batch_size: int = 64,
    ) -> None:
        """
        Args:
            model_name: OpenCLIP architecture (``open_clip.list_models()``), or a name of
                ``TEST_ARCHITECTURES`` (random weights or a checkpoint only).
            pretrained: OpenCLIP pretrained tag, looked up in the local caches only. With
                ``checkpoint`` set it still selects the image mean/std when it is a known tag.
            checkpoint: local OpenCLIP checkpoint file (overrides the tag's weights).
            random_weights: tests and cost benchmarks only.
            device: 'auto', 'cpu' or 'cuda[:N]'.
            cache_dir: warm weights cache (see ``TeacherConfig.weights_cache_dir``).
            batch_size: crops per forward pass.
        Raises:
            TeacherWeightsError: no weights available offline; ConfigError: unknown model or tag.
        """
        ensure_offline_hub()
        import open_clip

        self.model_name = model_name
        self.device = resolve_device(device)
        self.batch_size = max(1, int(batch_size))
        self.random_weights = bool(random_weights)
        arch_overrides = {}
        base_name = model_name
        if model_name in TEST_ARCHITECTURES:
            if not (random_weights or checkpoint):
                raise ConfigError(
                    f"teacher.clip_model = {model_name!r} is a test architecture: it has no "
                    "pretrained weights (set teacher.random_weights or teacher.clip_checkpoint)"
                )
            arch_overrides = TEST_ARCHITECTURES[model_name]
            base_name = "ViT-B-16"
        elif model_name not in open_clip.list_models():
            raise ConfigError(
                f"teacher.clip_model = {model_name!r} is not an OpenCLIP architecture; "
                f"known: {', '.join(open_clip.list_models()[:12])}, ..."
            )

        tag_cfg = open_clip.get_pretrained_cfg(base_name, pretrained) if pretrained and not arch_overrides else {}
        weights: Optional[str] = None
        if random_weights:
            source = RANDOM_WEIGHTS_NOTE
        elif checkpoint:
            if not os.path.isfile(checkpoint):
                raise TeacherWeightsError(f"teacher.clip_checkpoint = {checkpoint!r}: no such file")
            weights, source = checkpoint, os.path.basename(checkpoint)
        else:
            if not tag_cfg:
                tags = open_clip.list_pretrained_tags_by_model(model_name)
                raise ConfigError(
                    f"teacher.clip_pretrained = {pretrained!r} is not an OpenCLIP tag of {model_name}; "
                    f"known tags: {', '.join(tags) or 'none'}"
                )
            weights = self._find_tag_weights(tag_cfg, cache_dir)
            if weights is None:
                raise TeacherWeightsError(self._missing_message(model_name, pretrained, tag_cfg, cache_dir))
            source = pretrained
        preprocess = {k: tag_cfg[k] for k in ("mean", "std") if k in tag_cfg}
        try:  # a file path as ``pretrained``: OpenCLIP loads it (strict) and never looks up a tag
            model = open_clip.create_model(
                base_name,
                pretrained=weights,
                pretrained_image=False,
                pretrained_text=False,
                force_preprocess_cfg=preprocess or None,
                force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
                **arch_overrides,
            )
        except Exception as exc:
            if weights is None:
                raise
            raise TeacherWeightsError(f"could not load OpenCLIP {model_name} weights from {weights}: {exc}") from exc
        self.model = model.to(self.device).eval().requires_grad_(False)
        pp = open_clip.get_model_preprocess_cfg(model)
        size = pp.get("size", model.visual.image_size)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        mean = pp.get("mean", open_clip.OPENAI_DATASET_MEAN)
        std = pp.get("std", open_clip.OPENAI_DATASET_STD)
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(3, 1, 1)
        ctx = arch_overrides.get("text_cfg", {}).get("context_length") if arch_overrides else None
        self.tokenizer = open_clip.get_tokenizer(base_name, context_length=ctx)
        self.embed_dim = int(model.visual.output_dim)
        self.description = f"OpenCLIP {model_name} ({source})"

    @classmethod
    def from_config(cls, cfg: TeacherConfig, device: str = "auto") -> "ClipEncoder":
        return cls(
            cfg.clip_model,
            cfg.clip_pretrained,
            cfg.clip_checkpoint,
            cfg.random_weights,
            device,
            cfg.weights_cache_dir,
            cfg.batch_size,
        )

    # ------------------------------------------------------------------ weights lookup
    @staticmethod
    def _find_tag_weights(tag_cfg: dict, cache_dir: str) -> Optional[str]:
        from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

        if tag_cfg.get("file") and os.path.isfile(tag_cfg["file"]):
            return tag_cfg["file"]
        repo, names = "", []
        hub = tag_cfg.get("hf_hub", "")
        if hub.endswith("/"):  # OpenCLIP convention: repo id only, default file names
            repo, names = hub.rstrip("/"), [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        elif hub:
            repo, filename = os.path.split(hub)
            stem, ext = os.path.splitext(filename)
            names = ([stem + ".safetensors"] if ext in (".bin", ".pth", ".pt") else []) + [filename]
        return find_cached_weights(
            repo, names, tag_cfg.get("url", ""), cache_dir, url_dirs=[os.path.expanduser("~/.cache/clip")]
        )

    @staticmethod
    def _missing_message(model_name: str, tag: str, tag_cfg: dict, cache_dir: str) -> str:
        where = tag_cfg.get("hf_hub", "").rstrip("/") or tag_cfg.get("url", "")
        looked = cache_dir or "the default caches (HF_HUB_CACHE, ~/.cache/clip)"
        return (
            f"OpenCLIP weights for {model_name} / {tag} are not available offline (looked in {looked}; "
            f"source: {where}). Weights are never downloaded at run time. Provide them with either\n"
            f"  lerf-ros weights --preset <your preset>{' --cache-dir ' + cache_dir if cache_dir else ''}\n"
            f"    (fetches and verifies them on a machine with internet, into the default caches or, with\n"
            f"    --cache-dir DIR, into the folder teacher.weights_cache_dir names; --check lists what is\n"
            f"    missing, --from FILE imports a file downloaded elsewhere), or\n"
            f"  teacher.clip_checkpoint: /path/to/open_clip_model.safetensors   (a local checkpoint file).\n"
            f"For tests and cost benchmarks only, teacher.random_weights: true builds the architecture "
            f"with random weights."
        )

    # ------------------------------------------------------------------ encoders
    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return torch.autocast("cpu", enabled=False)

    def normalize_image(self, rgb: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (3, H, W) float32 on the model's device, normalised with its mean/std."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
        img = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device).permute(2, 0, 1).float() / 255.0
        return (img - self._mean) / self._std

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised model inputs (S = image_size) -> (B, embed_dim) float32 CPU, unit rows."""
        if images.ndim != 4 or images.shape[1:] != (3, self.image_size, self.image_size):
            raise ValueError(
                f"images must have shape (B, 3, {self.image_size}, {self.image_size}), got {tuple(images.shape)}"
            )
        outs = []
        for start in range(0, images.shape[0], self.batch_size):
            with self._autocast():
                emb = self.model.encode_image(images[start : start + self.batch_size].to(self.device))
            outs.append(F.normalize(emb.float(), dim=-1).cpu())
        if not outs:
            return torch.zeros((0, self.embed_dim))
        return torch.cat(outs, dim=0)

    @torch.no_grad()
    def encode_crops(self, rgb: np.ndarray, boxes: np.ndarray) -> torch.Tensor:
        """Embed boxes of an (H, W, 3) uint8 image (see ``extract_crops``). -> (N, embed_dim) float32 CPU."""
        boxes = _check_boxes(boxes)
        image = self.normalize_image(rgb)
        outs = []
        for start in range(0, len(boxes), self.batch_size):
            crops = extract_crops(image, boxes[start : start + self.batch_size], self.image_size)
            outs.append(self.encode_images(crops))
        if not outs:
            return torch.zeros((0, self.embed_dim))
        return torch.cat(outs, dim=0)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """(len(texts), embed_dim) float32 CPU, unit rows."""
        if isinstance(texts, str):
            raise TypeError("encode_text takes a sequence of strings, not a single string")
        texts = list(texts)
        if not texts:
            return torch.zeros((0, self.embed_dim))
        tokens = self.tokenizer(texts).to(self.device)
        with self._autocast():
            emb = self.model.encode_text(tokens)
        return F.normalize(emb.float(), dim=-1).cpu()


class ClipDinoTeacher(Teacher):
    """The real teacher: OpenCLIP crop and text embeddings plus dense DINO features."""

    def __init__(self, clip: ClipEncoder, dino: DinoEncoder) -> None:
        self.clip = clip
        self.dino = dino
        self.clip_dim = clip.embed_dim
        self.dino_dim = dino.embed_dim
        self.description = f"{clip.description} + {dino.description}"

    @classmethod
    def from_config(cls, cfg: TeacherConfig, device: str = "auto") -> "ClipDinoTeacher":
        cfg.check()
        return cls(ClipEncoder.from_config(cfg, device), DinoEncoder.from_config(cfg, device))

    def encode_crops(self, frame: Frame, boxes: np.ndarray) -> torch.Tensor:
        return self.clip.encode_crops(frame.rgb, boxes)

    def dense_features(self, frame: Frame) -> torch.Tensor:
        return self.dino.dense_features(frame.rgb)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        return self.clip.encode_text(texts)
