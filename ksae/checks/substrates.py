"""What replaces removed pixels: zero, a blurred copy, or ROAD's noisy linear imputation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._util import IMAGE_SIDE, _check_finite, _check_float, _check_instance, _check_int
from ..data import as_flat_images

# --- faithfulness under three substrates, MoRF and LeRF --------------------------------------------------
# Removing pixel set S from image x replaces x[S] by a substrate: "zero" (black, which is also IG's
# baseline), "blur" (a Gaussian-blurred copy of x) or "road" (ROAD's noisy linear imputation, Rong et
# al. 2022: the removed pixels solve "each equals the weighted mean of its in-image neighbours", plus
# noise). Orders: most relevant first (MoRF) and least relevant first (LeRF). Insertion of the top n
# pixels into the substrate's start image is the same image as removing the other P - n pixels, so the
# insertion curve of an order is its LeRF deletion curve read backwards (and has the same AUC).
SUBSTRATES = ("zero", "blur", "road")


RANKINGS = ("signed", "abs")  # order maps by signed value or by |value|


BLUR_SIGMA = 2.0  # pixels; std of the Gaussian blur substrate


BLUR_TRUNCATE = 3.0  # the blur kernel ends at this many sigmas


ROAD_NOISE = 0.01  # std of the Gaussian noise added to ROAD-imputed pixels (ROAD's and Quantus' default)


ROAD_DIRECT_WEIGHT = 1 / 6  # ROAD's weight of each of the 4 direct neighbours


ROAD_DIAGONAL_WEIGHT = 1 / 12  # ROAD's weight of each of the 4 diagonal neighbours
# ROAD solver stops when every removed pixel is within ROAD_TOL of its neighbours' weighted mean. Measured on
# the trained model (30 images, 32 orderings, 98 pixels per step) against a 1e-7 solve: imputed pixels off
# by 2e-5 on average (max 3e-3), per-curve AUCs by 6e-4 rms (bias 1e-5), while redrawing ROAD's own noise
# (std ROAD_NOISE) moves them by 1e-2 rms. 1e-3 would be 10-20 % faster but AUCs off by up to 3e-2.


ROAD_TOL = 1e-4


ROAD_MAX_ITER = 1000  # ROAD solver: conjugate-gradient iterations at most (a cap; convergence is checked)


ROAD_COMPACT = 4  # ROAD solver: converged rows are dropped once they are 1 / this of those left


ROAD_CHECK_EVERY_CUDA = 8  # ROAD solver on CUDA: convergence is read (a host sync) every this many iterations


ROAD_GRID = IMAGE_SIDE + 2  # ROAD solver: side of its zero-bordered grids


ROAD_CHUNK = 256  # ROAD solver: images solved together (~0.8 MB per [R, 28, 28] array: the solve stays in cache)


ROAD_CHUNK_CUDA = 16384  # ROAD solver on CUDA: images solved together (launches, not cache, bound it there)


ROAD_PIXELS_PER_STEP = 98  # faithfulness_suite's ROAD step: 12.5 % of the pixels (ROAD evaluates ~10 % steps)


FAITH_ROWS = 8192  # rows (image x ordering) evaluated together in the faithfulness curves


FAITH_ALPHA = 0.05  # significance level of the "beats the random control" verdicts


def blur_images(x: torch.Tensor, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """Gaussian blur (std ``sigma`` pixels, reflected borders) of every image: ``x: [N, 784]`` -> ``[N, 784]``."""
    flat, _ = as_flat_images(x, name="x")
    _check_float("sigma", sigma, low=0.0, low_open=True)
    radius = min(IMAGE_SIDE - 1, max(1, math.ceil(BLUR_TRUNCATE * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=flat.dtype, device=flat.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    img = F.pad(flat.reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE), (radius,) * 4, mode="reflect")
    img = F.conv2d(img, kernel.reshape(1, 1, 1, -1))
    return F.conv2d(img, kernel.reshape(1, 1, -1, 1)).reshape(len(flat), -1)


def _road_pad(v: torch.Tensor) -> torch.Tensor:
    """Images ``v: [R, 784]`` -> zero-bordered grids ``[R, ROAD_GRID ** 2]`` (flat), the solver's layout."""
    return F.pad(v.reshape(-1, IMAGE_SIDE, IMAGE_SIDE), (1, 1, 1, 1)).reshape(len(v), -1)


