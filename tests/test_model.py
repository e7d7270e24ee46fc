"""The LERF model: detached language rendering, the scale of a sample, losses, config checks."""

import pytest
import torch

from lerf_ros.config import ConfigError, TrainerConfig, preset
from lerf_ros.field.fields import LanguageField, spherical_harmonics
from lerf_ros.field.model import LerfModel, geometry_losses, language_losses, total_loss

pytestmark = pytest.mark.usefixtures("one_thread")

CLIP, DINO = 32, 8


def tiny_model(**over) -> LerfModel:
    torch.manual_seed(0)
    cfg = preset("tiny").override({"model.scene_scale": 2.0, "model.scene_center": [0.1, 0.0, 0.2], **over}).model
    return LerfModel(cfg, CLIP, DINO)


def rays(n: int = 64):
    g = torch.Generator().manual_seed(1)
    origins = torch.randn(n, 3, generator=g) * 0.2 + torch.tensor([0.0, -1.5, 0.5])
    dirs = torch.randn(n, 3, generator=g) * 0.2 + torch.tensor([0.0, 1.0, -0.2])
    return origins, dirs / dirs.norm(dim=1, keepdim=True)


def test_language_loss_leaves_density_untouched():
    model = tiny_model()
    o, d = rays()
    out = model.render_rays(o, d, generator=torch.Generator().manual_seed(0), step=10)
    rows = torch.arange(0, 64, 2)
    rendered = model.render_language(out, rows, crop_px=torch.full((32,), 20.0), fy=torch.full((32,), 100.0))
    target_clip = torch.nn.functional.normalize(torch.randn(32, CLIP), dim=-1)
    cfg = TrainerConfig()
    for kind in ("huber", "cosine"):
        cfg.lang_loss = kind
        model.zero_grad(set_to_none=True)
        losses = language_losses(rendered, target_clip, torch.randn(32, DINO), cfg)
        total_loss(losses, cfg).backward(retain_graph=True)
        for p in model.density_parameters():
            assert p.grad is None or float(p.grad.abs().max()) == 0.0
        lang_grads = [p.grad for p in model.lang.parameters()]
        assert all(g is not None for g in lang_grads)
        assert sum(float(g.abs().sum()) for g in lang_grads) > 0
    # whereas the RGB loss does move the density
    model.zero_grad(set_to_none=True)
    geometry_losses(out, torch.rand(64, 3), cfg)["rgb"].backward()
    assert float(model.field.encoding.params.grad.abs().sum()) > 0


def test_language_scale_is_the_pixel_footprint_at_each_sample():
    model = tiny_model()
    o, d = rays(16)
    out = model.render_rays(o, d)
    seen = {}
    orig = model.lang.clip

    def spy(feats, scale):
        seen["scale"] = scale.detach().clone()
        return orig(feats, scale)

    model.lang.clip = spy
    crop = torch.linspace(10, 60, 16)
    fy = torch.full((16,), 80.0)
    model.render_language(out, None, crop_px=crop, fy=fy)
    k = model.cfg.num_lang_samples
    _, idx = torch.topk(out.weights, k, dim=1, sorted=False)
    mids = 0.5 * (out.t_edges[:, 1:] + out.t_edges[:, :-1])
    t_world = torch.gather(mids, 1, idx) * model.scene_scale  # metres along the ray
    expect = crop[:, None] * t_world / fy[:, None]
    torch.testing.assert_close(seen["scale"].view(16, k), expect)
    # an explicit scale (queries) is used as is
    model.render_language(out, None, scale=torch.tensor(0.25))
    assert torch.all(seen["scale"] == 0.25)


def test_language_outputs_are_unit_and_match_point_queries():
    model = tiny_model().eval()
    o, d = rays(8)
    with torch.no_grad():
        out = model.render_rays(o, d)
        r = model.render_language(out, None, scale=torch.tensor(0.5))
        torch.testing.assert_close(r["clip"].norm(dim=-1), torch.ones(8))
        assert r["dino"].shape == (8, DINO)
        pts = torch.randn(50, 3)
        lang = model.language_at(pts, torch.full((50,), 0.3))
        torch.testing.assert_close(lang.norm(dim=-1), torch.ones(50))
        assert torch.all(model.density_at(pts) >= 0)
        # the language field has no view-direction input: a point's embedding is one value
        a = model.language_at(pts[:1], torch.tensor([0.3]))
        b = model.language_at(pts[:1].repeat(3, 1), torch.full((3,), 0.3))
        torch.testing.assert_close(b, a.expand(3, -1))


