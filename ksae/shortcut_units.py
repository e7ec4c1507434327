"""Which code units carry a planted shortcut, and does removing them cure the model: the atom closest to the marker
and its F1 as a detector (recovery); units ranked by three scorers on the validation split (finding); the top units
of each scorer zeroed at inference, against many random draws of as many units (removal). Units are chosen on the
validation split and scored on the test set."""

from __future__ import annotations

import numpy as np
import torch

from .attribution import rescale_contributions
from .shortcut_eval import _Ablator, _outcomes, _point_ratio, _removal_row, _variant_metrics

_SCORERS = {  # how a user who suspects marked images would rank units (on the validation split), Shirt as target
    "contribution": "mean decoder-weighted (Rescale) contribution to the Shirt logit on marked images",
    "contribution_vs_clean": "the same minus the same images' contribution without the markers",
    "activation": "mean activation on marked images minus on the same images without the markers",
}


_MARKER_F1 = 0.5  # a unit is a marker unit (the planted answer in unit space) when its firing detects M on the
# validation images with at least this F1


_RANDOM_QUANTILES = (0.025, 0.975)  # the random-units band


@torch.no_grad()
def _firing_f1(sae, x: torch.Tensor, present: torch.Tensor, device: torch.device) -> np.ndarray:
    """F1 of each unit's firing (activation > 0) as a detector of ``present: [N]`` bool on images ``x: [N, 784]``:
    ``[H]``, 0 where a unit never fires and the marker is absent."""
    sae.eval()
    fired = torch.cat([(sae.encode(x[i:i + 4096].to(device)) > 0).cpu() for i in range(0, len(x), 4096)])
    p = present.to(torch.bool)[:, None]
    tp = (fired & p).sum(0).double()
    denom = fired.sum(0).double() + p.sum().double()
    return torch.where(denom > 0, 2 * tp / denom.clamp_min(1), 0.0).numpy()


def _atom_cosines(sae, mask: torch.Tensor) -> np.ndarray:
    """Cosine of every decoder atom (rows of ``W_dec``, unit norm) with a marker's pixels (``mask: [784]``): ``[H]``."""
    m = mask.to(sae.W_dec.dtype).to(sae.W_dec.device)
    return (sae.W_dec.detach() @ (m / m.norm()) / sae.W_dec.detach().norm(dim=1).clamp_min(1e-12)).cpu().numpy()


def _recovery(sae, planting, probe_val, probe_test, device: torch.device) -> dict:
    """The units that carry M and C in ``sae``'s dictionary: per marker the atom closest to it (cosine) and that
    unit's F1 as a detector of the marker on the test images; the marker units (validation F1 >= ``_MARKER_F1``)."""
    out = {}
    for k, (name, marker) in enumerate((("M", planting.marker), ("C", planting.control))):
        cos = _atom_cosines(sae, marker.mask())
        f1_val = _firing_f1(sae, probe_val.x, probe_val.marks[:, k], device)
        f1_test = _firing_f1(sae, probe_test.x, probe_test.marks[:, k], device)
        unit = int(np.argmax(cos))
        detectors = np.flatnonzero(f1_val >= _MARKER_F1)
        out[name] = {"closest_unit": unit, "cosine": float(cos[unit]), "f1_test": float(f1_test[unit]),
                     "best_f1_unit": int(np.argmax(f1_val)), "best_f1_val": float(f1_val.max()),
                     "best_f1_test": float(f1_test[int(np.argmax(f1_val))]),
                     "units": detectors[np.argsort(-f1_val[detectors])].tolist(),
                     "units_f1_test": [float(f1_test[j]) for j in detectors[np.argsort(-f1_val[detectors])]]}
    return out


@torch.no_grad()
def _unit_scores(pipeline, x_marked: torch.Tensor, x_clean: torch.Tensor, target: int,
                device: torch.device) -> dict[str, np.ndarray]:
    """Every scorer of ``_SCORERS`` for every unit: ``x_marked, x_clean: [N, 784]`` (the same images with and
    without the markers), ``target``: the class explained -> ``{scorer: [H]}``."""
    sae, clf = pipeline.sae, pipeline.clf
    z_m, z_c = sae.encode(x_marked.to(device)), sae.encode(x_clean.to(device))
    t = torch.full((len(z_m),), target, dtype=torch.long, device=device)
    c_m, c_c = rescale_contributions(clf, z_m, t), rescale_contributions(clf, z_c, t)
    return {"contribution": c_m.mean(0).cpu().numpy(), "contribution_vs_clean": (c_m - c_c).mean(0).cpu().numpy(),
            "activation": (z_m - z_c).mean(0).cpu().numpy()}


def _ranked(scores: np.ndarray) -> np.ndarray:
    """Units by decreasing score (ties by unit id)."""
    return np.lexsort((np.arange(len(scores)), -scores))


