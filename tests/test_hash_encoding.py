"""Hash encoding: layout, the vectorised PyTorch backend against a direct per-corner computation,
gradients, and (where a GPU with tinycudann exists) tinycudann against the PyTorch reference."""

import math

import numpy as np
import pytest
import torch

from lerf_ros.field.hash_encoding import (
    HASH_PRIMES,
    HashEncoding,
    HashGridLayout,
    hash_grid_forward_torch,
    hash_grid_indices,
    tcnn_available,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def per_corner_reference(x: np.ndarray, table: np.ndarray, lay: HashGridLayout) -> np.ndarray:
    """Direct computation: for every point, level and corner, the table row by the textbook rules
    (uint32 arithmetic), times the trilinear weight. Plain Python loops; float64."""
    n = x.shape[0]
    fpl = lay.features_per_level
    rows = table.reshape(-1, fpl)
    out = np.zeros((n, lay.num_levels * fpl))
    for i in range(n):
        for lev in range(lay.num_levels):
            scale = lay.scales[lev]
            res = lay.resolutions[lev]
            size = lay.sizes[lev]
            pos = [float(x[i, d]) * scale + 0.5 for d in range(3)]
            base = [math.floor(p) for p in pos]
            frac = [p - b for p, b in zip(pos, base)]
            acc = np.zeros(fpl)
            for corner in range(8):
                c = [base[d] + ((corner >> d) & 1) for d in range(3)]
                w = 1.0
                for d in range(3):
                    w *= frac[d] if (corner >> d) & 1 else 1.0 - frac[d]
                if res**3 <= size:  # dense level
                    idx = (c[0] + c[1] * res + c[2] * res * res) % size
                else:  # spatial hash, uint32
                    h = 0
                    for d in range(3):
                        h ^= (c[d] * HASH_PRIMES[d]) & 0xFFFFFFFF
                    idx = h % size
                acc += w * rows[lay.offsets[lev] + idx]
            out[i, lev * fpl : (lev + 1) * fpl] = acc
    return out


def test_layout_by_hand():
    # 4 levels, base 4, max 32 -> growth 2: scales 3, 7, 15, 31; resolutions 4, 8, 16, 32.
    lay = HashGridLayout.build(
        num_levels=4, features_per_level=2, log2_hashmap_size=12, base_resolution=4, max_resolution=32
    )
    assert lay.per_level_scale == pytest.approx(2.0)
    assert lay.scales == pytest.approx((3.0, 7.0, 15.0, 31.0))
    assert lay.resolutions == (4, 8, 16, 32)
    # dense sizes 64, 512, 4096 fit a 4096-entry table; 32^3 does not -> hashed, 4096 entries
    assert lay.sizes == (64, 512, 4096, 4096)
    assert lay.hashed == (False, False, False, True)
    assert lay.offsets == (0, 64, 576, 4672, 8768)
    assert lay.num_params == 8768 * 2 and lay.output_dim == 8
    # sizes are padded to multiples of 8 (tinycudann): resolution 3 -> 27 -> 32
    lay2 = HashGridLayout.build(2, 1, 10, 4, 5)
    assert lay2.resolutions[0] == 4 and lay2.sizes[0] == 64
    odd = HashGridLayout.build(1, 1, 10, 3, 3)
    assert odd.resolutions == (3,) and odd.sizes == (32,)


def test_reference_default_sizes():
    # nerfacto geometry grid: 16 levels 16..2048, 2^19 entries: coarse levels dense, fine ones hashed
    lay = HashGridLayout.build(16, 2, 19, 16, 2048)
    assert lay.resolutions[0] == 16 and lay.resolutions[-1] == 2048
    assert lay.hashed[0] is False and lay.hashed[-1] is True
    first_hashed = lay.hashed.index(True)
    assert lay.resolutions[first_hashed] ** 3 > 2**19 >= lay.resolutions[first_hashed - 1] ** 3
    assert all(s == 2**19 for s, h in zip(lay.sizes, lay.hashed) if h)


@pytest.mark.parametrize("fpl,log2", [(2, 10), (4, 9), (8, 12), (1, 8)])
def test_torch_backend_matches_per_corner_reference(fpl, log2):
    torch.manual_seed(fpl)
    lay = HashGridLayout.build(
        num_levels=6, features_per_level=fpl, log2_hashmap_size=log2, base_resolution=3, max_resolution=90
    )
    assert any(lay.hashed) and not all(lay.hashed)  # both code paths are exercised
    table = torch.randn(lay.num_params, dtype=torch.float64)
    x = torch.rand(40, 3, dtype=torch.float64)
    x[0] = torch.tensor([0.0, 0.0, 0.0])  # corners of the domain
    x[1] = torch.tensor([1.0, 1.0, 1.0])
    x[2] = torch.tensor([0.0, 1.0, 0.5])
    got = hash_grid_forward_torch(x, table, lay).numpy()
    want = per_corner_reference(x.numpy(), table.numpy(), lay)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_weights_sum_to_one_and_rows_in_range():
    lay = HashGridLayout.build(8, 2, 11, 4, 300)
    x = torch.rand(500, 3)
    rows, w = hash_grid_indices(x, lay)
    assert rows.shape == (8, 500, 8) and w.shape == (8, 500, 8)  # (levels, points, corners)
    torch.testing.assert_close(w.sum(-1), torch.ones(8, 500))
    offsets = torch.tensor(lay.offsets)
    for lev in range(lay.num_levels):
        r = rows[lev].long()
        assert int(r.min()) >= lay.offsets[lev] and int(r.max()) < lay.offsets[lev + 1]
    assert offsets[-1] == lay.num_entries


def test_gradcheck_table_and_positions():
    torch.manual_seed(0)
    lay = HashGridLayout.build(3, 2, 6, 2, 12)  # small: dense + hashed levels
    table = torch.randn(lay.num_params, dtype=torch.float64, requires_grad=True)
    # keep positions away from cell boundaries so the function is smooth at them
    x = torch.rand(6, 3, dtype=torch.float64) * 0.8 + 0.1
    assert torch.autograd.gradcheck(lambda t: hash_grid_forward_torch(x, t, lay), (table,), eps=1e-6, atol=1e-7)
    xg = x.clone().requires_grad_(True)
    t_fixed = table.detach()
    assert torch.autograd.gradcheck(lambda p: hash_grid_forward_torch(p, t_fixed, lay), (xg,), eps=1e-7, atol=1e-5)


def test_fast_table_gradient_equals_autograd_gradient():
    torch.manual_seed(1)
    lay = HashGridLayout.build(6, 4, 9, 4, 128)
    table = torch.randn(lay.num_params, requires_grad=True)
    x = torch.rand(3000, 3)
    g_out = torch.randn(3000, lay.output_dim)
    # fast path (x does not require grad): custom backward with a histogram scatter
    (hash_grid_forward_torch(x, table, lay) * g_out).sum().backward()
    fast = table.grad.clone()
    table.grad = None
    # reference path: plain autograd through a gather
    (hash_grid_forward_torch(x.clone().requires_grad_(True), table, lay) * g_out).sum().backward()
    torch.testing.assert_close(fast, table.grad, rtol=1e-4, atol=1e-4)
    assert fast.abs().sum() > 0


def test_module_trains_to_fit_a_function():
    torch.manual_seed(0)
    enc = HashEncoding(
        num_levels=8, features_per_level=2, log2_hashmap_size=12, base_resolution=4, max_resolution=128, backend="torch"
    )
    head = torch.nn.Linear(enc.output_dim, 1)
    opt = torch.optim.Adam(list(enc.parameters()) + list(head.parameters()), lr=1e-2)
    target = lambda p: torch.sin(6 * p[:, 0]) * torch.cos(4 * p[:, 1]) + p[:, 2]  # noqa: E731
    x_test = torch.rand(2000, 3)
    for _ in range(300):
        x = torch.rand(2048, 3)
        loss = (head(enc(x))[:, 0] - target(x)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        err = (head(enc(x_test))[:, 0] - target(x_test)).square().mean()
    assert float(err) < 0.01


def test_bad_input_raises():
    enc = HashEncoding(4, 2, 10, 4, 32, backend="torch")
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        enc(torch.rand(10, 2))
    with pytest.raises(ValueError, match="features_per_level"):
        HashEncoding(4, 3, 10, 4, 32)
    with pytest.raises(ValueError, match="backend"):
        HashEncoding(4, 2, 10, 4, 32, backend="cuda")
    if not tcnn_available():
        with pytest.raises(RuntimeError, match="tinycudann"):
            HashEncoding(4, 2, 10, 4, 32, backend="tcnn")(torch.rand(4, 3))


def test_auto_backend_on_cpu_is_torch_and_survives_deepcopy():
    import copy

    enc = HashEncoding(4, 2, 10, 4, 32)
    assert enc.active_backend(torch.device("cpu")) == "torch"
    x = torch.rand(100, 3)
    clone = copy.deepcopy(enc)
    torch.testing.assert_close(clone(x), enc(x), rtol=0, atol=0)


@pytest.mark.skipif(not tcnn_available(), reason="needs CUDA and tinycudann")
def test_tcnn_matches_torch_reference():
    torch.manual_seed(0)
    for fpl, log2 in ((2, 19), (8, 14)):
        enc = HashEncoding(16, fpl, log2, 16, 2048, backend="auto").cuda()
        with torch.no_grad():
            enc.params.uniform_(-1.0, 1.0)
        x = torch.rand(20000, 3, device="cuda")
        got = enc(x)
        assert enc.active_backend(x.device) == "tcnn"
        want = hash_grid_forward_torch(x, enc.params, enc.layout)
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
        g = torch.randn_like(got)
        (got * g).sum().backward()
        g_tcnn = enc.params.grad.clone()
        enc.params.grad = None
        (hash_grid_forward_torch(x, enc.params, enc.layout) * g).sum().backward()
        torch.testing.assert_close(g_tcnn, enc.params.grad, rtol=1e-2, atol=1e-2)
