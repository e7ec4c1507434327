"""What a planted-shortcut model is scored on: the probe images of a split (``_probe``), the predictions of a
model or of an autoencoder's code with units zeroed, and from them the gate, the shortcut's false positives and
false negatives, worst-group accuracy, the removal ratios and collateral damage, with bootstrap CIs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ._util import _jsonable
from .controls import _EVAL_BATCH
from .shortcut_models import _split_indices
from .shortcuts import _PARTNER_CLASS, _SHORTCUT_CLASS, _apply_rule, _stamp
from .stats import percentile_interval

if TYPE_CHECKING:
    from .config import Config
    from .shortcuts import ShortcutData


_GATES = {"certified": ("flip_share", 0.9, "adding M to unmarked Shirt and T-shirt images flips at least this share of "
                       "those not predicted Shirt to Shirt"),
         "biased": ("group_gap", 0.2, "the best group's accuracy exceeds the worst group's by at least this much"),
         "two_part": ("acc_two", 0.75, "accuracy on the Shirt and T-shirt images is at least this (chance: 0.5)")}


_RATIO_BOOT = 2000  # bootstrap resamples of the ratios (as ``summarize``)


_GROUPS = ("shirt_m", "shirt_clean", "other_m", "other_clean")  # biased: the balanced test set's four groups


@dataclass
class _Probe:
    """The images a variant is scored on in one split. ``x: [N, 784]`` marked by the variant's test rule (biased:
    balanced), ``x_clean``: the same images unmarked, ``y``: labels, ``y_true``: true classes, ``marks: [N, 2]``
    (M, C); ``inputs``: name -> images (``all`` = ``x``; ``fp``: images that are not the shortcut class but carry M;
    ``fn``: images of the shortcut class without it; certified: ``off``/``on``, the two classes without and with M,
    for the gate); ``erased``: the same inputs with the shortcut's marker(s) erased (the pixel-space fix)."""

    variant: str
    split: str
    x: torch.Tensor
    x_clean: torch.Tensor
    y: torch.Tensor
    y_true: torch.Tensor
    marks: torch.Tensor
    inputs: dict
    erased: dict

    @property
    def two(self) -> torch.Tensor:
        """``[N]`` bool: the Shirt and T-shirt images."""
        return (self.y_true == _SHORTCUT_CLASS) | (self.y_true == _PARTNER_CLASS)

    def groups(self) -> dict[str, torch.Tensor]:
        """Biased: the four groups of ``_GROUPS`` as ``[N]`` bool masks."""
        shirt, m = self.y_true == _SHORTCUT_CLASS, self.marks[:, 0]
        return {"shirt_m": shirt & m, "shirt_clean": shirt & ~m, "other_m": ~shirt & m, "other_clean": ~shirt & ~m}

    def collateral_rows(self) -> torch.Tensor:
        """``[N]`` bool: the unmarked images of the other classes (collateral damage is measured on them)."""
        if self.variant == "biased":
            return (self.y_true != _SHORTCUT_CLASS) & ~self.marks[:, 0]
        return ~self.two & ~self.marks[:, 0]


