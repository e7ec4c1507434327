"""ksae.checks.substrates: what removed pixels are replaced by. References are built independently of the
code under test: the blur a numpy outer product of a hand-written Gaussian, the ROAD imputation a direct
scipy.sparse solve written from the paper's definition (``helpers.road_direct``).
"""

import numpy as np
import pytest
import torch
from helpers import DT, SIDE, D, object_images, road_direct

import ksae.checks.substrates
import ksae_helpers as kh


def test_blur_of_a_point_is_the_gaussian_and_a_constant_stays_constant():
    sigma = 1.5
    x = torch.zeros(2, D, dtype=DT)
    x[0, 14 * SIDE + 13] = 1.0
    x[1] = 0.4
    out = kh.blur_images(x, sigma).numpy()
    radius = int(np.ceil(kh.BLUR_TRUNCATE * sigma))
    g = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    g /= g.sum()
    expected = np.zeros((SIDE, SIDE))
    expected[14 - radius:14 + radius + 1, 13 - radius:13 + radius + 1] = np.outer(g, g)
    np.testing.assert_allclose(out[0].reshape(SIDE, SIDE), expected, atol=1e-12)
    np.testing.assert_allclose(out[1], 0.4, atol=1e-12)


def test_road_imputation_matches_a_direct_sparse_solve():
    x = object_images(3, seed=2, dtype=DT)
    g = torch.Generator().manual_seed(0)
    removed = torch.rand(3, D, generator=g) < torch.tensor([[0.3], [0.7], [0.97]])  # sparse holes to nearly all
    removed[0, :SIDE] = True  # a whole border row: renormalised weights
    ours = kh.road_impute(x, removed, noise=0.0, tol=1e-12)
    for i in range(3):
        ref = road_direct(x[i].numpy(), removed[i].numpy())
        np.testing.assert_allclose(ours[i].numpy(), ref, atol=1e-9)
    # A warm start changes nothing but the iterations; kept pixels are untouched.
    warm = kh.road_impute(x, removed, noise=0.0, tol=1e-12, init=torch.rand(3, D, dtype=DT))
    np.testing.assert_allclose(warm.numpy(), ours.numpy(), atol=1e-9)
    assert torch.equal(ours[~removed], x[~removed])


def test_road_solver_reading_convergence_less_often_reaches_the_same_solution():
    # CUDA reads convergence every ROAD_CHECK_EVERY_CUDA iterations (each read waits for the GPU); rows then
    # iterate a few steps past convergence, which only moves them closer to the solution
    x = object_images(40, seed=3, dtype=DT)
    removed = torch.rand(40, D, generator=torch.Generator().manual_seed(1)) < torch.linspace(0.05, 0.95, 40)[:, None]
    free = removed.to(DT)
    kept, start = x * (1 - free), torch.zeros_like(free)
    exact = torch.stack([torch.as_tensor(road_direct(x[i].numpy(), removed[i].numpy())) for i in range(40)])
    each = ksae.checks.substrates._road_cg(kept, free, start, 1e-6, 1000, check_every=1)
    sparse = ksae.checks.substrates._road_cg(kept, free, start, 1e-6, 1000, check_every=kh.ROAD_CHECK_EVERY_CUDA)
    assert kh.ROAD_CHECK_EVERY_CUDA > 1
    err_each, err_sparse = ((each - exact) * free).abs().amax(), ((sparse - exact) * free).abs().amax()
    assert err_sparse <= err_each and err_each < 1e-4 and not torch.equal(each, sparse)


def test_road_chunks_solve_the_same_system():
    # CUDA solves ROAD_CHUNK_CUDA images together (launch-bound there), the CPU ROAD_CHUNK (cache-bound): the
    # chunking changes which rows iterate together, never the solution
    x = object_images(12, seed=4, dtype=DT)
    removed = torch.rand(12, D, generator=torch.Generator().manual_seed(2)) < torch.linspace(0.1, 0.9, 12)[:, None]
    exact = torch.stack([torch.as_tensor(road_direct(x[i].numpy(), removed[i].numpy())) for i in range(12)])
    for chunk in (1, 5, 12, 100):
        out = kh.road_impute(x, removed, noise=0.0, tol=1e-12, chunk=chunk)
        np.testing.assert_allclose(out.numpy(), exact.numpy(), atol=1e-9)
    assert kh.ROAD_CHUNK_CUDA > kh.ROAD_CHUNK
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="chunk must be"):
            kh.road_impute(x, removed, chunk=bad)


def test_road_hand_cases_and_noise():
    x = torch.zeros(2, D, dtype=DT)
    x[0] = torch.arange(D, dtype=DT) / D
    removed = torch.zeros(2, D, dtype=torch.bool)
    removed[0, 0] = True  # a corner: neighbours right (1/6), below (1/6), diagonal (1/12), renormalised
    removed[0, 5 * SIDE + 5] = True  # an interior pixel surrounded by kept ones
    removed[1] = True  # nothing kept: the minimum-norm solution 0
    out = kh.road_impute(x, removed, noise=0.0, tol=1e-13)
    corner = (x[0, 1] / 6 + x[0, SIDE] / 6 + x[0, SIDE + 1] / 12) / (5 / 12)
    assert float(out[0, 0]) == pytest.approx(float(corner), abs=1e-12)
    centre = 5 * SIDE + 5
    nb = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    mean = sum(x[0, centre + dr * SIDE + dc] * (1 / 12 if dr and dc else 1 / 6) for dr, dc in nb)
    assert float(out[0, centre]) == pytest.approx(float(mean), abs=1e-12)
    assert (out[1] == 0).all()
    noisy = kh.road_impute(x, removed, noise=0.05, seed=3, tol=1e-13)
    assert float((noisy[1] - out[1]).std()) == pytest.approx(0.05, rel=0.1)
    assert torch.equal(noisy[~removed], x[~removed])
    assert torch.equal(noisy, kh.road_impute(x, removed, noise=0.05, seed=3, tol=1e-13))  # seeded
