"""Volume rendering and sampling on analytic cases."""

import math

import numpy as np
import pytest
import torch

from lerf_ros.field.rendering import (
    distortion_loss,
    interlevel_loss,
    outer_measure,
    render_depth,
    render_embedding,
    render_rgb,
    render_weights,
    top_k_samples,
)
from lerf_ros.field.sampling import (
    anneal_weights,
    camera_rays,
    contract,
    contract_to_unit,
    image_rays,
    pdf_edges,
    spacing,
    spacing_inv,
    uniform_edges,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def slab_density(edges: torch.Tensor, z0: float, z1: float, sigma: float) -> torch.Tensor:
    """Density of an opaque slab occupying [z0, z1] along the ray, evaluated at bin midpoints."""
    mids = 0.5 * (edges[:, 1:] + edges[:, :-1])
    return torch.where((mids >= z0) & (mids <= z1), torch.full_like(mids, sigma), torch.zeros_like(mids))


@pytest.mark.parametrize("z0", [0.73, 1.5, 3.21])
def test_opaque_slab_gives_its_depth_and_unit_weights(z0):
    n_rays, n_samples = 5, 400
    edges = torch.linspace(0.0, 4.0, n_samples + 1).expand(n_rays, -1).contiguous()
    density = slab_density(edges, z0, z0 + 0.3, 1e4)
    w = render_weights(density, edges)
    bin_width = 4.0 / n_samples
    torch.testing.assert_close(w.sum(1), torch.ones(n_rays), rtol=0, atol=1e-5)
    depth = render_depth(w, edges)
    assert torch.all((depth - z0).abs() <= bin_width)
    # all the weight sits in the first bin whose midpoint is inside the slab
    first = int(torch.nonzero(density[0] > 0)[0])
    assert float(w[0, first]) == pytest.approx(1.0, abs=1e-5)
    # the slab's colour is what is seen; the background does not leak through
    colors = torch.zeros(n_rays, n_samples, 3)
    colors[:, :, 0] = 1.0  # red everywhere the density is
    rgb = render_rgb(colors, w, torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(rgb, torch.tensor([[1.0, 0.0, 0.0]]).expand(n_rays, 3), rtol=0, atol=1e-5)


def test_semi_transparent_constant_medium_matches_beer_lambert():
    edges = torch.sort(torch.rand(3, 64) * 2.0, dim=1).values
    edges = torch.cat([torch.zeros(3, 1), edges, torch.full((3, 1), 2.0)], dim=1)  # uneven bins over [0, 2]
    sigma = 0.7
    w = render_weights(torch.full((3, edges.shape[1] - 1), sigma), edges)
    acc = w.sum(1)
    torch.testing.assert_close(acc, torch.full((3,), 1.0 - math.exp(-sigma * 2.0)), rtol=1e-5, atol=1e-6)
    # expected depth of a constant medium restricted to [0, L]: analytic value
    L = 2.0
    expect = (1.0 / sigma - (L + 1.0 / sigma) * math.exp(-sigma * L)) / (1.0 - math.exp(-sigma * L))
    mids_depth = render_depth(w, edges)
    assert torch.all((mids_depth - expect).abs() < 0.05)


def test_empty_space_shows_background_and_far_depth():
    edges = torch.linspace(0.5, 3.0, 33).expand(2, -1)
    w = render_weights(torch.zeros(2, 32), edges)
    assert float(w.abs().max()) == 0.0
    bg = torch.tensor([[0.2, 0.4, 0.6], [1.0, 1.0, 1.0]])
    torch.testing.assert_close(render_rgb(torch.rand(2, 32, 3), w, bg), bg)
    torch.testing.assert_close(render_depth(w, edges), torch.full((2,), 3.0))


def test_render_weights_shape_check():
    with pytest.raises(ValueError, match="does not match"):
        render_weights(torch.zeros(2, 5), torch.zeros(2, 5))


def test_render_embedding_normalises_clip_but_not_dino():
    e = torch.randn(4, 6, 10)
    w = torch.rand(4, 6)
    clip = render_embedding(e, w, normalize=True)
    dino = render_embedding(e, w, normalize=False)
    torch.testing.assert_close(clip.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(dino, (w[..., None] * e).sum(1))
    vals, idx = top_k_samples(w, 3)
    assert idx.shape == (4, 3)
    assert torch.all(vals.min(1).values >= torch.sort(w, 1, descending=True).values[:, 2] - 1e-7)


def test_outer_measure_by_hand():
    env_edges = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]])
    env_w = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    edges = torch.tensor([[0.0, 0.5, 1.5, 3.0, 4.0]])
    # [0,.5] overlaps env bin 0; [.5,1.5] bins 0,1; [1.5,3] bins 1,2; [3,4] bin 3
    torch.testing.assert_close(outer_measure(edges, env_edges, env_w), torch.tensor([[0.1, 0.3, 0.5, 0.4]]))