def _road_unpad(v: torch.Tensor) -> torch.Tensor:
    """Zero-bordered grids ``v: [R, ROAD_GRID ** 2]`` -> images ``[R, 784]``."""
    return v.view(-1, ROAD_GRID, ROAD_GRID)[:, 1:-1, 1:-1].reshape(len(v), -1)


def _road_neighbour_sum(v: torch.Tensor) -> torch.Tensor:
    """ROAD's weighted neighbour sum of zero-bordered grids ``v: [R, ROAD_GRID ** 2]`` (``_road_pad``;
    outside the image counts as absent) -> ``[R, ROAD_GRID ** 2]``, meaningless on the border.

    The weights (1/6 direct, 1/12 diagonal) are ``(b b^T - 4 e e^T) / 12`` with ``b = (1, 2, 1)``: a
    separable pass, minus the centre. On the whole batch as one flat array a step to the next column is
    an offset of 1 and to the next row one of ``ROAD_GRID``, so every term is a contiguous slice.
    """
    assert ROAD_DIRECT_WEIGHT == 2 * ROAD_DIAGONAL_WEIGHT, "the separable form needs direct = 2 x diagonal"
    q, g = v.reshape(-1), ROAD_GRID
    rows = torch.add(q[:-2] + q[2:], q[1:-1], alpha=2)  # centred on q[1:-1]
    both = torch.add(rows[:-2 * g] + rows[2 * g:], rows[g:-g], alpha=2)  # centred on q[g + 1:-g - 1]
    return F.pad((both - 4 * q[g + 1:-g - 1]) * ROAD_DIAGONAL_WEIGHT, (g + 1, g + 1)).view(v.shape)