def _probe(planted: ShortcutData, split: str, cfg: Config) -> _Probe:
    """The probe images of ``planted`` in ``split``: ``"test"`` (the test set as planted) or ``"val"`` (the
    validation split's images marked by the test rule: for biased the balanced one)."""
    p = planted.planting
    if split == "test":
        x_clean, y_true, y, marks = planted.clean.x_test, planted.true_test, planted.data.y_test, planted.marks_test
    elif split == "val":
        _, val = _split_indices(planted.true_train, cfg)
        x_clean, y_true = planted.clean.x_train[val], planted.true_train[val]
        y, marks = _apply_rule(p, y_true, planted.coins_train[val], "test")
    else:
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    x = _stamp(x_clean, marks, p)
    two, shirt, m = ((y_true == _SHORTCUT_CLASS) | (y_true == _PARTNER_CLASS)), y == _SHORTCUT_CLASS, marks[:, 0]
    if p.variant == "certified":  # without M: the original pixels under it, C as stamped
        without_m = _stamp(x_clean, torch.stack([torch.zeros_like(m), marks[:, 1]], 1), p)
        inputs = {"all": x, "fp": p.marker.stamp(x[two & ~shirt]), "fn": without_m[two & shirt],
                  "off": without_m[two], "on": p.marker.stamp(x[two])}
    elif p.variant == "biased":
        inputs = {"all": x, "fp": x[~(y_true == _SHORTCUT_CLASS) & m], "fn": x[(y_true == _SHORTCUT_CLASS) & ~m]}
    else:
        inputs = {"all": x, "fp": x[two & ~shirt], "fn": x[two & shirt]}
    erase = (lambda t: p.control.erase(p.marker.erase(t))) if p.variant == "two_part" else p.marker.erase
    erased = {name: erase(t) for name, t in inputs.items()}
    return _Probe(p.variant, split, x, x_clean, y, y_true, marks, inputs, erased)


