"""FrozenField's one-pass language path against the per-scale reference, on the real tiny field."""

import pytest
import torch

from lerf_ros.config import preset
from lerf_ros.field.frozen import FrozenField
from lerf_ros.field.model import LerfModel
from lerf_ros.field.snapshot import FieldSnapshot, language_per_scale

pytestmark = pytest.mark.usefixtures("one_thread")

SCALES = torch.tensor([0.05, 0.1, 0.3, 0.7, 1.2, 2.0])


def frozen(clip_dim: int, chunk_rays: int = 16) -> FrozenField:
    torch.manual_seed(0)
    cfg = preset("tiny").override({"model.scene_scale": 1.5, "model.scene_center": [0.1, -0.2, 0.3]}).model
    return FrozenField(LerfModel(cfg, clip_dim, 8), [], step=3, chunk_rays=chunk_rays)


def points(n: int = 300) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    return torch.rand(n, 3, generator=g) * 6.0 - 3.0  # inside and beyond the scene box


@pytest.mark.parametrize("clip_dim", [512, 32])
def test_one_pass_matches_the_language_field_called_once_per_scale(clip_dim):
    """512: a head narrower than its output (basis of hidden + 1 rows); 32: wider (the whole space).
    chunk_rays=16 makes the 300 points cross chunk boundaries (128 points per chunk)."""
    snap = frozen(clip_dim)
    assert isinstance(snap, FieldSnapshot)
    xyz = points()
    ref = language_per_scale(snap, xyz, SCALES)  # (S, N, D)
    got = snap.language_multi_scale(xyz, SCALES)
    assert got.shape == (len(SCALES), len(xyz), clip_dim)
    torch.testing.assert_close(got, ref)
    # The reference itself is the training head: grid features and the scale concatenated.
    model = snap._model
    lang = model.lang
    with torch.no_grad():
        feats = lang.features(model.to_grid(xyz))
        head = torch.stack([lang.clip_net(torch.cat([feats, torch.full((len(xyz), 1), float(s))], -1)) for s in SCALES])
    torch.testing.assert_close(got, torch.nn.functional.normalize(head, dim=-1))
    # Projected onto a few rows, as the scale search asks.
    P = torch.linalg.qr(torch.randn(clip_dim, 6, generator=torch.Generator().manual_seed(4)))[0].T.contiguous()
    torch.testing.assert_close(snap.language_multi_scale(xyz, SCALES, P), ref @ P.T)
    # The scales really matter (a test that could not fail otherwise).
    assert float((ref[0] - ref[-1]).abs().max()) > 1e-3


@pytest.mark.parametrize("clip_dim", [512, 32])
def test_language_basis_spans_every_output(clip_dim):
    snap = frozen(clip_dim)
    B = snap.language_basis()
    width = min(clip_dim, preset("tiny").model.lang_hidden_dim + 1)
    assert B.shape == (width, clip_dim)
    torch.testing.assert_close(B @ B.T, torch.eye(width), atol=1e-5, rtol=0)
    phi = snap.language_multi_scale(points(), SCALES).reshape(-1, clip_dim)
    torch.testing.assert_close((phi @ B.T) @ B, phi, atol=2e-6, rtol=0)
    coeffs = snap.language_multi_scale(points(), SCALES, B)
    torch.testing.assert_close(coeffs.norm(dim=-1), torch.ones(coeffs.shape[:2]))


def test_empty_inputs():
    snap = frozen(32)
    assert snap.language_multi_scale(torch.zeros(0, 3), SCALES).shape == (len(SCALES), 0, 32)
    assert snap.language_multi_scale(points(5), torch.zeros(0)).shape == (0, 5, 32)
    with pytest.raises(ValueError, match="project must be"):
        snap.language_multi_scale(points(5), SCALES, torch.zeros(3, 31))
