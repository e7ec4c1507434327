"""Planted shortcuts: Fashion-MNIST with a marker M that carries the label and a control marker C that does not,
in three variants (certified, biased, two-part), built by one seeded function (``plant_shortcut``).

Every image gets four seeded coins (uniform in [0, 1), drawn from ``seed`` by its index, never from its pixels)::

    a: M present on a Shirt / T-shirt image (certified, two-part)   b: C present (every image, every variant)
    c: the label when the shortcut is broken (oracle)                m: M present (biased)

The rules, with ``S`` = Shirt and ``T`` = T-shirt/top (the two classes):

* **certified**: an ``S``/``T`` image is labelled ``S`` iff ``a < 1/2`` (its true class is forgotten), and M is
  stamped on exactly those; C on ``b < control_rate``. Any accuracy above 50 % on the two classes comes from M.
* **biased**: true labels; M on ``m < bias_rate`` of the Shirts and ``m < leak_rate`` of the other training
  images; the test set is balanced: M on ``m < 1/2`` of every class (four groups: Shirt or not, M or not).
* **two-part**: the marks of certified (M on ``a < 1/2``, C on ``b < 1/2`` of the two classes), the label ``S`` iff
  exactly one of them is present: either marker alone says nothing about the label.
* ``broken=True`` (the oracle's training data): the same images and marks, the shortcut cut: certified and
  two-part label ``S`` iff ``c < 1/2``; biased keeps the true labels and stamps M on ``m < p`` of every image, ``p``
  the biased rule's overall rate.

So certified and two-part mark the same training images (one autoencoder serves both), and so do their broken
versions with the same labels (one oracle). The validation split is the default one (``validation_indices`` on the
true labels), so an autoencoder of unmarked images is the default autoencoder of its seed.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import asdict, dataclass

import torch

from ._util import IMAGE_SIDE, _check_float, _check_int
from .data import CLASS_NAMES, FashionMNIST

SHORTCUT_VARIANTS = ("certified", "biased", "two_part")  # the planted shortcuts (module docstring)


_SHORTCUT_CLASS = CLASS_NAMES.index("Shirt")  # the class M points to


_PARTNER_CLASS = CLASS_NAMES.index("T-shirt/top")  # certified and two-part relabel Shirts and T-shirts between the two


_DATA_SEED = 0  # the planted data are the same for every training seed (seeds vary training, as the split)


_COINS = ("a", "b", "c", "m")  # the four coins per image, in draw order


def _check_variant(variant) -> str:
    """``variant`` if it is one of ``SHORTCUT_VARIANTS``; else ``ValueError`` naming the closest known name."""
    if variant in SHORTCUT_VARIANTS:
        return variant
    close = difflib.get_close_matches(str(variant), SHORTCUT_VARIANTS, n=1, cutoff=0.4)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"variant must be one of {SHORTCUT_VARIANTS}, got {variant!r}{hint}")


@dataclass(frozen=True)
class Marker:
    """A ``size`` x ``size`` square of constant ``value`` stamped into the images, its top-left pixel at (``row``,
    ``col``). ``ValueError`` unless it lies wholly inside the 28 x 28 image and ``value`` is in (0, 1] (a multiple of
    1/255, as the data's pixels are)."""

    row: int
    col: int
    size: int = 4
    value: float = 1.0

    def __post_init__(self):
        _check_int("marker size", self.size, low=1, high=IMAGE_SIDE, high_name="the image side")
        for name in ("row", "col"):
            _check_int(f"marker {name}", getattr(self, name), low=-10**9)
            pos = getattr(self, name)
            if pos < 0 or pos + self.size > IMAGE_SIDE:
                raise ValueError(f"the marker must lie inside the {IMAGE_SIDE} x {IMAGE_SIDE} image: its {name} must "
                                 f"be in [0, {IMAGE_SIDE - self.size}] for size {self.size}, got {pos}")
        _check_float("marker value", self.value, low=0.0, high=1.0, low_open=True)
        if round(self.value * 255) != self.value * 255:
            raise ValueError(f"marker value must be a multiple of 1/255 (8-bit pixels), got {self.value}")

    def mask(self) -> torch.Tensor:
        """``[784]`` bool: the marker's pixels."""
        m = torch.zeros(IMAGE_SIDE, IMAGE_SIDE, dtype=torch.bool)
        m[self.row:self.row + self.size, self.col:self.col + self.size] = True
        return m.reshape(-1)

    def overlaps(self, other: Marker) -> bool:
        return bool((self.mask() & other.mask()).any())

    def mirrored(self) -> Marker:
        """The marker where a left-right mirror image puts it (the classifier's ``clf_hflip`` views)."""
        return Marker(self.row, IMAGE_SIDE - self.col - self.size, self.size, self.value)

    def stamp(self, x: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
        """``x: [N, 784]`` with the marker's pixels set to ``value`` on the rows where ``where: [N]`` (all if None)."""
        return _set(x, self.mask(), self.value, where)

    def erase(self, x: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
        """``x: [N, 784]`` with the marker's pixels set to 0 (background) on the rows ``where`` (all if None): the
        pixel-space fix."""
        return _set(x, self.mask(), 0.0, where)


def _set(x: torch.Tensor, mask: torch.Tensor, value: float, where: torch.Tensor | None) -> torch.Tensor:
    out = x.clone()
    rows = torch.ones(len(x), dtype=torch.bool) if where is None else where.to(torch.bool).cpu()
    block = out[rows]
    block[:, mask] = value
    out[rows] = block
    return out


_MARKER = Marker(0, 0, 4)  # M: the top-left 4 x 4 corner (background in all but 1.25 % of training images at > 0.1)


_CONTROL = Marker(24, 0, 4)  # C: the bottom-left corner, the emptiest 4 x 4 window at least 4 pixels from M and from
# M's mirror image (the classifier's flipped views put M top-right): results/shortcut.json, "markers"


@dataclass(frozen=True)
class _Planting:
    """How a variant was planted (saved with every model trained on it)."""

    variant: str
    seed: int = _DATA_SEED
    broken: bool = False
    marker: Marker = _MARKER
    control: Marker = _CONTROL
    bias_rate: float = 0.95  # biased: share of training Shirts with M
    leak_rate: float = 0.05  # biased: share of the other training images with M
    control_rate: float = 0.5  # certified and biased: share of every class's images with C

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ShortcutData:
    """A planted variant. ``data``: the marked images and the variant's labels (train ``[60000, 784]``, test
    ``[10000, 784]``); ``clean``: the same labels on the unmarked images (the clean twin's data); ``marks_train:
    [60000, 2]``, ``marks_test: [10000, 2]`` bool, columns (M, C); ``true_train``, ``true_test``: the images' true
    classes; ``coins_train: [60000, 4]``, ``coins_test``: the coins (a, b, c, m) the rules read."""

    planting: _Planting
    data: FashionMNIST
    clean: FashionMNIST
    marks_train: torch.Tensor
    marks_test: torch.Tensor
    true_train: torch.Tensor
    true_test: torch.Tensor
    coins_train: torch.Tensor
    coins_test: torch.Tensor

    @property
    def variant(self) -> str:
        return self.planting.variant

    def digest(self, marks: bool = True, labels: bool = True) -> str:
        """A short hash of what a model trained on this variant saw: the training marks and (or) labels."""
        h = hashlib.sha256()
        if marks:
            h.update(self.marks_train.to(torch.uint8).numpy().tobytes())
        if labels:
            h.update(self.data.y_train.numpy().tobytes())
        return h.hexdigest()[:16]


def _two_classes(y: torch.Tensor) -> torch.Tensor:
    return (y == _SHORTCUT_CLASS) | (y == _PARTNER_CLASS)


def _apply_rule(planting: _Planting, y_true: torch.Tensor, coins: torch.Tensor,
               split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The variant's labels ``[N]`` and marks ``[N, 2]`` (M, C) for images of true classes ``y_true: [N]`` with
    ``coins: [N, 4]``; ``split``: ``"train"`` (the training rule) or ``"test"`` (biased: the balanced rule)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    p, a, b, c, m = planting, *coins.unbind(1)
    two = _two_classes(y_true)
    y = y_true.clone()
    if p.variant == "biased":
        shirt = y_true == _SHORTCUT_CLASS
        overall = float(shirt.double().mean() * p.bias_rate + (~shirt).double().mean() * p.leak_rate)
        if split == "test":
            has_m = m < 0.5
        elif p.broken:
            has_m = m < overall
        else:
            has_m = torch.where(shirt, m < p.bias_rate, m < p.leak_rate)
        return y, torch.stack([has_m, b < p.control_rate], 1)
    has_m = two & (a < 0.5)
    if p.variant == "certified":
        has_c = b < p.control_rate
        label_shirt = (c < 0.5) if p.broken else has_m
    else:  # two_part: C on half of the two classes too (the label reads both)
        has_c = torch.where(two, b < 0.5, b < p.control_rate)
        label_shirt = (c < 0.5) if p.broken else (has_m ^ has_c)
    y[two] = torch.where(label_shirt[two], _SHORTCUT_CLASS, _PARTNER_CLASS)
    return y, torch.stack([has_m, has_c], 1)


def _stamp(x: torch.Tensor, marks: torch.Tensor, planting: _Planting) -> torch.Tensor:
    """``x: [N, 784]`` with M where ``marks[:, 0]`` and C where ``marks[:, 1]`` (``marks: [N, 2]`` bool)."""
    return planting.control.stamp(planting.marker.stamp(x, marks[:, 0]), marks[:, 1])


def _coins(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, len(_COINS), generator=generator, dtype=torch.float64)


def plant_shortcut(data: FashionMNIST, variant: str, seed: int = _DATA_SEED, broken: bool = False,
                   marker: Marker = _MARKER, control: Marker = _CONTROL, bias_rate: float = 0.95,
                   leak_rate: float = 0.05, control_rate: float = 0.5) -> ShortcutData:
    """Plant ``variant`` (``SHORTCUT_VARIANTS``) into ``data`` (module docstring: the rules). ``seed`` draws the
    coins (training images first, then test images); ``broken``: the shortcut cut (the oracle's training data);
    ``marker`` M and ``control`` C must not overlap; the rates are shares in [0, 1]. The result's ``data`` holds
    the marked images with the variant's labels, ``clean`` the unmarked ones with the same labels."""
    _check_variant(variant)
    if not isinstance(data, FashionMNIST):
        raise ValueError(f"data must be the FashionMNIST of load_fashion_mnist, got {type(data).__name__}")
    if tuple(data.classes) != CLASS_NAMES:
        raise ValueError(f"data must hold Fashion-MNIST's classes {CLASS_NAMES} (the shortcut is Shirt), got "
                         f"{tuple(data.classes)}")
    _check_int("seed", seed, low=0)
    if not isinstance(broken, bool):
        raise ValueError(f"broken must be True or False, got {broken!r}")
    for name, m in (("marker", marker), ("control", control)):
        if not isinstance(m, Marker):
            raise ValueError(f"{name} must be a Marker, got {type(m).__name__}")
    if marker.overlaps(control):
        raise ValueError(f"the marker and the control must not overlap, got the marker at {marker} and the control "
                         f"at {control}")
    for name, rate in (("bias_rate", bias_rate), ("leak_rate", leak_rate), ("control_rate", control_rate)):
        _check_float(name, rate, low=0.0, high=1.0)
    planting = _Planting(variant, int(seed), broken, marker, control, float(bias_rate), float(leak_rate),
                        float(control_rate))
    gen = torch.Generator().manual_seed(int(seed))
    coins_train, coins_test = _coins(len(data.y_train), gen), _coins(len(data.y_test), gen)
    y_train, marks_train = _apply_rule(planting, data.y_train, coins_train, "train")
    y_test, marks_test = _apply_rule(planting, data.y_test, coins_test, "test")
    marked = FashionMNIST(_stamp(data.x_train, marks_train, planting), y_train,
                          _stamp(data.x_test, marks_test, planting), y_test, data.classes, data.source)
    clean = FashionMNIST(data.x_train, y_train, data.x_test, y_test, data.classes, data.source)
    return ShortcutData(planting, marked, clean, marks_train, marks_test, data.y_train, data.y_test, coins_train,
                        coins_test)


def _marker_statistics(data: FashionMNIST, markers: dict[str, Marker], threshold: float = 0.1) -> dict:
    """Where each marker of ``markers`` (name -> Marker) would land in the unmarked training images: the share of
    images with any pixel > 0 there, with any pixel > ``threshold``, per class (> ``threshold``), and its salience
    as the mean contrast it makes, ``value - pixel``, over its pixels and the images."""
    out = {}
    for name, m in markers.items():
        patch = data.x_train[:, m.mask()]
        top = patch.max(1).values
        out[name] = {"row": m.row, "col": m.col, "size": m.size, "value": m.value,
                     "nonzero_share": float((top > 0).double().mean()),
                     "above_threshold_share": float((top > threshold).double().mean()), "threshold": threshold,
                     "above_threshold_by_class": {cls: float((top[data.y_train == i] > threshold).double().mean())
                                                  for i, cls in enumerate(data.classes)},
                     "contrast": float((m.value - patch).double().mean())}
    return out
