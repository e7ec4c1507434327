"""Perturbation attributions: occlusion, feature ablation, Shapley value sampling, KernelSHAP and LIME over
superpixels. Names and arguments follow Captum's ``attribute()``.

Each method explains ``F(x)`` (the target's logit; ``output="probability"``: its softmax probability) by evaluating
``F`` on perturbed copies of the image, where some pixels keep their value and the others take the baseline's
(``baselines``: default a zero image, integrated gradients' baseline and the zero deletion substrate). Features are
the superpixels of ``feature_mask`` (default ``superpixel_grid()``: 4 x 4 patches, ``Config.patch_size``, a 7 x 7
grid of 49 features); a feature's attribution is given to each of its pixels (Captum's ``return_input_shape=True``),
so maps are ``[B, 784]`` (or the inputs' shape) like the gradient methods'.

Batched: the perturbed copies of many images go through one model call, at most ``perturbations_per_eval`` rows at a
time (default ``DEFAULT_INTERNAL_BATCH``; Captum's argument counts copies per image, ours rows over all images: the
result does not depend on it). Exact shortcut: a model with an affine first layer (``affine_split() -> (A, c,
head)``, ``F(x) = head(x A^T + c)``: our pipeline) gets the first layer's output of a copy that keeps the pixels
``m`` as ``pre(b) + sum_(f kept) P_f`` with ``P_f = ((x - b) on feature f) A^T`` (one sparse product per image, not a
784 x H product per copy): the same function, only the rounding differs (tested against the model's own forward).
Any other model sees the perturbed images themselves.

Sampling methods draw from a CPU generator (``seed`` or ``generator``; neither: fresh entropy), image by image,
so an image's map does not depend on the batch it is in or on ``perturbations_per_eval``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ._util import IMAGE_SIDE, _check_float, _check_int
from .attribution_base import DEFAULT_INTERNAL_BATCH, _baseline, _prepare_inputs
from .attribution_base import _score as _target_score
from .config import Config

_LIME_DISTANCES = ("cosine", "euclidean")  # LIME's similarity kernel exp(-d^2 / (2 width^2)) of this distance
# between the image and the perturbed copy (Captum's get_exp_kernel_similarity_function(distance_mode, kernel_width))


def superpixel_grid(patch_size: int = Config.patch_size) -> torch.Tensor:
    """Feature ids ``[28, 28]`` (int64, row-major over patches) of a grid of ``patch_size`` x ``patch_size``
    patches; where 28 is not a multiple of ``patch_size`` the last row and column of patches are narrower (as
    Captum's occlusion cuts its last window). ``patch_size=4``: 49 features."""
    _check_int("patch_size", patch_size, low=1, high=IMAGE_SIDE, high_name="the image side")
    cell = torch.arange(IMAGE_SIDE) // patch_size
    return cell[:, None] * -(-IMAGE_SIDE // patch_size) + cell[None, :]


def _mask_shape_ok(shape: list[int]) -> bool:
    """One image's mask shape: ``[784]`` or ``[28, 28]``, after dropping leading 1s."""
    while len(shape) > 1 and shape[0] == 1:
        shape = shape[1:]
    return shape in ([IMAGE_SIDE**2], [IMAGE_SIDE, IMAGE_SIDE])


def _feature_groups(feature_mask, n_images: int) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """``[(images: [b], ids: [784] int64 in 0..M-1, M)]``: the images sharing each distinct mask, its feature of every
    pixel (ids renumbered in order, so any integer ids work) and its feature count. ``ValueError`` naming
    ``feature_mask`` for a non-integer mask, one that does not cover the 28 x 28 image, or a negative id."""
    mask = superpixel_grid() if feature_mask is None else feature_mask
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(mask)
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"feature_mask must be an integer tensor of feature ids (one per pixel), got "
                         f"{type(mask).__name__}")
    if mask.is_floating_point() or mask.is_complex() or mask.dtype == torch.bool:
        raise ValueError(f"feature_mask must hold integer feature ids, got dtype {mask.dtype}")
    shape, pixels = list(mask.shape), IMAGE_SIDE**2
    if mask.numel() == pixels and _mask_shape_ok(shape):
        masks = mask.reshape(1, pixels).expand(n_images, pixels)
    elif shape and shape[0] == n_images and mask.numel() == n_images * pixels and _mask_shape_ok(shape[1:]):
        masks = mask.reshape(n_images, pixels)
    else:
        raise ValueError(f"feature_mask must cover the {IMAGE_SIDE} x {IMAGE_SIDE} image: one feature id per pixel "
                         f"([{pixels}] or [{IMAGE_SIDE}, {IMAGE_SIDE}]) or one such mask per image ([{n_images}, "
                         f"{pixels}] or [{n_images}, {IMAGE_SIDE}, {IMAGE_SIDE}]), got shape {shape}")
    masks = masks.cpu().long()
    if int(masks.min()) < 0:
        raise ValueError(f"feature_mask must give every pixel a feature id >= 0 (every pixel in a feature), got "
                         f"{int(masks.min())}")
    distinct, which = torch.unique(masks, dim=0, return_inverse=True)
    groups = []
    for g, m in enumerate(distinct):
        values, ids = torch.unique(m, return_inverse=True)
        groups.append((torch.nonzero(which == g)[:, 0], ids, len(values)))
    return groups


def _generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    """A CPU generator: ``generator``, else one seeded with ``seed``, else one with fresh entropy (torch's global
    random state is left alone)."""
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return generator
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        _check_int("seed", seed, low=0)
        gen.manual_seed(seed)
    return gen


class _Perturbed:
    """``F`` at perturbed copies of images ``x: [B, P]``: kept pixels from ``x``, the others from ``base: [B, P]``;
    ``rows`` copies per model call. Through the model's affine first layer where it has one (``affine_split``)."""

    def __init__(self, model: nn.Module, output: str, x: torch.Tensor, base: torch.Tensor, target: torch.Tensor,
                 rows: int):
        self.model, self.output, self.x, self.base, self.target, self.rows = model, output, x, base, target, rows
        self.delta = x - base
        split = getattr(model, "affine_split", None)
        self.affine = split is not None
        if self.affine:
            A, c, self.head = split()
            A, c = A.detach(), c.detach()
            self.columns = A.T.contiguous()  # [P, H]: pixel p's column of the first layer
            self.pre_x, self.pre_base = F.linear(x, A, c), F.linear(base, A, c)
        self.f_x = self.scores(self.pre_x if self.affine else x, target)  # [B]: F(x), F(baseline)
        self.f_base = self.scores(self.pre_base if self.affine else base, target)

    def scores(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``F`` of first-layer outputs (affine models) or images ``inputs: [R, .]`` for ``target: [R]`` -> ``[R]``,
        ``rows`` at a time."""
        fn = self.head if self.affine else self.model
        return torch.cat([_target_score(fn(inputs[i:i + self.rows]), target[i:i + self.rows], self.output)
                          for i in range(0, len(inputs), self.rows)])

    def bag_sums(self, images: torch.Tensor, index: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """``[b, n_bags, H]``: for each image of ``images: [b]`` and each bag of pixels (``index: [L]`` pixel ids,
        bag k from ``offsets[k]``), the first layer's move from the baseline that the bag's pixels make."""
        b, length = len(images), len(index)
        starts = (offsets[None] + length * torch.arange(b)[:, None]).reshape(-1).to(self.x.device)
        weights = self.delta[images][:, index.to(self.x.device)].reshape(-1)
        return F.embedding_bag(index.to(self.x.device).repeat(b), self.columns, starts, per_sample_weights=weights,
                               mode="sum").view(b, len(offsets), -1)

    def removed(self, images: torch.Tensor, index: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """``[b, n_bags]``: ``F`` of each image of ``images: [b]`` with one bag of pixels (``index``, ``offsets``: as
        ``bag_sums``) set to the baseline; bags may overlap (occlusion windows) or partition the image (features)."""
        t = self.target[images].repeat_interleave(len(offsets))
        if self.affine:
            pre = self.pre_x[images, None] - self.bag_sums(images, index, offsets)
            return self.scores(pre.reshape(-1, pre.shape[-1]), t).view(len(images), -1)
        bags = torch.zeros(len(offsets), self.x.shape[1], dtype=torch.bool)
        bags[torch.repeat_interleave(torch.arange(len(offsets)), _bag_sizes(index, offsets)), index] = True
        bags = bags.to(self.x.device)
        imgs = torch.where(bags[None], self.base[images, None], self.x[images, None])  # [b, n_bags, P]
        return self.scores(imgs.reshape(-1, self.x.shape[1]), t).view(len(images), -1)

    def kept(self, images: torch.Tensor, ids: torch.Tensor, n_features: int, keep: torch.Tensor) -> torch.Tensor:
        """``[b, S]``: ``F`` of each image of ``images: [b]`` keeping the features ``keep: [b, S, M]`` (1 kept, 0 set
        to the baseline) of the partition ``ids: [P]``."""
        t = self.target[images].repeat_interleave(keep.shape[1])
        if self.affine:
            parts = self.feature_parts(images, ids, n_features)  # [b, M, H]
            pre = torch.baddbmm(self.pre_base[images, None], keep.to(self.x), parts)
            return self.scores(pre.reshape(-1, pre.shape[-1]), t).view(len(images), -1)
        pixels = keep.to(self.x.device)[..., ids.to(self.x.device)].bool()  # [b, S, P]
        imgs = torch.where(pixels, self.x[images, None], self.base[images, None])
        return self.scores(imgs.reshape(-1, self.x.shape[1]), t).view(len(images), -1)

    def feature_parts(self, images: torch.Tensor, ids: torch.Tensor, n_features: int) -> torch.Tensor:
        """``P: [b, M, H]``: each feature's share of the first layer's move from the baseline to the image."""
        return self.bag_sums(images, *_bags(ids, n_features))


def _bag_sizes(index: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Pixels per bag of ``(index, offsets)``."""
    return torch.diff(offsets, append=torch.tensor([len(index)]))


def _bags(ids: torch.Tensor, n_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The partition ``ids: [P]`` as bags: ``(index: [P] pixel ids grouped by feature, offsets: [M])``."""
    counts = torch.bincount(ids, minlength=n_features)
    return ids.argsort(stable=True), torch.cumsum(counts, 0) - counts


def _setup(model, inputs, target, baselines, output, perturbations_per_eval):
    """The shared checks at the door (every argument but the method's own) -> ``(x: [B, P], shape, _Perturbed)``."""
    x, shape, target, _ = _prepare_inputs(model, inputs, target, output)
    if baselines is None:
        base = torch.zeros_like(x)
    elif isinstance(baselines, (int, float, np.integer, np.floating)) and not isinstance(baselines, bool):
        _check_float("baselines", baselines)
        base = torch.full_like(x, float(baselines))
    else:
        base = _baseline(baselines, x)
    rows = DEFAULT_INTERNAL_BATCH if perturbations_per_eval is None else perturbations_per_eval
    _check_int("perturbations_per_eval", rows, low=1)
    with torch.no_grad():
        return x.detach(), shape, _Perturbed(model, output, x.detach(), base.detach(), target, rows)


def _per_image_chunks(n_images: int, per_image: int, rows: int) -> range:
    """Chunk starts over ``n_images`` images of ``per_image`` copies each, about ``rows`` copies per chunk."""
    return range(0, n_images, max(1, rows // max(per_image, 1)))


def _window_bags(window: tuple[int, int], strides: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Occlusion's windows as bags of pixel ids (Captum's: starts 0, s, 2s, ... until the image is covered, the last
    window cut at the border)."""
    starts = [list(range(0, (math.ceil((IMAGE_SIDE - w) / s) + 1) * s, s)) for w, s in zip(window, strides)]
    grid = torch.arange(IMAGE_SIDE**2).view(IMAGE_SIDE, IMAGE_SIDE)
    bags = [grid[r:r + window[0], c:c + window[1]].reshape(-1) for r in starts[0] for c in starts[1]]
    sizes = torch.tensor([len(b) for b in bags])
    return torch.cat(bags), torch.cumsum(sizes, 0) - sizes


def _pair(name: str, value, low: int, high: int | None, high_name: str | None = None) -> tuple[int, int]:
    """An int or a pair of ints (rows, columns), each checked, as a pair."""
    pair = (value, value) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else value
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise ValueError(f"{name} must be an integer or a pair of integers (rows, columns), got {value!r}")
    for v in pair:
        _check_int(name, v, low=low, high=high, high_name=high_name)
    return int(pair[0]), int(pair[1])


@torch.no_grad()
def occlusion(model: nn.Module, inputs: torch.Tensor, target, sliding_window_shapes=(Config.patch_size,) * 2,
              strides=None, baselines=None, output: str = "logit",
              perturbations_per_eval: int | None = None) -> torch.Tensor:
    """Occlusion (Zeiler & Fergus 2014; Captum's ``Occlusion``): a window of ``sliding_window_shapes`` (rows,
    columns; an int for a square) slides over the 28 x 28 image by ``strides`` (default 1; at most the window, so
    every pixel is covered); each position is set to the baseline and ``F(x) - F(occluded)`` is shared by the
    window's pixels; a pixel's attribution is the mean over the windows that cover it.

    ``inputs: [B, 784]`` (or image-shaped), ``target``: int or ``[B]``, ``baselines``: a number, one image or one
    per image (default 0). Returns the inputs' shape."""
    window = _pair("sliding_window_shapes", sliding_window_shapes, 1, IMAGE_SIDE, "the image side")
    stride = _pair("strides", 1 if strides is None else strides, 1, None)
    if any(s > w for s, w in zip(stride, window) if w < IMAGE_SIDE):
        raise ValueError(f"strides must be at most sliding_window_shapes {window} (so every pixel is occluded), "
                         f"got {stride}")
    x, shape, ev = _setup(model, inputs, target, baselines, output, perturbations_per_eval)
    index, offsets = _window_bags(window, stride)
    count = torch.bincount(index, minlength=x.shape[1]).to(x)
    attr = torch.empty_like(x)
    for i in _per_image_chunks(len(x), len(offsets), ev.rows):
        images = torch.arange(i, min(i + max(1, ev.rows // len(offsets)), len(x)))
        drop = ev.f_x[images, None] - ev.removed(images, index, offsets)  # [b, windows]
        per_pixel = drop.repeat_interleave(_bag_sizes(index, offsets).to(x.device), 1)
        attr[images] = torch.zeros(len(images), x.shape[1], dtype=x.dtype, device=x.device).index_add_(
            1, index.to(x.device), per_pixel) / count
    return attr.reshape(shape)


@torch.no_grad()
def feature_ablation(model: nn.Module, inputs: torch.Tensor, target, baselines=None, feature_mask=None,
                     output: str = "logit", perturbations_per_eval: int | None = None) -> torch.Tensor:
    """Feature ablation (Captum's ``FeatureAblation``): each feature of ``feature_mask`` (default
    ``superpixel_grid()``; one mask ``[28, 28]`` or one per image, integer ids) is set to the baseline alone, and
    ``F(x) - F(ablated)`` is given to each of its pixels. Arguments as ``occlusion``."""
    x, shape, ev = _setup(model, inputs, target, baselines, output, perturbations_per_eval)
    attr = torch.empty_like(x)
    for images, ids, n in _feature_groups(feature_mask, len(x)):
        index, offsets = _bags(ids, n)
        for i in _per_image_chunks(len(images), n, ev.rows):
            part = images[i:i + max(1, ev.rows // n)]
            drop = ev.f_x[part, None] - ev.removed(part, index, offsets)  # [b, M]
            attr[part] = drop[:, ids.to(x.device)]
    return attr.reshape(shape)


@torch.no_grad()
def shapley_value_sampling(model: nn.Module, inputs: torch.Tensor, target, baselines=None, feature_mask=None,
                           n_samples: int = 25, output: str = "logit", perturbations_per_eval: int | None = None,
                           seed: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shapley value sampling (Castro et al. 2009; Captum's ``ShapleyValueSampling``): ``n_samples`` random orders
    of the features per image; along each, features are added one at a time from the baseline to the image and each
    gets its marginal change of ``F``; a feature's value is its mean marginal change, given to each of its pixels.

    Efficient: every order's changes add up to ``F(x) - F(baseline)`` (the first and last points are the model's
    own ``F(baseline)`` and ``F(x)``), so the map sums to it (up to rounding). Orders are uniform random
    permutations drawn per image from ``seed``/``generator``. Other arguments as ``feature_ablation``."""
    _check_int("n_samples", n_samples, low=1)
    gen = _generator(seed, generator)
    x, shape, ev = _setup(model, inputs, target, baselines, output, perturbations_per_eval)
    attr = torch.empty_like(x)
    for images, ids, n in _feature_groups(feature_mask, len(x)):
        for i in _per_image_chunks(len(images), n_samples * n, ev.rows):
            part = images[i:i + max(1, ev.rows // (n_samples * n))]
            orders = torch.stack([torch.rand(n_samples, n, generator=gen, dtype=torch.float64).argsort(1)
                                  for _ in part])  # [b, S, M]
            ends = lambda f: f[part, None, None].expand(-1, n_samples, 1)
            values = torch.cat([ends(ev.f_base), _order_values(ev, part, ids, n, orders), ends(ev.f_x)], 2)
            marginal = values.diff(dim=2).double().reshape(len(part), -1)  # feature orders[s, t] gets v[t+1] - v[t]
            phi = torch.zeros(len(part), n, dtype=torch.float64, device=x.device)
            phi.scatter_add_(1, orders.to(x.device).reshape(len(part), -1), marginal)
            attr[part] = (phi / n_samples).to(x.dtype)[:, ids.to(x.device)]
    return attr.reshape(shape)


def _order_values(ev: _Perturbed, images: torch.Tensor, ids: torch.Tensor, n: int,
                  orders: torch.Tensor) -> torch.Tensor:
    """``[b, S, M - 1]``: ``F`` after the first 1..M-1 features of each order ``orders: [b, S, M]`` are added to the
    baseline (affine models: the first layer's partial sums along the order; others: the images)."""
    b, s = orders.shape[:2]
    if n == 1:
        return torch.empty(b, s, 0, dtype=ev.x.dtype, device=ev.x.device)
    if ev.affine:
        parts = ev.feature_parts(images, ids, n)  # [b, M, H]
        steps = parts[torch.arange(b)[:, None, None], orders[..., :-1].to(parts.device)].cumsum(2)  # [b, S, M-1, H]
        pre = ev.pre_base[images, None, None] + steps
        t = ev.target[images].repeat_interleave(s * (n - 1))
        return ev.scores(pre.reshape(-1, pre.shape[-1]), t).view(b, s, n - 1)
    rank = orders.argsort(2)  # position of each feature in its order
    keep = rank[:, :, None, :] < torch.arange(1, n)[None, None, :, None]  # [b, S, M-1, M]
    return ev.kept(images, ids, n, keep.reshape(b, s * (n - 1), n).to(ev.x.dtype)).view(b, s, n - 1)


def _constrained_fit(keep: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, f_base: torch.Tensor,
                     f_x: torch.Tensor) -> torch.Tensor:
    """KernelSHAP's weighted least squares with its endpoints held exactly: ``phi: [b, M]`` minimising
    ``sum_s w_s (y_s - F(b) - keep_s . phi)^2`` subject to ``sum(phi) = F(x) - F(b)``, for ``keep: [b, S, M]``,
    ``y, weights: [b, S]``, ``f_base, f_x: [b]`` (the last value eliminated by the constraint; minimum-norm least
    squares, so repeated coalitions do no harm)."""
    total = (f_x - f_base).double()
    if keep.shape[2] == 1:
        return total[:, None]
    keep, root = keep.double(), weights.double().sqrt()[..., None]
    design = (keep[..., :-1] - keep[..., -1:]) * root
    rhs = (y.double() - f_base.double()[:, None] - keep[..., -1] * total[:, None])[..., None] * root
    head = torch.linalg.lstsq(design.cpu(), rhs.cpu(), driver="gelsd").solution[..., 0].to(y.device)
    return torch.cat([head, (total - head.sum(1))[:, None]], 1)


def _kernel_shap_coalitions(n: int, n_samples: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Every proper, non-empty coalition of ``n`` features with its Shapley kernel weight
    ``(M - 1) / (C(M, k) k (M - k))`` when ``n_samples`` covers them all with the two endpoints (``2 ** n``); else
    None (sampled)."""
    if n_samples < 2**n:
        return None
    bits = (torch.arange(1, 2**n - 1)[:, None] >> torch.arange(n)[None]) & 1  # [2^M - 2, M]
    k = bits.sum(1).double()
    return bits, (n - 1) / (torch.tensor([math.comb(n, int(v)) for v in k], dtype=torch.float64) * k * (n - k))


@torch.no_grad()
def kernel_shap(model: nn.Module, inputs: torch.Tensor, target, baselines=None, feature_mask=None,
                n_samples: int = 1200, output: str = "logit", perturbations_per_eval: int | None = None,
                seed: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """KernelSHAP (Lundberg & Lee 2017; Captum's ``KernelShap``): a linear model of ``F`` on ``n_samples``
    coalitions of features per image estimates their Shapley values. As Captum: the first two coalitions are all
    features and none; each other keeps ``k`` features, ``k`` drawn with probability proportional to
    ``(M - 1) / (k (M - k))`` and the features uniformly, so the Shapley kernel is in the sampling and every sample
    weighs 1. The fit holds the endpoints exactly (intercept ``F(baseline)``, values summing to
    ``F(x) - F(baseline)``, so the map is efficient; Captum weighs the two endpoint samples 1e6 instead). With
    ``n_samples >= 2 ** M`` every coalition is used once with its kernel weight: the values are then the exact
    Shapley values. ``n_samples`` must be at least ``M + 1`` (``M - 1`` values are free). Other arguments as
    ``shapley_value_sampling``."""
    _check_int("n_samples", n_samples, low=1)
    gen = _generator(seed, generator)
    x, shape, ev = _setup(model, inputs, target, baselines, output, perturbations_per_eval)
    groups = _feature_groups(feature_mask, len(x))
    fewest = max(n + 1 for _, _, n in groups)
    if n_samples < fewest:
        raise ValueError(f"n_samples must be at least the number of features + 1 ({fewest}: KernelSHAP fits that "
                         f"many values from the samples), got {n_samples}")
    attr = torch.empty_like(x)
    for images, ids, n in groups:
        exact = _kernel_shap_coalitions(n, n_samples)
        size_weights = torch.tensor([(n - 1) / (k * (n - k)) for k in range(1, n)], dtype=torch.float64)
        drawn = n_samples - 2 if exact is None else len(exact[0])
        for i in _per_image_chunks(len(images), drawn, ev.rows):
            part = images[i:i + max(1, ev.rows // max(drawn, 1))]
            if exact is None:
                keep = torch.stack([_random_coalitions(n, drawn, size_weights, gen) for _ in part])
                weights = torch.ones(len(part), drawn, dtype=torch.float64)
            else:
                keep, weights = exact[0].expand(len(part), -1, -1), exact[1].expand(len(part), -1)
            y = ev.kept(part, ids, n, keep) if drawn else torch.zeros(len(part), 0, dtype=x.dtype)
            phi = _constrained_fit(keep.to(x.device), y, weights.to(x.device), ev.f_base[part], ev.f_x[part])
            attr[part] = phi.to(x.dtype)[:, ids.to(x.device)]
    return attr.reshape(shape)


def _random_coalitions(n: int, count: int, size_weights: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``[count, n]`` 0/1 coalitions: a size ``k`` in 1..n-1 drawn with ``size_weights``, then ``k`` features
    uniformly (the ``k`` smallest of uniform random keys)."""
    if count == 0:
        return torch.zeros(0, n, dtype=torch.long)
    sizes = torch.multinomial(size_weights, count, replacement=True, generator=gen) + 1
    rank = torch.rand(count, n, generator=gen, dtype=torch.float64).argsort(1).argsort(1)
    return (rank < sizes[:, None]).long()


@torch.no_grad()
def lime(model: nn.Module, inputs: torch.Tensor, target, baselines=None, feature_mask=None, n_samples: int = 1200,
         distance_mode: str = "cosine", kernel_width: float = 1.0, alpha: float = 1.0,
         output: str = "logit", perturbations_per_eval: int | None = None, seed: int | None = None,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """LIME (Ribeiro et al. 2016; Captum's ``Lime`` with a ridge model): ``n_samples`` random coalitions per image,
    each feature kept with probability 1/2 (Captum's sampling). A copy weighs ``exp(-d^2 / (2 kernel_width^2))``
    with ``d`` its ``distance_mode`` distance to the image in pixel space (``"cosine"``: 1 - cosine similarity,
    Captum's default similarity, width 1; ``"euclidean"``), and a weighted ridge regression of ``F`` on the
    kept-feature indicators (penalty ``alpha`` >= 0, default 1, intercept not penalised: scikit-learn's ``Ridge``,
    the lime package's model) gives each feature its coefficient, given to each of its pixels. Other arguments as
    ``shapley_value_sampling``."""
    _check_int("n_samples", n_samples, low=1)
    if distance_mode not in _LIME_DISTANCES:
        raise ValueError(f"distance_mode (the distance in LIME's similarity kernel) must be one of {_LIME_DISTANCES}, "
                         f"got {distance_mode!r}")
    _check_float("kernel_width", kernel_width, low=0.0, low_open=True)
    _check_float("alpha", alpha, low=0.0)
    gen = _generator(seed, generator)
    x, shape, ev = _setup(model, inputs, target, baselines, output, perturbations_per_eval)
    attr = torch.empty_like(x)
    for images, ids, n in _feature_groups(feature_mask, len(x)):
        for i in _per_image_chunks(len(images), n_samples, ev.rows):
            part = images[i:i + max(1, ev.rows // n_samples)]
            keep = torch.stack([(torch.rand(n_samples, n, generator=gen, dtype=torch.float64) < 0.5).long()
                                for _ in part])  # [b, S, M]
            y = ev.kept(part, ids, n, keep)
            distance = _lime_distance(ev, part, ids, n, keep.to(x.device).double(), distance_mode)
            weights = torch.exp(-distance**2 / (2 * kernel_width**2))
            attr[part] = _ridge(keep.to(x.device).double(), y.double(), weights, alpha).to(x.dtype)[:, ids.to(x.device)]
    return attr.reshape(shape)


_COSINE_EPS = 1e-8  # torch's CosineSimilarity eps: a norm below it counts as eps (an all-zero copy: similarity 0)


def _lime_distance(ev: _Perturbed, images: torch.Tensor, ids: torch.Tensor, n: int, keep: torch.Tensor,
                   mode: str) -> torch.Tensor:
    """``[b, S]`` distances in pixel space between each image and its copies keeping ``keep: [b, S, M]``, from
    per-feature sums (a kept pixel is the image's, a dropped one the baseline's)."""
    x, b = ev.x[images].double(), ev.base[images].double()
    per_feature = lambda v: torch.zeros(len(images), n, dtype=torch.float64, device=v.device).index_add_(
        1, ids.to(v.device), v)
    drop = 1 - keep
    if mode == "euclidean":
        return (drop @ per_feature((x - b) ** 2)[..., None])[..., 0].clamp_min(0).sqrt()
    xx, xb, bb = per_feature(x * x), per_feature(x * b), per_feature(b * b)
    dot = (keep @ xx[..., None] + drop @ xb[..., None])[..., 0]
    norm = (keep @ xx[..., None] + drop @ bb[..., None])[..., 0].clamp_min(0).sqrt()
    return 1 - dot / (xx.sum(1, keepdim=True).sqrt().clamp_min(_COSINE_EPS) * norm.clamp_min(_COSINE_EPS))


def _ridge(design: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, alpha: float) -> torch.Tensor:
    """Weighted ridge regression with an unpenalised intercept, per image: ``design: [b, S, M]``, ``y, weights:
    [b, S]`` -> coefficients ``[b, M]`` (scikit-learn's ``Ridge(alpha).fit(X, y, sample_weight)``: weighted centring,
    then ``(Xc^T W Xc + alpha I) beta = Xc^T W yc``, solved as least squares, minimum-norm where singular)."""
    total = weights.sum(1, keepdim=True)
    xc = design - (weights[..., None] * design).sum(1, keepdim=True) / total[..., None]
    yc = y - (weights * y).sum(1, keepdim=True) / total
    root = weights.sqrt()[..., None]
    m = design.shape[2]
    stacked = torch.cat([xc * root, math.sqrt(alpha) * torch.eye(m, dtype=design.dtype).expand(len(design), m, m)], 1)
    rhs = torch.cat([yc[..., None] * root, torch.zeros(len(design), m, 1, dtype=design.dtype)], 1)
    return torch.linalg.lstsq(stacked.cpu(), rhs.cpu(), driver="gelsd").solution[..., 0].to(design.device)