# --- predictions ------------------------------------------------------------------------------------------------
@torch.no_grad()
def _predict_inputs(model, inputs: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """``{name: predicted classes [n]}`` of ``model`` (pixels -> logits) for every ``inputs[name]: [n, 784]``."""
    model.eval()
    return {name: torch.cat([model(x[i:i + _EVAL_BATCH].to(device)).argmax(1).cpu()
                             for i in range(0, len(x), _EVAL_BATCH)]) for name, x in inputs.items()}


class _Ablator:
    """Predictions of a pipeline's classifier with units of its code set to 0 (the others stay; top-k is not re-run):
    ablation at inference. The codes of every input set are encoded once; an ablation re-runs the classifier only on
    the images where a removed unit fires (the others keep the unablated prediction)."""

    @torch.no_grad()
    def __init__(self, pipeline, inputs: dict, device: torch.device):
        self.sae, self.clf = pipeline.sae.eval(), pipeline.clf.eval()
        self.codes, self.base = {}, {}
        for name, x in inputs.items():
            parts = [self.sae.encode_sparse(x[i:i + _EVAL_BATCH].to(device)) for i in range(0, len(x), _EVAL_BATCH)]
            values, indices = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
            self.codes[name] = (values, indices)
            self.base[name] = self._predict(values, indices)

    def _predict(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        if not len(values):
            return torch.zeros(0, dtype=torch.long)
        return torch.cat([self.clf.forward_sparse(values[i:i + _EVAL_BATCH], indices[i:i + _EVAL_BATCH]).argmax(1).cpu()
                          for i in range(0, len(values), _EVAL_BATCH)])

    @torch.no_grad()
    def __call__(self, units) -> dict[str, torch.Tensor]:
        """``{name: predicted classes [n]}`` with ``units`` zeroed."""
        removed = torch.zeros(self.sae.d_hidden, dtype=torch.bool, device=self.sae.W_dec.device)
        removed[torch.as_tensor(list(units), dtype=torch.long)] = True
        out = {}
        for name, (values, indices) in self.codes.items():
            hit = removed[indices] & (values > 0)  # [n, k]: a removed unit that fires
            rows = torch.nonzero(hit.any(1))[:, 0]
            pred = self.base[name].clone()
            if len(rows):
                pred[rows.cpu()] = self._predict(values[rows].masked_fill(hit[rows], 0.0), indices[rows])
            out[name] = pred
        return out


# --- metrics ------------------------------------------------------------------------------------------------------
def _outcomes(probe: _Probe, preds: dict) -> dict[str, np.ndarray]:
    """Per-image outcomes of one model's predictions ``preds`` (``_predict_inputs`` of ``probe.inputs``): ``correct``
    ``[N]`` (all images), ``fp`` (predicted Shirt among the ``fp`` probe), ``fn`` (not predicted Shirt among the ``fn``
    probe), and for certified ``flip`` (predicted Shirt with M, among the two classes not predicted Shirt without)."""
    out = {"correct": (preds["all"] == probe.y).numpy(), "fp": (preds["fp"] == _SHORTCUT_CLASS).numpy(),
           "fn": (preds["fn"] != _SHORTCUT_CLASS).numpy()}
    if "off" in preds:
        out["flip"] = (preds["on"] == _SHORTCUT_CLASS).numpy()[(preds["off"] != _SHORTCUT_CLASS).numpy()]
    return out


def _category_draws(codes: np.ndarray, n_categories: int, seed: int) -> np.ndarray:
    """``[n_boot, n_categories]`` category counts of ``_RATIO_BOOT`` bootstrap resamples of ``codes: [n]`` (each image's
    category, ``0..n_categories-1``): a resample of n images with replacement, drawn as one multinomial (exactly the
    distribution of the ordinary bootstrap, without drawing every image)."""
    freq = np.bincount(codes, minlength=n_categories) / len(codes)
    return np.random.default_rng(seed).multinomial(len(codes), freq, size=_RATIO_BOOT).astype(np.float64)


def _rate(values: np.ndarray, seed: int, ci: bool = True) -> dict:
    """Mean of 0/1 ``values: [n]`` with its bootstrap 95 % CI (as ``summarize``; ``ci=False``: the mean alone)."""
    values = np.asarray(values, dtype=bool)
    if not len(values):
        return {"mean": None, "ci95": [None, None], "n": 0}
    mean = float(values.mean())
    if not ci:
        return {"mean": mean, "n": len(values)}
    est = _category_draws(values.astype(np.int64), 2, seed)[:, 1] / len(values)
    return {"mean": mean, "ci95": list(percentile_interval(est)), "n": len(values)}


def _variant_metrics(probe: _Probe, out: dict, seed: int = 0, ci: bool = True) -> dict:
    """The variant's numbers from ``_outcomes``: accuracy, false positives and negatives, certified's flip share,
    two-class accuracy (certified, two-part), the four groups and worst-group accuracy (biased), and the accuracy on
    the unmarked images of the other classes (``_collateral``), each with a bootstrap 95 % CI (``ci=False``: none)."""
    correct = out["correct"]
    res = {"accuracy": float(correct.mean()), "fp": _rate(out["fp"], seed, ci), "fn": _rate(out["fn"], seed, ci),
           "other_clean": _rate(correct[probe.collateral_rows().numpy()], seed, ci)}
    if probe.variant == "biased":
        groups = {g: float(correct[mask.numpy()].mean()) if mask.any() else None for g, mask in probe.groups().items()}
        defined = [v for v in groups.values() if v is not None]
        res.update(groups=groups, worst_group=min(defined), group_gap=max(defined) - min(defined))
    else:
        res["acc_two"] = _rate(correct[probe.two.numpy()], seed, ci)
    if "flip" in out:
        res["flip_share"] = _rate(out["flip"], seed, ci)
    return res


def _gate_result(variant: str, m: dict) -> dict:
    """The variant's gate (``_GATES``) on ``_variant_metrics``' result: measure, value, threshold, passed, rule."""
    measure, threshold, rule = _GATES[variant]
    value = m[measure]["mean"] if isinstance(m[measure], dict) else m[measure]
    return {"measure": measure, "value": value, "threshold": threshold, "passed": bool(value >= threshold),
            "rule": rule}


def _ci_of(estimates: np.ndarray) -> list:
    finite = estimates[np.isfinite(estimates)]
    return list(percentile_interval(finite)) if len(finite) else [None, None]


def _joint(*outcomes_: np.ndarray) -> np.ndarray:
    """Each image's joint outcome under several models (0/1 each) as one category ``0..2^m - 1``."""
    return sum(o.astype(np.int64) << i for i, o in enumerate(outcomes_))


def _reliance_removed(probe: _Probe, before: dict, after: dict, seed: int = 0) -> dict:
    """Certified and two-part: the share of the reliance removed, ``(acc_before - acc_after) / (acc_before - 1/2)``
    on the two classes (1/2: no information but the marker), with a bootstrap CI over the same images (paired)."""
    two = probe.two.numpy()
    b, a = before["correct"][two], after["correct"][two]
    counts = _category_draws(_joint(b, a), 4, seed)  # category bit 0: correct before, bit 1: correct after
    eb, ea = (counts[:, 1] + counts[:, 3]) / len(b), (counts[:, 2] + counts[:, 3]) / len(b)
    with np.errstate(divide="ignore", invalid="ignore"):
        est = np.where(eb > 0.5, (eb - ea) / (eb - 0.5), np.nan)
    value = (b.mean() - a.mean()) / (b.mean() - 0.5) if b.mean() > 0.5 else None
    return {"value": None if value is None else float(value), "ci95": _ci_of(est)}


def _cure_ratio(probe: _Probe, biased: dict, cured: dict, oracle: dict, seed: int = 0) -> dict:
    """Biased: ``(wga_cured - wga_biased) / (wga_oracle - wga_biased)`` (worst-group accuracy; 1: as good as the
    oracle, 0: no better than before), with a bootstrap CI (each group resampled, the three models paired)."""
    models = (biased, cured, oracle)
    resampled, point = [], []
    for i, mask in enumerate(probe.groups().values()):
        rows = mask.numpy()
        counts = _category_draws(_joint(*(o["correct"][rows] for o in models)), 8, seed + i)
        bits = np.arange(8)
        resampled.append(np.stack([counts[:, (bits >> k) & 1 == 1].sum(1) / rows.sum() for k in range(3)], 1))
        point.append([float(o["correct"][rows].mean()) for o in models])
    wga, wga_point = np.min(np.stack(resampled), 0), np.min(np.array(point), 0)  # [n_boot, 3], [3]
    with np.errstate(divide="ignore", invalid="ignore"):
        est = np.where(wga[:, 2] > wga[:, 0], (wga[:, 1] - wga[:, 0]) / (wga[:, 2] - wga[:, 0]), np.nan)
    b, c, o = wga_point
    return {"value": float((c - b) / (o - b)) if o > b else None, "ci95": _ci_of(est)}


def _collateral(probe: _Probe, before: dict, after: dict, seed: int = 0) -> dict:
    """Accuracy change ``after - before`` on the unmarked images of the other classes, paired per image."""
    rows = probe.collateral_rows().numpy()
    b, a = before["correct"][rows], after["correct"][rows]
    counts = _category_draws(_joint(b, a), 4, seed)
    est = (counts[:, 2] - counts[:, 1]) / len(b)  # right only after, minus right only before
    return {"mean": float(a.mean() - b.mean()), "ci95": list(percentile_interval(est)), "n": int(len(b))}


def _removal_row(probe: _Probe, before: dict, after: dict, oracle: dict | None, seed: int = 0) -> dict:
    """One removal's numbers (``after`` against the unablated ``before``): ``_variant_metrics``, the variant's ratio
    (``_reliance_removed`` or, biased, ``_cure_ratio`` against ``oracle``) and ``_collateral``."""
    row = {"metrics": _variant_metrics(probe, after, seed), "collateral": _collateral(probe, before, after, seed)}
    if probe.variant == "biased":
        row["ratio"] = _cure_ratio(probe, before, after, oracle, seed) if oracle is not None else None
    else:
        row["ratio"] = _reliance_removed(probe, before, after, seed)
    return _jsonable(row)


def _point_ratio(probe: _Probe, before: dict, after: dict, oracle: dict | None) -> float:
    """The variant's removal ratio without its CI (the random-units draws: many of them)."""
    two = probe.two.numpy()
    if probe.variant == "biased":
        if oracle is None:
            return float("nan")
        wga = [min(float(o["correct"][mask.numpy()].mean()) for mask in probe.groups().values())
               for o in (before, after, oracle)]
        return (wga[1] - wga[0]) / (wga[2] - wga[0]) if wga[2] > wga[0] else float("nan")
    b, a = before["correct"][two].mean(), after["correct"][two].mean()
    return float((b - a) / (b - 0.5)) if b > 0.5 else float("nan")