def _check_removed(removed, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(removed, torch.Tensor) or removed.dtype != torch.bool:
        raise ValueError(f"removed must be a bool tensor, got {getattr(removed, 'dtype', type(removed).__name__)}")
    if removed.shape != x.shape:
        raise ValueError(f"removed must have the images' shape {list(x.shape)}, got {list(removed.shape)}")
    return removed.to(x.device)


def _road_cg(kept: torch.Tensor, free: torch.Tensor, v: torch.Tensor, tol: float, max_iter: int,
             check_every: int | None = None) -> torch.Tensor:
    """Jacobi-preconditioned conjugate gradients for ROAD's system ``D v - free * W v = free * W kept``
    (``kept, free, v: [R, 784]``: kept pixels (0 where removed), 1 on the removed pixels, the start (0
    off ``free``)) -> ``v: [R, 784]``. A row leaves the iteration once every pixel's residual over its
    degree is at most ``tol``, so one slow row does not keep the others iterating. Convergence is read every
    ``check_every`` iterations (default: each on the CPU, ``ROAD_CHECK_EVERY_CUDA`` on CUDA, where each read
    waits for the GPU; a converged row iterating on only moves closer to the solution)."""
    check_every = check_every or (ROAD_CHECK_EVERY_CUDA if v.is_cuda else 1)
    interior = _road_pad(torch.ones_like(v[:1]))
    degree = _road_neighbour_sum(interior)  # total in-image neighbour weight of each pixel
    inv_degree = torch.where(interior > 0, 1 / degree, 0)
    kept, free, v = _road_pad(kept), _road_pad(free), _road_pad(v)
    out, rows = v.clone(), torch.arange(len(v), device=v.device)
    r = free * _road_neighbour_sum(kept) - (degree * v - free * _road_neighbour_sum(v))
    z = r * inv_degree
    p, rz = z, torch.linalg.vecdot(r, z)
    for iteration in range(max_iter):
        done = z.abs().amax(1) <= tol if iteration % check_every == 0 else None
        if done is not None and done.sum() * ROAD_COMPACT >= len(rows):  # drop converged rows: a fair share
            out[rows[done]] = v[done]
            left = ~done
            rows, free, v, r, z, p, rz = rows[left], free[left], v[left], r[left], z[left], p[left], rz[left]
            if not len(rows):
                break
        ap = degree * p - free * _road_neighbour_sum(p)
        pap = torch.linalg.vecdot(p, ap)
        alpha = torch.where(pap > 0, rz / torch.where(pap > 0, pap, 1), 0)[:, None]
        v, r = torch.addcmul(v, alpha, p), torch.addcmul(r, -alpha, ap)
        z = r * inv_degree
        rz_new = torch.linalg.vecdot(r, z)
        beta = torch.where(rz > 0, rz_new / torch.where(rz > 0, rz, 1), 0)[:, None]
        p, rz = torch.addcmul(z, beta, p), rz_new
    out[rows] = v  # rows left after max_iter iterations (their last one may have converged them)
    return _road_unpad(out)


@torch.no_grad()
def road_impute(x: torch.Tensor, removed: torch.Tensor, noise: float = ROAD_NOISE, seed: int = 0,
                init: torch.Tensor | None = None, tol: float = ROAD_TOL, max_iter: int = ROAD_MAX_ITER,
                generator: torch.Generator | None = None, chunk: int | None = None) -> torch.Tensor:
    """ROAD's noisy linear imputation (Rong et al. 2022), all images at once: ``x: [N, 784]``,
    ``removed: [N, 784]`` bool -> ``[N, 784]`` with kept pixels unchanged and every removed pixel the
    weighted mean of its in-image neighbours (1/6 direct, 1/12 diagonal, renormalised at the border),
    removed or not, plus Gaussian noise of std ``noise`` (CPU generator: ``generator``, else ``seed``).

    The removed pixels solve a sparse symmetric positive definite system (``D v - W v = W x_kept``),
    solved by Jacobi-preconditioned conjugate gradients (``_road_cg``) in chunks of ``chunk`` images (default
    ``ROAD_CHUNK`` on the CPU, ``ROAD_CHUNK_CUDA`` on CUDA) until each image's every residual is below
    ``tol`` (``init: [N, 784]``, e.g. the previous step's imputation, warm-starts it). An image with every
    pixel removed has nothing to impute from: it gets the system's minimum-norm solution, 0 (plus noise).
    """
    flat, _ = as_flat_images(x, name="x")
    removed = _check_removed(removed, flat)
    _check_float("noise", noise, low=0.0)
    _check_int("seed", seed, low=0)
    _check_float("tol", tol, low=0.0, low_open=True)
    _check_int("max_iter", max_iter, low=1)
    chunk = (ROAD_CHUNK_CUDA if flat.is_cuda else ROAD_CHUNK) if chunk is None else chunk
    _check_int("chunk", chunk, low=1)
    if init is not None and (not isinstance(init, torch.Tensor) or init.shape != flat.shape):
        raise ValueError(f"init must be a tensor of shape {list(flat.shape)}, got {getattr(init, 'shape', init)}")
    if init is not None:
        _check_finite("init", init)
    if generator is not None:
        _check_instance("generator", generator, torch.Generator)
    free = removed.to(flat.dtype)  # 1 on the unknowns
    kept = flat * (1 - free)
    v = torch.zeros_like(free) if init is None else init.to(flat) * free
    v = v * (free.sum(1, keepdim=True) < free.shape[1]).to(v)  # nothing kept: start (and stay) at 0
    for i in range(0, len(v), chunk):
        part = slice(i, i + chunk)
        v[part] = _road_cg(kept[part], free[part], v[part], tol, max_iter)
    if noise > 0:
        if generator is None:
            generator = torch.Generator().manual_seed(seed)
        v = v + noise * torch.randn(v.shape, generator=generator, dtype=torch.float32).to(v)
    return kept + free * v


def _substrate(x: torch.Tensor, substrate: str) -> torch.Tensor | None:
    """What removed pixels become, ``[N, 784]``, for the fixed substrates; None for ROAD (mask-dependent)."""
    return {"zero": lambda: torch.zeros_like(x), "blur": lambda: blur_images(x), "road": lambda: None}[substrate]()