def test_interlevel_loss_zero_when_proposal_covers_and_positive_when_not():
    edges = torch.linspace(0, 1, 17).expand(3, -1).contiguous()
    w = torch.softmax(torch.randn(3, 16), dim=1)
    assert float(interlevel_loss(edges, w, edges, w)) == pytest.approx(0.0, abs=1e-7)
    wrong = torch.roll(w, shifts=8, dims=1)
    assert float(interlevel_loss(edges, w, edges, wrong)) > 1e-3
    # gradients reach only the proposal weights
    prop = wrong.clone().requires_grad_(True)
    final = w.clone().requires_grad_(True)
    interlevel_loss(edges, final, edges, prop).backward()
    assert final.grad is None and prop.grad is not None and prop.grad.abs().sum() > 0


def test_distortion_loss_matches_quadratic_definition():
    edges = torch.sort(torch.rand(4, 13), dim=1).values
    w = torch.rand(4, 12)
    mids = 0.5 * (edges[:, 1:] + edges[:, :-1])
    widths = edges[:, 1:] - edges[:, :-1]
    brute = (
        (w[:, :, None] * w[:, None, :] * (mids[:, :, None] - mids[:, None, :]).abs()).sum((1, 2))
        + (w**2 * widths).sum(1) / 3.0
    ).mean()
    torch.testing.assert_close(distortion_loss(edges, w), brute, rtol=1e-5, atol=1e-7)
    # concentrating the weight lowers the loss
    spread = torch.full((1, 12), 1.0 / 12)
    peaked = torch.zeros(1, 12)
    peaked[0, 5] = 1.0
    e = torch.linspace(0, 1, 13)[None]
    assert float(distortion_loss(e, peaked)) < float(distortion_loss(e, spread))


def test_pdf_sampling_follows_the_histogram():
    edges = torch.linspace(0, 1, 11).expand(2, -1).contiguous()
    w = torch.zeros(2, 10)
    w[:, 3] = 1.0  # all mass in [0.3, 0.4]
    out = pdf_edges(edges, w, 200, jitter=torch.rand(2, 1), padding=0.01)
    assert out.shape == (2, 201)
    assert torch.all(out[:, 1:] >= out[:, :-1])  # sorted
    inside = ((out >= 0.3) & (out <= 0.4)).float().mean()
    assert float(inside) > 0.85  # probability of the bin: 1.01 / 1.1 ~ 0.92
    det = pdf_edges(edges, w, 50, jitter=None)
    assert torch.equal(det[0], det[1])


def test_uniform_edges_and_spacing_round_trip():
    near = torch.tensor([0.1, 0.5])
    far = torch.tensor([100.0, 10.0])
    e = uniform_edges(near, far, 32, jitter=torch.rand(2, 1))
    t = spacing_inv(e)
    torch.testing.assert_close(t[:, 0], near)
    torch.testing.assert_close(t[:, -1], far, rtol=1e-4, atol=1e-3)
    assert torch.all(t[:, 1:] >= t[:, :-1])
    s = torch.rand(1000) * 0.999
    torch.testing.assert_close(spacing(spacing_inv(s)), s, rtol=1e-5, atol=1e-6)
    # half of the spacing range covers the first scene unit
    assert float(spacing(torch.tensor(1.0))) == pytest.approx(0.5)


def test_anneal_weights():
    w = torch.tensor([0.0, 0.25, 0.75])
    assert torch.allclose(anneal_weights(w, 0, 100), torch.tensor([1.0, 1.0, 1.0]))  # w^0: uniform
    assert torch.equal(anneal_weights(w, 100, 100), w)


def test_contraction():
    inside = torch.rand(100, 3) * 2 - 1
    torch.testing.assert_close(contract(inside), inside)
    far = torch.randn(1000, 3) * 100
    c = contract(far)
    assert float(c.abs().max()) <= 2.0 + 1e-6
    u = contract_to_unit(far)
    assert float(u.min()) >= 0.0 and float(u.max()) <= 1.0
    # continuity at the unit cube's surface
    p = torch.tensor([[1.0 + 1e-6, 0.3, -0.2]])
    torch.testing.assert_close(contract(p), p, rtol=1e-5, atol=1e-5)


def test_camera_rays_conventions():
    K = np.array([[100.0, 0, 31.5], [0, 120.0, 23.5], [0, 0, 1]])
    c2w = np.eye(4)
    c2w[:3, 3] = [1.0, 2.0, 3.0]
    o, d, dz = image_rays(K, c2w, 48, 64, torch.device("cpu"))
    assert o.shape == (48 * 64, 3)
    torch.testing.assert_close(d.norm(dim=1), torch.ones(48 * 64))
    # pixel (31, 23) has its centre (31.5, 23.5) on the principal point
    k = 23 * 64 + 31
    torch.testing.assert_close(d[k], torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(o[k], torch.tensor([1.0, 2.0, 3.0]))
    # +u is camera +x (right), +v is camera +y (down); z-depth = distance * dir_z
    assert float(d[k + 1, 0]) > 0 and float(d[k + 64, 1]) > 0
    point = torch.tensor([0.3, -0.2, 2.5])  # camera frame
    u = torch.tensor([100.0 * 0.3 / 2.5 + 31.5])
    v = torch.tensor([120.0 * -0.2 / 2.5 + 23.5])
    o1, d1, dz1 = camera_rays(torch.tensor(K, dtype=torch.float32), torch.eye(4), u, v)
    dist = point.norm()
    torch.testing.assert_close(o1[0] + d1[0] * dist, point, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dist * dz1[0], point[2], rtol=1e-5, atol=1e-5)