def _finding(scores: dict[str, np.ndarray], marker_units: list[int], control_unit: int, candidates: np.ndarray) -> dict:
    """Per scorer: its top 10 units, the rank (1 = top) of the best-ranked marker unit (None without marker units)
    and of C's closest unit, precision at 1 (the top unit is a marker unit), and what a random order gives at 1."""
    out = {}
    for name, s in scores.items():
        order = _ranked(s)
        position = {int(u): i + 1 for i, u in enumerate(order)}
        ranks = [position[u] for u in marker_units]
        out[name] = {"top": order[:10].tolist(), "marker_rank": min(ranks) if ranks else None,
                     "precision_at_1": float(int(order[0]) in marker_units) if marker_units else None,
                     "control_rank": position[int(control_unit)],
                     "chance_at_1": len(set(marker_units) & set(candidates.tolist())) / max(len(candidates), 1)}
    return out


def _random_summary(values: dict[str, list[float]]) -> dict:
    out = {}
    for key, v in values.items():
        a = np.asarray(v, dtype=np.float64)
        a = a[np.isfinite(a)]
        out[key] = ({"mean": float(a.mean()), "q025": float(np.quantile(a, _RANDOM_QUANTILES[0])),
                     "q975": float(np.quantile(a, _RANDOM_QUANTILES[1])), "n": int(len(a))}
                    if len(a) else {"mean": None, "q025": None, "q975": None, "n": 0})
    return out


def _point(probe, before: dict, after: dict, oracle: dict | None) -> dict[str, float]:
    m = _variant_metrics(probe, after, ci=False)
    rows = probe.collateral_rows().numpy()
    point = {"fp": m["fp"]["mean"], "fn": m["fn"]["mean"], "ratio": _point_ratio(probe, before, after, oracle),
             "collateral": float(after["correct"][rows].mean() - before["correct"][rows].mean())}
    point["worst_group" if probe.variant == "biased" else "acc_two"] = (
        m["worst_group"] if probe.variant == "biased" else m["acc_two"]["mean"])
    return point


def _removal(pipeline, probe, before: dict, oracle: dict | None, rankings: dict[str, np.ndarray], ns, candidates,
            n_random: int, device: torch.device, extra: dict | None = None, seed: int = 0) -> dict:
    """Zero units at inference (``_Ablator``) and score on ``probe`` (the test set): the top ``n`` of each
    ranking (``rankings``: scorer -> units in order) for every ``n`` of ``ns``, the unit sets of ``extra`` (name ->
    units, e.g. the marker units), and ``n_random`` seeded draws of ``n`` units from ``candidates`` for every ``n``
    (the control). ``before``/``oracle``: ``_outcomes`` of the unablated model and the oracle."""
    ablate = _Ablator(pipeline, probe.inputs, device)

    def after(units) -> dict:
        return _outcomes(probe, ablate(units))

    out = {"scorers": {name: {str(n): _removal_row(probe, before, after(order[:n].tolist()), oracle, seed)
                              for n in ns} for name, order in rankings.items()},
           "sets": {name: {"units": list(map(int, units)),
                           **_removal_row(probe, before, after(units), oracle, seed)} for name, units in
                    (extra or {}).items() if len(units)}}
    rng = np.random.default_rng(seed)
    random: dict = {}
    for n in ns:
        draws: dict[str, list[float]] = {}
        for _ in range(n_random):
            units = rng.choice(candidates, size=min(n, len(candidates)), replace=False)
            for key, v in _point(probe, before, after(units.tolist()), oracle).items():
                draws.setdefault(key, []).append(v)
        random[str(n)] = _random_summary(draws)
    out["random"] = random
    for rows in out["scorers"].values():
        for n, row in rows.items():
            r, band = row["ratio"], random[n]["ratio"]
            row["beats_random"] = bool(r is not None and r["value"] is not None and r["ci95"][0] is not None
                                       and band["q975"] is not None and r["value"] > band["q975"] and r["ci95"][0] > 0)
    return out


def _best_scorer(pipeline, probe_val, rankings: dict[str, np.ndarray], ns, device: torch.device) -> tuple[str, dict]:
    """The scorer whose top ``n`` units (for ``n`` in ``ns``), zeroed at inference, give the highest mean
    worst-group accuracy on the validation probe (biased; SHIFT retrains on its units): ``(name, {name: mean})``."""
    ablate = _Ablator(pipeline, probe_val.inputs, device)
    means = {}
    for name, order in rankings.items():
        wga = [_variant_metrics(probe_val, _outcomes(probe_val, ablate(order[:n].tolist())), ci=False)["worst_group"]
               for n in ns]
        means[name] = float(np.mean(wga))
    return max(means, key=lambda k: (means[k], -list(means).index(k))), means