def test_field_sizes_follow_the_reference_presets():
    cfg = preset("lerf").model
    lf = LanguageField(
        512,
        384,
        cfg.lang_num_levels,
        [12, 12],
        cfg.lang_base_resolution,
        cfg.lang_max_resolution,
        cfg.lang_features_per_level,
        cfg.lang_hidden_dim,
        cfg.lang_num_layers,
        cfg.dino_hidden_dim,
        cfg.dino_num_layers,
    )
    # two grids x 12 levels x 8 features; CLIP MLP 4 hidden layers of 256 (+1 scale input); DINO MLP 1 of 256
    assert [e.layout.num_levels for e in lf.encodings] == [12, 12]
    # finest level of each grid: 128 and 512 cells across (scale + 1, as tinycudann counts)
    assert [e.layout.scales[-1] + 1 for e in lf.encodings] == [
        pytest.approx(128, rel=1e-5),
        pytest.approx(512, rel=1e-5),
    ]
    assert lf.clip_net[0].in_features == 12 * 8 * 2 + 1
    assert sum(isinstance(m, torch.nn.Linear) for m in lf.clip_net) == 5
    assert lf.clip_net[-1].out_features == 512 and lf.dino_net[-1].out_features == 384
    assert sum(isinstance(m, torch.nn.Linear) for m in lf.dino_net) == 2
    lite = preset("lerf-lite").model
    assert lite.lang_num_levels == (16,) and lite.lang_max_resolution == (512,) and lite.num_lang_samples == 12
    big = preset("lerf-big").model
    assert big.lang_num_levels == (16, 16) and big.lang_log2_hashmap_size == (20, 20)


def test_losses():
    model = tiny_model()
    o, d = rays(32)
    out = model.render_rays(o, d, generator=torch.Generator().manual_seed(3), step=0)
    cfg = TrainerConfig()
    depth = torch.full((32,), 1.0)
    depth[:5] = 0.0  # no measurement
    losses = geometry_losses(out, torch.rand(32, 3), cfg, depth, torch.ones(32), scene_scale=2.0)
    assert set(losses) == {"rgb", "interlevel", "distortion", "depth"}
    assert all(torch.isfinite(v) for v in losses.values())
    no_depth = geometry_losses(out, torch.rand(32, 3), cfg, torch.zeros(32), torch.ones(32))
    assert "depth" not in no_depth
    with pytest.raises(ValueError, match="dir_z"):
        geometry_losses(out, torch.rand(32, 3), cfg, depth, None)
    t = torch.nn.functional.normalize(torch.randn(4, CLIP), dim=-1)
    perfect = language_losses({"clip": t, "dino": torch.ones(4, DINO)}, t, torch.ones(4, DINO), cfg)
    assert float(perfect["lang"]) == 0.0 and float(perfect["dino"]) == 0.0
    cfg.lang_loss = "cosine"
    opposite = language_losses({"clip": -t}, t, None, cfg)
    assert float(opposite["lang"]) == pytest.approx(2.0)


def test_no_proposal_mode_and_config_errors():
    model = tiny_model(**{"model.num_proposal_samples": []})
    o, d = rays(4)
    out = model.render_rays(o, d)
    assert out.prop_weights == [] and out.weights.shape == (4, model.cfg.num_nerf_samples)
    with pytest.raises(ConfigError, match="model.num_lang_samples"):
        tiny_model(**{"model.num_lang_samples": 100})
    with pytest.raises(ConfigError, match="model.lang_num_levels"):
        tiny_model(**{"model.lang_num_levels": [8, 8]})
    with pytest.raises(ConfigError, match="model.background_color"):
        tiny_model(**{"model.background_color": "green"})


def test_spherical_harmonics_orthonormal():
    g = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(200000, 3, generator=g, dtype=torch.float64), dim=-1)
    Y = spherical_harmonics(d, 4)
    gram = (Y.T @ Y) * (4 * torch.pi / d.shape[0])  # Monte-Carlo integral over the sphere
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), rtol=0, atol=0.03)
