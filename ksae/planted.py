"""A planted dictionary: synthetic 28 x 28 images built from known atoms with known sparse codes and a known
label rule (``planted_dictionary``), and how well a learned dictionary recovers the atoms (``recovery_scores``).

The generative model, for ``N`` atoms ``d_j`` (unit-norm rows of ``atoms: [N, 784]``) and a code ``a: [N] >= 0``::

    x = offset + scale * (a @ atoms)          x: [784], in [0, 1] (scale and offset fixed per data set)
    s_c(a) = sum_j W[c, j] a_j                the rule's class scores, W: [C, N], label y = argmax_c s_c

Atom ``j`` fires (``a_j > 0``) with probability ``firing_rates[j]`` (a Zipf law over the atoms, capped, whose mean
L0 is asked for), independently of the others, with a log-normal magnitude. The rule reads a few "label atoms"
per class (``_LABEL_ATOMS_PER_CLASS``, weight 1); images on which no label atom fires are drawn again (the
firing rates of the label atoms rise by that conditioning: ``label_rate_factor`` says how much). Because ``x``
is affine in ``a`` and the rule linear, the *exact* contribution of atom ``j`` to the centred score of class
``c``, ``s_c - mean_c' s_c'``, relative to the empty code, is ``(W[c, j] - mean_c' W[c', j]) a_j``
(``PlantedDictionary.contributions``): every attribution method that is linear and complete (integrated
gradients, Shapley values, DeepLIFT) gives exactly this for a linear function and a zero reference.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ._util import (
    IMAGE_SIDE,
    _as_numbers,
    _check_choice,
    _check_finite,
    _check_float,
    _check_images,
    _check_instance,
    _check_int,
    _check_tensor,
    _unit_norm_atoms,
)
from .data import FashionMNIST

PLANTED_COHERENCES = {"incoherent": (0.0, 0.0), "smooth": (0.8, 0.0), "image-like": (2.0, 5.0)}  # name ->
# (Gaussian blur of white-noise atoms, pixels; width of a Gaussian window at a random centre, pixels, 0 = none):
# from white noise (largest |cosine| between 512 atoms ~0.16) through slightly smooth (~0.3) to smooth, local,
# overlapping atoms (~0.9), the kind a Fashion-MNIST dictionary holds (the default SAE's atoms: largest |cosine|
# 0.998, median of each atom's largest 0.31). The middle level was set where a top-k SAE's recovery is partial in
# pilot runs (blur 0.6: ~90 % of the atoms recovered, 0.8: ~65 %, 1.0: none), so the kinds can differ there


_ZIPF_EXPONENT = 1.0  # firing rate of the i-th most frequent atom ~ 1 / (i + 1): the default SAE's units span
# ~3 decades between their 10th and 90th percentile of training frequency; a Zipf law over 1024 atoms, ~2


_MAX_RATE = 0.3  # no atom fires on more than this share of images (the default SAE's 99th percentile: 0.32)


_MAGNITUDE_SIGMA = 0.4  # an active atom's coefficient is exp(N(0, this^2)): median 1, spread ~ +-50 %


_LABEL_ATOMS_PER_CLASS = 3  # atoms each class's score reads


_LABEL_RATE_QUANTILE = 0.9  # label atoms are those whose firing rate is nearest this quantile of the rates


_SEED_OFFSETS = {"atoms": 0, "rates": 1, "codes": 2, "rule": 3}  # independent random streams per part


_CHUNK = 10_000  # images generated at a time


_RECOVERED_COSINE = 0.9  # a planted atom counts as recovered when its matched learned atom has |cosine| >= this


@dataclass
class PlantedDictionary:
    """Synthetic images with a known dictionary (``planted_dictionary``): ``data`` is shaped like Fashion-MNIST
    (``FashionMNIST``: ``x_train: [n_train, 784]`` in [0, 1], labels, test split), so the training code takes it.

    ``atoms: [N, 784]`` unit-norm planted atoms; ``codes_train: [n_train, N]``, ``codes_test: [n_test, N]`` the
    planted codes of the images (``x = offset + scale * codes @ atoms``); ``firing_rates: [N]`` the asked-for
    probability that each atom fires; ``rule: [C, N]`` the label rule's weights; ``label_atoms: [C, m]`` the atoms
    each class reads; ``coherence`` its name (``PLANTED_COHERENCES``); ``max_abs_cosine`` the largest |cosine|
    between two atoms and ``median_max_abs_cosine`` the median over atoms of each one's largest."""

    data: FashionMNIST
    atoms: torch.Tensor
    codes_train: torch.Tensor
    codes_test: torch.Tensor
    firing_rates: torch.Tensor
    rule: torch.Tensor
    label_atoms: torch.Tensor
    scale: float
    offset: float
    coherence: str
    seed: int
    mean_l0: float
    max_abs_cosine: float
    median_max_abs_cosine: float
    label_rate_factor: float

    def __post_init__(self):
        """Every field checked at the door, kinds and shapes against ``data`` and ``atoms`` (``ValueError`` naming
        the field): a hand-made or edited record is refused where it is built, not deep in a study."""
        _check_instance("data", self.data, FashionMNIST)
        _check_tensor("atoms", self.atoms, [(None, "atoms"), (IMAGE_SIDE**2, str(IMAGE_SIDE**2))], "float")
        _check_finite("atoms", self.atoms)
        n, c = len(self.atoms), len(self.data.classes)
        _check_tensor("codes_train", self.codes_train, [(len(self.data.x_train), "training images"), (n, "atoms")],
                      "float")
        _check_tensor("codes_test", self.codes_test, [(len(self.data.x_test), "test images"), (n, "atoms")], "float")
        _check_tensor("firing_rates", self.firing_rates, [(n, "atoms")], "float")
        if not bool(((self.firing_rates >= 0) & (self.firing_rates <= 1)).all()):
            raise ValueError(f"firing_rates must hold probabilities in [0, 1], got values from "
                             f"{float(self.firing_rates.min()):g} to {float(self.firing_rates.max()):g}")
        _check_tensor("rule", self.rule, [(c, "classes"), (n, "atoms")], "float")
        _check_tensor("label_atoms", self.label_atoms, [(c, "classes"), (None, "m")], "int")
        if self.label_atoms.numel() and not bool(((self.label_atoms >= 0) & (self.label_atoms < n)).all()):
            raise ValueError(f"label_atoms must hold atom ids in [0, {n}), got values from "
                             f"{int(self.label_atoms.min())} to {int(self.label_atoms.max())}")
        _check_float("scale", self.scale, low=0.0, low_open=True)
        _check_float("offset", self.offset)
        _check_choice("coherence", self.coherence, tuple(PLANTED_COHERENCES))
        _check_int("seed", self.seed, low=0)
        _check_float("mean_l0", self.mean_l0, low=0.0, low_open=True)
        _check_float("max_abs_cosine", self.max_abs_cosine, low=0.0)
        _check_float("median_max_abs_cosine", self.median_max_abs_cosine, low=0.0)
        _check_float("label_rate_factor", self.label_rate_factor, low=1.0)

    def contributions(self, codes: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The exact contribution ``[B, N]`` of every atom to the centred rule score of class ``target: [B]``
        (``s_c - mean_c' s_c'``) for planted codes ``codes: [B, N]``, relative to the empty code: ``(W[c, j] -
        mean_c' W[c', j]) a_j``. Sums to the centred score (the rule is linear)."""
        centred = self.rule - self.rule.mean(0, keepdim=True)
        return centred[target.long().cpu()] * codes.cpu()

    def evidence(self, contributions: torch.Tensor) -> torch.Tensor:
        """Exact atom contributions ``[B, N]`` drawn with their atoms, in pixel units: ``scale * contributions @
        atoms: [B, 784]``. Each pixel holds its atoms' parts of the image, each weighted by that atom's weight in the
        rule: where in the image the evidence for the class lies. (A rule on codes has no unique pixel attribution
        when the atoms are not an orthonormal basis; this is the pixel-space answer the study compares maps with.)"""
        return self.scale * contributions.double() @ self.atoms.double()

    def describe(self) -> dict:
        """The generator's settings and measured properties as plain numbers (what ``results/`` records)."""
        rates = self.firing_rates.numpy()
        measured = (self.codes_train > 0).double().mean(0).numpy()
        return {"coherence": self.coherence, "blur_sigma": PLANTED_COHERENCES[self.coherence][0],
                "window_sigma": PLANTED_COHERENCES[self.coherence][1], "n_atoms": int(len(self.atoms)),
                "n_train": int(len(self.codes_train)), "n_test": int(len(self.codes_test)), "seed": self.seed,
                "mean_l0_asked": self.mean_l0, "mean_l0_train": float((self.codes_train > 0).sum(1).double().mean()),
                "mean_l0_test": float((self.codes_test > 0).sum(1).double().mean()),
                "rate_quantiles": {str(q): float(np.quantile(rates, q)) for q in (0.0, 0.1, 0.5, 0.9, 1.0)},
                "rate_max_abs_error": float(np.abs(measured - rates * self._label_factor()).max()),
                "max_abs_cosine": self.max_abs_cosine, "median_max_abs_cosine": self.median_max_abs_cosine,
                "label_atoms_per_class": int(self.label_atoms.shape[1]), "label_rate_factor": self.label_rate_factor,
                "class_counts_train": torch.bincount(self.data.y_train, minlength=len(self.rule)).tolist(),
                "scale": self.scale, "offset": self.offset, "fingerprint": self.fingerprint()}

    def _label_factor(self) -> np.ndarray:
        """``[N]``: 1, or ``label_rate_factor`` for the label atoms (their rate after the conditioning)."""
        factor = np.ones(len(self.atoms))
        factor[self.label_atoms.reshape(-1).numpy()] = self.label_rate_factor
        return factor

    def fingerprint(self) -> str:
        """A short hash of the generated images and labels: checkpoints trained on them are named with it."""
        h = hashlib.sha256()
        for t in (self.data.x_train, self.data.y_train, self.data.x_test, self.data.y_test):
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()[:8]


