"""Integrated gradients, simple gradients, SmoothGrad, decoder-weighted, input x gradient;
``attribute_all`` (with the perturbation family of ``ksae.perturbation``). Names follow Captum's ``attribute()``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ._util import _check_int
from .attribution_base import (
    DEFAULT_INTERNAL_BATCH,
    _baseline,
    _output_fn,
    _prepare,
    _rows_per_pass,
    _score,
)
from .config import IG_METHODS
from .models import SparseCodePipeline
from .perturbation import (
    feature_ablation,
    kernel_shap,
    lime,
    occlusion,
    shapley_value_sampling,
    superpixel_grid,
)

if TYPE_CHECKING:
    from .config import Config
    from .models import SparseCodeClassifier


METHOD_LABELS = {
    "integrated": "Integrated gradients",
    "simple": "Simple gradients",
    "smoothgrad": "SmoothGrad",
    "decoder": "Decoder-weighted",
    "input_x_gradient": "Input × gradient",
    "input_x_smoothgrad": "Input × SmoothGrad",
    "occlusion": "Occlusion",  # the perturbation family (ksae.perturbation)
    "feature_ablation": "Feature ablation",
    "shapley": "Shapley sampling",  # Shapley value sampling
    "kernel_shap": "KernelSHAP",
    "lime": "LIME",
}


METHOD_FAMILIES = {  # gradient: reads gradients (or DeepLIFT's rescale multipliers); perturbation: changes the input
    "gradient": ("integrated", "simple", "smoothgrad", "decoder", "input_x_gradient", "input_x_smoothgrad"),
    "perturbation": ("occlusion", "feature_ablation", "shapley", "kernel_shap", "lime"),
}


_SAMPLING_SEED_OFFSETS = {"shapley": 1, "kernel_shap": 2, "lime": 3}  # attribute_all draws each sampling
# perturbation method from seed + its offset: streams independent of each other and of SmoothGrad's (the seed)


def ig_quadrature(n_steps: int, method: str = "gausslegendre") -> tuple[torch.Tensor, torch.Tensor]:
    """Points ``alphas: [n_steps]`` in [0, 1] and weights ``[n_steps]`` for integrating over [0, 1].

    ``gausslegendre`` and the ``riemann_left/right/middle`` rules equal Captum's. ``riemann_trapezoid``
    is the textbook rule (spacing 1/(n-1), ends halved, weights sum to 1); Captum's weights sum to
    (n-1)/n, so its trapezoid attributions are ours times (n-1)/n.
    """
    _check_int("n_steps", n_steps, low=1)
    if method not in IG_METHODS:
        raise ValueError(f"method must be one of {IG_METHODS}, got {method!r}")
    n = n_steps
    if method == "gausslegendre":
        nodes, w = np.polynomial.legendre.leggauss(n)
        return torch.from_numpy(0.5 * (nodes + 1)), torch.from_numpy(0.5 * w)
    if n < 2:
        raise ValueError(f"n_steps must be >= 2 for {method}, got {n}")
    weights = torch.full((n,), 1.0 / n, dtype=torch.float64)
    if method == "riemann_trapezoid":
        weights = torch.full((n,), 1.0 / (n - 1), dtype=torch.float64)
        weights[[0, -1]] /= 2
        return torch.linspace(0, 1, n, dtype=torch.float64), weights
    start = {"riemann_left": 0.0, "riemann_right": 1.0 / n, "riemann_middle": 0.5 / n}[method]
    return start + torch.arange(n, dtype=torch.float64) / n, weights


def _grad(fn, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``d fn(x)[i] / d x[i]`` for every row: ``x: [N, D]`` -> ``[N, D]``."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        return torch.autograd.grad(fn(x, target).sum(), x)[0]


def _line_integral(fn, start: torch.Tensor, direction: torch.Tensor, target: torch.Tensor,
                   alphas: torch.Tensor, weights: torch.Tensor, rows: int) -> torch.Tensor:
    """``sum_s w_s * grad fn(start + alpha_s * direction)`` for ``start, direction: [B, P]`` -> ``[B, P]``.

    The path points of a chunk of images go through one batched forward/backward of at most ``rows`` rows.
    """
    alphas, weights = alphas.to(start), weights.to(start)
    total = torch.zeros_like(start)
    imgs_per = max(1, rows // len(alphas))
    steps_per = max(1, rows // min(imgs_per, len(start)))
    for i in range(0, len(start), imgs_per):
        s0, d, t = start[i:i + imgs_per], direction[i:i + imgs_per], target[i:i + imgs_per]
        for s in range(0, len(alphas), steps_per):
            a, w = alphas[s:s + steps_per], weights[s:s + steps_per]
            points = s0 + a[:, None, None] * d  # [steps, images, P]
            g = _grad(fn, points.reshape(-1, start.shape[1]), t.repeat(len(a)))
            total[i:i + imgs_per] += torch.einsum("s,sbp->bp", w, g.view(len(a), len(s0), -1))
    return total


def _path_integral(model: nn.Module, output: str, x: torch.Tensor, baseline: torch.Tensor, target: torch.Tensor,
                   alphas: torch.Tensor, weights: torch.Tensor, rows: int) -> torch.Tensor:
    """``sum_s w_s * grad F(baseline + alpha_s (x - baseline))`` for ``x, baseline: [B, D]`` -> ``[B, D]``.

    Models with an affine first layer (``affine_split() -> (A, c, head)``, ``F(x) = head(x A^T + c)``:
    our pipeline and classifier) are integrated in that layer's output space, exactly: the path maps to
    the straight line ``pre(b) + alpha (x - b) A^T`` and ``grad_x F = grad_pre F @ A``, so ``A`` is
    applied twice per image instead of twice per path point. Other models use plain autograd.
    """
    split = getattr(model, "affine_split", None)
    if split is None:
        return _line_integral(_output_fn(model, output), baseline, x - baseline, target, alphas, weights, rows)
    A, c, head = split()
    with torch.no_grad():
        A, c = A.detach(), c.detach()
        start, direction = F.linear(baseline, A, c), F.linear(x - baseline, A)
    g_pre = _line_integral(lambda p, t: _score(head(p), t, output), start, direction, target, alphas, weights, rows)
    return g_pre @ A


def integrated_gradients(model: nn.Module, inputs: torch.Tensor, target, baselines: torch.Tensor | None = None,
                         n_steps: int = 50, method: str = "gausslegendre", output: str = "logit",
                         internal_batch_size: int | None = None, return_convergence_delta: bool = False):
    """Integrated gradients (Sundararajan et al. 2017) of the target logit, from a zero image by default.

    ``attr = (x - x0) * sum_s w_s grad F(x0 + alpha_s (x - x0))`` with the quadrature of ``method``.
    ``inputs: [B, 784]`` (or image-shaped), ``target``: int or ``[B]``, ``baselines``: same shape as
    ``inputs`` or one image (default zeros). With ``return_convergence_delta`` also returns, per image,
    ``delta: [B] = sum(attr) - (F(x) - F(x0))``; top-k makes F discontinuous along the path, so delta
    need not vanish as n_steps grows.
    """
    x, shape, target, fn = _prepare(model, inputs, target, output)
    base = torch.zeros_like(x) if baselines is None else _baseline(baselines, x)
    alphas, weights = ig_quadrature(n_steps, method)
    grads = _path_integral(model, output, x, base, target, alphas, weights, _rows_per_pass(internal_batch_size))
    attr = (x - base) * grads
    if not return_convergence_delta:
        return attr.reshape(shape)
    with torch.no_grad():
        delta = attr.sum(1) - (fn(x, target) - fn(base, target))
    return attr.reshape(shape), delta


def simple_gradients(model: nn.Module, inputs: torch.Tensor, target, abs: bool = False,  # noqa: A002
                     output: str = "logit", internal_batch_size: int | None = None) -> torch.Tensor:
    """Gradient of the target logit w.r.t. each pixel, ``dF/dx: [B, 784]`` (signed; ``abs=True`` for |.|)."""
    x, shape, target, fn = _prepare(model, inputs, target, output)
    rows = _rows_per_pass(internal_batch_size)
    g = torch.cat([_grad(fn, x[i:i + rows], target[i:i + rows]) for i in range(0, len(x), rows)])
    return (g.abs() if abs else g).reshape(shape)


def smoothgrad(model: nn.Module, inputs: torch.Tensor, target, nt_samples: int = 25, stdevs: float = 0.1,
               abs: bool = False, output: str = "logit", generator: torch.Generator | None = None,  # noqa: A002
               seed: int | None = None, internal_batch_size: int | None = None) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017): mean gradient over ``nt_samples`` copies of each image with
    Gaussian noise of std ``stdevs`` (pixels are in [0, 1]). Pass ``seed`` or ``generator`` for
    reproducible noise; noise is drawn on the CPU in float32 (then cast to the inputs' dtype),
    image-major (``[B, nt_samples, D]``), so it is the same on every device and in every precision.
    ``abs=True`` averages absolute gradients (Captum's Saliency default).
    """
    x, shape, target, fn = _prepare(model, inputs, target, output)
    _check_int("nt_samples", nt_samples, low=1)
    if seed is not None:
        _check_int("seed", seed, low=0)
    if isinstance(stdevs, bool) or not (isinstance(stdevs, (int, float)) and math.isfinite(stdevs) and stdevs >= 0):
        raise ValueError(f"stdevs must be a finite number >= 0, got {stdevs!r}")
    if generator is None:
        generator = torch.Generator()
        if seed is None:
            generator.seed()  # fresh entropy; torch's global RNG is left alone
        else:
            generator.manual_seed(seed)
    rows = _rows_per_pass(internal_batch_size)
    imgs_per = max(1, rows // nt_samples)
    # Signed maps of a model with an affine first layer average the gradient in that layer's output
    # space and map the mean back once per image (the mean commutes with the linear map A).
    split = None if abs else getattr(model, "affine_split", None)
    if split is not None:
        A, c, head = split()
        A, c = A.detach(), c.detach()
    out = []
    for i in range(0, len(x), imgs_per):
        xi, ti = x[i:i + imgs_per], target[i:i + imgs_per].repeat_interleave(nt_samples)
        noise = torch.randn((len(xi), nt_samples, x.shape[1]), generator=generator, dtype=torch.float32)
        noisy = (xi[:, None] + stdevs * noise.to(xi)).reshape(-1, x.shape[1])
        if split is None:
            g = _grad(fn, noisy, ti).view(len(xi), nt_samples, -1)
            out.append((g.abs() if abs else g).mean(1))
            continue
        with torch.no_grad():
            pre = F.linear(noisy, A, c)
        g_pre = _grad(lambda p, t: _score(head(p), t, output), pre, ti)
        out.append(g_pre.view(len(xi), nt_samples, -1).mean(1) @ A)
    return torch.cat(out).reshape(shape)


def input_x_gradient(model: nn.Module, inputs: torch.Tensor, target, output: str = "logit",
                     internal_batch_size: int | None = None) -> torch.Tensor:
    """Input times gradient (Shrikumar et al. 2016; Captum's ``InputXGradient``): ``x * dF/dx``, shaped
    like ``inputs: [B, 784]`` (or image-shaped). Separates the x-input factor of IG from the gradient's."""
    return _times_input(inputs, simple_gradients(model, inputs, target, output=output,
                                                 internal_batch_size=internal_batch_size))


def input_x_smoothgrad(model: nn.Module, inputs: torch.Tensor, target, nt_samples: int = 25, stdevs: float = 0.1,
                       output: str = "logit", generator: torch.Generator | None = None, seed: int | None = None,
                       internal_batch_size: int | None = None) -> torch.Tensor:
    """Input times signed SmoothGrad: ``x * smoothgrad(x)``, shaped like ``inputs: [B, 784]`` (same noise
    as ``smoothgrad`` with the same ``seed``/``generator``)."""
    return _times_input(inputs, smoothgrad(model, inputs, target, nt_samples=nt_samples, stdevs=stdevs, output=output,
                                           generator=generator, seed=seed, internal_batch_size=internal_batch_size))


def _times_input(inputs: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """The x-input maps: ``inputs * gradients`` (both ``[B, 784]`` or image-shaped), e.g. input x gradient from
    a simple-gradient map already computed (``attribute_all`` computes each gradient map once)."""
    return inputs * gradients


UNIT_RULES = ("rescale", "integrated")


@torch.no_grad()
def rescale_contributions(clf: SparseCodeClassifier, z: torch.Tensor, target: torch.Tensor, output: str = "logit",
                          n_steps: int = 50, rows: int = DEFAULT_INTERNAL_BATCH) -> torch.Tensor:
    """Exact per-unit shares of ``G(z) - G(0)`` for the ReLU head ``G``: DeepLIFT's Rescale rule
    (Shrikumar et al. 2017) with the all-zero code as reference.

    ``z: [B, H]``, ``target: [B]`` -> ``c: [B, H]`` with ``sum_j c_j = G(z) - G(0)`` exactly: every
    activation ``f`` (the head is linear layers, dropout and elementwise activations) passes back the
    multiplier ``(f(h) - f(h0)) / (h - h0)`` (its derivative where ``h == h0``), every linear layer its
    weights. For ``output="probability"`` the softmax, a smooth function of the
    logits, is integrated from the reference logits to the image's with ``n_steps`` Gauss-Legendre points.
    """
    pres, h, h0 = [], z @ clf.W1 + clf.b1, clf.b1.expand(len(z), -1)
    for layer in clf.rest:  # forward at z and at the reference, keeping each activation's two inputs
        if not isinstance(layer, (nn.Linear, nn.Dropout)):
            pres.append((h, h0))
        h, h0 = layer(h), layer(h0)
    m = F.one_hot(target, h.shape[1]).to(h)  # multipliers of the logits
    if output == "probability":
        alphas, weights = ig_quadrature(n_steps, "gausslegendre")
        m = _line_integral(lambda logits, t: _score(logits, t, output), h0, h - h0, target, alphas, weights,
                           rows=rows)
    for layer in reversed(clf.rest):
        if isinstance(layer, nn.Linear):
            m = m @ layer.weight
        elif not isinstance(layer, nn.Dropout):  # an elementwise activation (ReLU in our head)
            m = m * _rescale_slope(layer, *pres.pop())
    return z * (m @ clf.W1.T)


def _rescale_slope(activation: nn.Module, a: torch.Tensor, a0: torch.Tensor) -> torch.Tensor:
    """Rescale multiplier of an elementwise activation ``f``: ``(f(a) - f(a0)) / (a - a0)``, or ``f'(a)``
    where the two inputs (nearly) coincide."""
    delta = a - a0
    far = delta.abs() > RESCALE_EPS
    with torch.enable_grad():
        a_req = a.detach().requires_grad_(True)
        derivative = torch.autograd.grad(activation(a_req).sum(), a_req)[0]
    ratio = (activation(a) - activation(a0)) / torch.where(far, delta, torch.ones_like(delta))
    return torch.where(far, ratio, derivative)


RESCALE_EPS = 1e-12  # below this |h - h0| a ReLU passes back its gradient instead of the finite ratio


def decoder_weighted(pipeline: SparseCodePipeline, inputs: torch.Tensor, target, output: str = "logit",
                     rule: str = "rescale", n_steps: int = 50, method: str = "gausslegendre",
                     internal_batch_size: int | None = None, return_contributions: bool = False):
    """Decoder-weighted attribution: what each active code unit contributes, drawn with its atom.

    For ``z = encode(x)`` and the classifier head ``G`` (so ``F(x) = G(z)``):

    * unit contributions ``c: [B, H]``, shares of ``G(z) - G(0)`` (reference: the empty code). Only
      active units (``z_j > 0``) get non-zero ``c_j``. ``rule="rescale"`` (default) uses DeepLIFT's
      Rescale rule (``rescale_contributions``): ``sum_j c_j = G(z) - G(0)`` *exactly*.
      ``rule="integrated"`` uses integrated gradients in code space, ``c_j = z_j int_0^1 dG(a z)/dz_j da``
      with ``n_steps``/``method`` quadrature; the ReLU head makes the integrand piecewise constant, so its
      sum misses ``G(z) - G(0)`` by a quadrature error of about 1 % at 50 steps, shrinking like 1/n_steps;
    * pixel map ``attr = sum_j c_j d_j = c @ W_dec`` with ``d_j`` unit ``j``'s unit-norm decoder atom.

    Returns ``attr`` shaped like ``inputs`` and, with ``return_contributions``, also ``c: [B, H]``.
    """
    if not isinstance(pipeline, SparseCodePipeline):
        raise ValueError(f"decoder_weighted needs a SparseCodePipeline (autoencoder + classifier), "
                         f"got {type(pipeline).__name__}")
    if rule not in UNIT_RULES:
        raise ValueError(f"rule must be one of {UNIT_RULES}, got {rule!r}")
    x, shape, target, _ = _prepare(pipeline, inputs, target, output)
    alphas, weights = ig_quadrature(n_steps, method)
    rows = _rows_per_pass(internal_batch_size)
    with torch.no_grad():
        z = pipeline.sae.encode(x)
    if rule == "rescale":
        contributions = rescale_contributions(pipeline.clf, z, target, output, n_steps, rows)
    else:
        contributions = z * _path_integral(pipeline.clf, output, z, torch.zeros_like(z), target, alphas, weights, rows)
    attr = (contributions @ pipeline.sae.W_dec.detach()).reshape(shape)
    return (attr, contributions) if return_contributions else attr


def attribute_all(pipeline: SparseCodePipeline, inputs: torch.Tensor, target, cfg: Config,
                  methods: Sequence[str] = tuple(METHOD_LABELS), seed: int | None = None,
                  return_contributions: bool = False):
    """Every requested method's ``[B, 784]`` map for ``inputs`` with the config's settings, in the order of
    ``methods``: ``{method: map}``. Each map is computed once (the x-input maps reuse their gradient's). The
    perturbation methods use ``superpixel_grid(cfg.patch_size)`` (occlusion: that window, ``cfg.occlusion_stride``)
    and their ``cfg.*_samples``; a sampling method draws from ``seed`` plus its offset (Shapley + 1, KernelSHAP + 2,
    LIME + 3: streams independent of each other and of SmoothGrad's).

    With ``return_contributions``, also decoder-weighted's unit contributions ``c: [B, H]`` (computed with
    its map, or on their own when ``"decoder"`` is not among ``methods``): ``(maps, contributions)``.
    """
    unknown = [m for m in methods if m not in METHOD_LABELS]
    if unknown:
        raise ValueError(f"methods must be a subset of {list(METHOD_LABELS)}, got unknown {unknown}")
    seed = cfg.seed if seed is None else seed
    maps: dict[str, torch.Tensor] = {}
    unit_contributions: list[torch.Tensor] = []

    def decoder() -> torch.Tensor:
        attr, contributions = decoder_weighted(pipeline, inputs, target, return_contributions=True)
        unit_contributions.append(contributions.detach())
        return attr

    def get(m: str) -> torch.Tensor:  # each map computed once; the x-input maps reuse their gradient's
        if m not in maps:
            maps[m] = run[m]().detach()
        return maps[m]

    run = {
        "integrated": lambda: integrated_gradients(pipeline, inputs, target, n_steps=cfg.ig_steps,
                                                   method=cfg.ig_method),
        "simple": lambda: simple_gradients(pipeline, inputs, target),
        "smoothgrad": lambda: smoothgrad(pipeline, inputs, target, nt_samples=cfg.smoothgrad_samples,
                                         stdevs=cfg.smoothgrad_noise, seed=seed),
        "decoder": decoder,
        "input_x_gradient": lambda: _times_input(inputs, get("simple")),  # = input_x_gradient(...)
        "input_x_smoothgrad": lambda: _times_input(inputs, get("smoothgrad")),  # = input_x_smoothgrad(..., seed)
        "occlusion": lambda: occlusion(pipeline, inputs, target, sliding_window_shapes=(cfg.patch_size,) * 2,
                                       strides=cfg.occlusion_stride),
        "feature_ablation": lambda: feature_ablation(pipeline, inputs, target, feature_mask=grid),
        "shapley": lambda: shapley_value_sampling(pipeline, inputs, target, feature_mask=grid,
                                                  n_samples=cfg.shapley_samples, seed=seeds["shapley"]),
        "kernel_shap": lambda: kernel_shap(pipeline, inputs, target, feature_mask=grid,
                                           n_samples=cfg.kernel_shap_samples, seed=seeds["kernel_shap"]),
        "lime": lambda: lime(pipeline, inputs, target, feature_mask=grid, n_samples=cfg.lime_samples,
                             seed=seeds["lime"]),
    }
    grid = superpixel_grid(cfg.patch_size)
    seeds = {m: seed + offset for m, offset in _SAMPLING_SEED_OFFSETS.items()}
    out = {m: get(m) for m in methods}
    if not return_contributions:
        return out
    if not unit_contributions:
        decoder()
    return out, unit_contributions[0]