def _zipf_rates(n_atoms: int, mean_l0: float, exponent: float = _ZIPF_EXPONENT,
                max_rate: float = _MAX_RATE) -> np.ndarray:
    """``[n_atoms]`` firing probabilities, in decreasing order, ``~ 1 / (i + 1)^exponent`` scaled so that they sum to
    ``mean_l0`` (the expected number of active atoms per image) with none above ``max_rate`` (the capped ones are
    held at the cap and the rest scaled up until the sum is reached)."""
    _check_int("n_atoms", n_atoms, low=1)
    _check_float("max_rate", max_rate, low=0.0, high=1.0, low_open=True)
    _check_float("mean_l0", mean_l0, low=0.0, high=n_atoms * max_rate, low_open=True)
    _check_float("exponent", exponent, low=0.0)
    base = 1.0 / np.arange(1, n_atoms + 1, dtype=np.float64) ** exponent
    capped = np.zeros(n_atoms, dtype=bool)
    for _ in range(n_atoms + 1):  # water-filling: each pass caps at least one more atom or stops
        free = mean_l0 - max_rate * capped.sum()
        rates = np.where(capped, max_rate, base * free / base[~capped].sum()) if (~capped).any() else \
            np.full(n_atoms, max_rate)
        over = (rates > max_rate) & ~capped
        if not over.any():
            return np.minimum(rates, max_rate)
        capped |= over
    raise AssertionError("water-filling did not settle")  # pragma: no cover


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``x: [N, 784]`` images (reflected borders), float64."""
    if sigma == 0:
        return x
    radius = min(int(math.ceil(3 * sigma)), IMAGE_SIDE - 1)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-t**2 / (2 * sigma**2))
    kernel /= kernel.sum()
    img = x.reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE)
    img = F.conv2d(F.pad(img, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    img = F.conv2d(F.pad(img, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return img.reshape(len(x), -1)


def _planted_atoms(n_atoms: int, coherence: str, seed: int = 0) -> torch.Tensor:
    """``[n_atoms, 784]`` float64 unit-norm atoms of the given coherence (``PLANTED_COHERENCES``): white noise,
    blurred by the level's sigma, times a Gaussian window of the level's width around a random centre in the
    middle of the image (none at width 0). Seeded."""
    if coherence not in PLANTED_COHERENCES:
        raise ValueError(f"coherence must be one of {tuple(PLANTED_COHERENCES)}, got {coherence!r}")
    _check_int("n_atoms", n_atoms, low=1)
    blur, window = PLANTED_COHERENCES[coherence]
    gen = torch.Generator().manual_seed(seed * 4 + _SEED_OFFSETS["atoms"])
    atoms = _blur(torch.randn(n_atoms, IMAGE_SIDE**2, generator=gen, dtype=torch.float64), blur)
    if window:
        yy, xx = torch.meshgrid(torch.arange(IMAGE_SIDE, dtype=torch.float64),
                                torch.arange(IMAGE_SIDE, dtype=torch.float64), indexing="ij")
        centre = IMAGE_SIDE / 4 + torch.rand(n_atoms, 2, generator=gen, dtype=torch.float64) * IMAGE_SIDE / 2
        dist2 = (yy.reshape(1, -1) - centre[:, :1]) ** 2 + (xx.reshape(1, -1) - centre[:, 1:]) ** 2
        atoms = atoms * torch.exp(-dist2 / (2 * window**2))
    return atoms / atoms.norm(dim=1, keepdim=True)


def _coherence_of(atoms: torch.Tensor) -> tuple[float, float]:
    """(largest |cosine| between two different atoms, median over atoms of each one's largest |cosine|)."""
    a = atoms.double() / atoms.double().norm(dim=1, keepdim=True)
    cos = (a @ a.T).abs().fill_diagonal_(0)
    row_max = cos.max(1).values
    return float(row_max.max()), float(row_max.median())


def _draw_codes(n: int, rates: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``[n, N]`` codes: atom j active with probability ``rates[j]``, magnitude exp(N(0, sigma^2))."""
    active = torch.rand(n, len(rates), generator=gen, dtype=torch.float64) < rates
    magnitude = torch.exp(_MAGNITUDE_SIGMA * torch.randn(n, len(rates), generator=gen, dtype=torch.float64))
    return active * magnitude


def _check_sizes(name=lambda key: key, n_atoms: int = 1024, mean_l0: float = 50.0, n_train: int = 20_000,
                 n_test: int = 5_000, n_classes: int = 10, zipf_exponent: float = _ZIPF_EXPONENT,
                 max_rate: float = _MAX_RATE) -> None:
    """``planted_dictionary``'s sizes checked as it checks them (``name(key)``: how a message names each one, e.g.
    ``planted['n_atoms']`` where they come in a dict)."""
    _check_int(name("n_classes"), n_classes, low=2)
    _check_int(name("n_atoms"), n_atoms, low=_LABEL_ATOMS_PER_CLASS * n_classes)
    _check_int(name("n_train"), n_train, low=n_classes)
    _check_int(name("n_test"), n_test, low=1)
    _check_float(name("zipf_exponent"), zipf_exponent, low=0.0)
    _check_float(name("max_rate"), max_rate, low=0.0, high=1.0, low_open=True)
    _check_float(name("mean_l0"), mean_l0, low=0.0, high=n_atoms * max_rate, low_open=True)


def planted_dictionary(coherence: str = "image-like", n_atoms: int = 1024, mean_l0: float = 50.0,
                       n_train: int = 20_000, n_test: int = 5_000, n_classes: int = 10, seed: int = 0,
                       zipf_exponent: float = _ZIPF_EXPONENT, max_rate: float = _MAX_RATE) -> PlantedDictionary:
    """Seeded synthetic images from ``n_atoms`` planted atoms of the given ``coherence`` (``PLANTED_COHERENCES``),
    ``n_train + n_test`` of them, labelled by a known sparse rule (the module's docstring). Atom firing rates follow
    ``_zipf_rates(n_atoms, mean_l0, zipf_exponent, max_rate)`` (assigned to the atoms in a random order); the
    ``_LABEL_ATOMS_PER_CLASS * n_classes`` label atoms are those with rates nearest the 90th percentile, assigned to
    the classes at random. ``scale`` and ``offset`` map the smallest and largest pixel of all the images to 0
    and 1. Returns a ``PlantedDictionary`` whose ``data`` the training code takes like Fashion-MNIST."""
    _check_choice("coherence", coherence, tuple(PLANTED_COHERENCES))
    _check_sizes(n_atoms=n_atoms, mean_l0=mean_l0, n_train=n_train, n_test=n_test, n_classes=n_classes,
                 zipf_exponent=zipf_exponent, max_rate=max_rate)
    _check_int("seed", seed, low=0)
    rates_sorted = _zipf_rates(n_atoms, mean_l0, zipf_exponent, max_rate)
    rng = np.random.default_rng(seed * 4 + _SEED_OFFSETS["rates"])
    rates = torch.from_numpy(rates_sorted[rng.permutation(n_atoms)])
    atoms = _planted_atoms(n_atoms, coherence, seed)
    n_label = _LABEL_ATOMS_PER_CLASS * n_classes
    target = np.quantile(rates.numpy(), _LABEL_RATE_QUANTILE)
    nearest = np.argsort(np.abs(rates.numpy() - target), kind="stable")[:n_label]
    label_atoms = torch.from_numpy(np.random.default_rng(seed * 4 + _SEED_OFFSETS["rule"]).permutation(nearest))
    label_atoms = label_atoms.reshape(n_classes, _LABEL_ATOMS_PER_CLASS)
    rule = torch.zeros(n_classes, n_atoms, dtype=torch.float64)
    rule.scatter_(1, label_atoms, 1.0)
    gen = torch.Generator().manual_seed(seed * 4 + _SEED_OFFSETS["codes"])
    n = n_train + n_test
    codes = torch.empty(n, n_atoms)
    pixels = torch.empty(n, IMAGE_SIDE**2)
    lo, hi = math.inf, -math.inf
    for start in range(0, n, _CHUNK):  # in chunks: float64 only a chunk at a time
        chunk = _draw_codes(min(_CHUNK, n - start), rates, gen)
        while True:  # images on which no label atom fires have no label: draw them again
            empty = torch.nonzero((chunk @ rule.T).max(1).values == 0)[:, 0]
            if len(empty) == 0:
                break
            chunk[empty] = _draw_codes(len(empty), rates, gen)
        part = chunk @ atoms
        lo, hi = min(lo, float(part.min())), max(hi, float(part.max()))
        codes[start:start + len(chunk)], pixels[start:start + len(chunk)] = chunk, part
    labels = (codes.double() @ rule.T).argmax(1)
    scale, offset = 1.0 / (hi - lo), -lo / (hi - lo)
    x = (pixels * scale + offset).clamp(0.0, 1.0)  # the clamp only absorbs rounding
    p_none = float(torch.prod(1 - rates[label_atoms.reshape(-1)]))
    max_cos, median_cos = _coherence_of(atoms)
    data = FashionMNIST(x[:n_train], labels[:n_train], x[n_train:], labels[n_train:],
                        classes=tuple(f"rule {c}" for c in range(n_classes)), source=f"planted:{coherence}:seed{seed}")
    return PlantedDictionary(data=data, atoms=atoms.float(), codes_train=codes[:n_train],
                             codes_test=codes[n_train:], firing_rates=rates, rule=rule,
                             label_atoms=label_atoms, scale=scale, offset=offset, coherence=coherence, seed=seed,
                             mean_l0=float(mean_l0), max_abs_cosine=max_cos, median_max_abs_cosine=median_cos,
                             label_rate_factor=1.0 / (1.0 - p_none))


# --- how well a learned dictionary recovers the planted one ------------------------------------------------
def _match_abs_cosine(atoms, learned, name: str = "learned") -> tuple[np.ndarray, np.ndarray]:
    """One-to-one match of each planted atom (rows of ``atoms: [N, D]``) to a distinct learned atom (rows of
    ``learned: [H, D]``, ``H >= N``; ``name``: what messages call it) maximising the total |cosine| (Hungarian
    assignment; an atom and its negative describe the same direction). Returns ``(match: [N], abs_cosine: [N])``."""
    from scipy.optimize import linear_sum_assignment

    a, b = _unit_norm_atoms("atoms", atoms), _unit_norm_atoms(name, learned)
    if a.shape[1] != b.shape[1] or len(b) < len(a):
        raise ValueError(f"{name} must have at least as many atoms as atoms and the same pixels, got "
                         f"{list(b.shape)} for {list(a.shape)}")
    cos = np.abs(a @ b.T)
    rows, cols = linear_sum_assignment(cos, maximize=True)
    match = np.empty(len(a), dtype=np.int64)
    match[rows] = cols
    return match, cos[np.arange(len(a)), match]


def random_image_atoms(x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """A dictionary of ``n`` random images of ``x: [M, 784]`` (pixels in [0, 1]; drawn without replacement with
    ``seed``), each minus the mean image of ``x`` (what an autoencoder's atoms add to its pre-encoder bias,
    initialised there), unit norm: ``[n, 784]``. The chance level of dictionary comparisons: it matches the data,
    not any learned structure."""
    x = _check_images("x", x, flat=True)
    _check_int("n", n, low=1, high=len(x), high_name="the number of images")
    _check_int("seed", seed, low=0)
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    atoms = x[idx].double() - x.double().mean(0)
    return (atoms / atoms.norm(dim=1, keepdim=True).clamp_min(1e-12)).float()


def recovery_scores(atoms, learned, codes: torch.Tensor | None = None, learned_codes: torch.Tensor | None = None,
                    baseline=None, threshold: float = _RECOVERED_COSINE) -> dict:
    """How well ``learned: [H, D]`` (rows are atoms; or an autoencoder, its ``W_dec``) recovers the planted
    ``atoms: [N, D]`` (``H >= N``): the Hungarian match on |cosine| (``_match_abs_cosine``), its mean ``mcc``, the
    share of planted atoms matched with |cosine| >= ``threshold``; with ``baseline: [M, D]`` (``M >= N``: e.g.
    ``random_image_atoms`` of the data) the same for it and ``score = mcc - baseline_mcc`` (a dictionary of data
    samples already matches smooth atoms well: the score is what learning adds). With the planted ``codes: [n, N]``
    of some images and the model's ``learned_codes: [n, H]`` of the same images: each matched unit's F1 as a
    detector of its planted atom (fires where the atom is active), and the learned units that fire on none."""
    _check_float("threshold", threshold, low=0.0, high=1.0)
    if (codes is None) != (learned_codes is None):
        raise ValueError(f"codes and learned_codes must come together (the planted and the learned codes of the same "
                         f"images), got only {'codes' if learned_codes is None else 'learned_codes'}")
    if codes is not None:
        codes, learned_codes = _as_numbers("codes", codes, ndim=2), _as_numbers("learned_codes", learned_codes, ndim=2)
    match, cosine = _match_abs_cosine(atoms, learned)
    out = {"match": match.tolist(), "abs_cosine": cosine.tolist(), "mcc": float(cosine.mean()),
           "recovered_share": float((cosine >= threshold).mean()), "threshold": threshold}
    if baseline is not None:
        _, base = _match_abs_cosine(atoms, baseline, "baseline")
        out.update(baseline_mcc=float(base.mean()), baseline_recovered_share=float((base >= threshold).mean()),
                   score=float(cosine.mean() - base.mean()))
    if codes is not None:
        truth, fired = codes > 0, learned_codes > 0
        if truth.shape[0] != fired.shape[0] or truth.shape[1] != len(match) or fired.shape[1] < match.max() + 1:
            raise ValueError(f"codes must be [n, {len(match)}] and learned_codes [n, units] of the same n images, "
                             f"got {list(truth.shape)} and {list(fired.shape)}")
        pred = fired[:, match]
        tp = (pred & truth).sum(0)
        denom = pred.sum(0) + truth.sum(0)
        f1 = np.divide(2 * tp, denom, out=np.full(len(match), np.nan), where=denom > 0)
        out.update(f1=f1.tolist(), f1_mean=float(np.nanmean(f1)) if np.isfinite(f1).any() else math.nan,
                   dead_units=int((~fired.any(0)).sum()), units=int(fired.shape[1]),
                   learned_mean_l0=float(fired.sum(1).mean()))
    return out
