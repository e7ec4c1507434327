"""Stability of the dictionary across training seeds: which units come back when the seed changes.

Paulo & Belrose (2025) find that only about 30 % of a sparse autoencoder's features recur across training
seeds. Here each unit of a reference seed is matched to one unit of every other seed by its decoder atom
(Hungarian assignment on cosine similarity, ``scipy.optimize.linear_sum_assignment``: one-to-one, the total
cosine as large as it can be), and a unit counts as *stable* when its matched cosine reaches
``STABLE_COSINE`` in every other seed. The control is the same matching against an untrained dictionary
(the initialisation of another seed): what a match of unrelated atoms gives. ``recurrence`` does the same for
every seed as the reference, on decoder atoms and encoder rows, with Paulo & Belrose's "shared" units and several
cosine thresholds (the variants study).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ._util import (
    _as_numbers,
    _check_bool,
    _check_device,
    _check_float,
    _check_instance,
    _check_int,
    _check_ints,
    _check_path,
    _check_result,
    _unit_norm_atoms,
)
from .checkpoints import CheckpointError, load_checkpoint, load_or_train
from .config import Config
from .controls import untrained_autoencoder
from .data import FashionMNIST
from .stats import bootstrap_estimates, percentile_interval
from .units import UnitStats, _check_stats

STABLE_COSINE = 0.9  # a unit is stable when its matched atom has at least this cosine in every other seed


STABILITY_BOOTSTRAP = 2000  # bootstrap resamples of the group comparisons (units resampled within each group)


_RECURRENCE_COSINES = (0.5, 0.7, 0.9)  # ``recurrence`` counts the units whose matched cosine reaches each


_SHARED_COSINE = 0.7  # Paulo & Belrose (2025): a unit is "shared" with another seed when its matched decoder
# atom and its matched encoder row both reach this cosine and the two matches pick the same unit


def match_atoms(atoms_a, atoms_b) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one match of dictionary ``atoms_a: [H, D]`` to ``atoms_b: [H, D]`` (rows are atoms; tensors,
    arrays or autoencoders) maximising the total cosine similarity (Hungarian assignment).

    Returns ``(match, cosine)``, both ``[H]``: unit ``i`` of ``a`` is matched to unit ``match[i]`` of ``b``
    with cosine ``cosine[i]`` (signed: an atom and its negative are different parts)."""
    from scipy.optimize import linear_sum_assignment

    a, b = _unit_norm_atoms("atoms_a", atoms_a), _unit_norm_atoms("atoms_b", atoms_b)
    if a.shape != b.shape:
        raise ValueError(f"atoms_a and atoms_b must have the same shape [units, pixels], got {list(a.shape)} "
                         f"and {list(b.shape)}")
    cos = a @ b.T  # [H, H]
    rows, cols = linear_sum_assignment(cos, maximize=True)
    match = np.empty(len(a), dtype=np.int64)
    match[rows] = cols
    return match, cos[np.arange(len(a)), match]


def untrained_atoms(cfg: Config, seed: int) -> torch.Tensor:
    """``[H, D]`` decoder atoms of the autoencoder ``cfg`` describes as initialised for training seed ``seed``
    (``untrained_autoencoder``: what training starts from), without touching the caller's random state: the
    control dictionary."""
    _check_instance("cfg", cfg, Config)
    _check_int("seed", seed, low=0)
    with torch.random.fork_rng(devices=[]):
        return untrained_autoencoder(dataclasses.replace(cfg, seed=int(seed)), None).W_dec.detach().clone()


def seed_stability(atoms: Mapping[int, object], reference: int = 0, threshold: float = STABLE_COSINE,
                   control: Mapping[int, object] | None = None) -> dict:
    """Match the dictionary of seed ``reference`` to that of every other seed.

    ``atoms``: ``{seed: [H, D] atoms}`` (tensors, arrays or autoencoders), at least two seeds including
    ``reference``; ``control``: optional ``{seed: [H, D]}`` untrained dictionaries (``untrained_atoms``) that
    the reference is matched to as well, the chance level. Returns per unit of the reference its matched unit
    and cosine in each other seed, the smallest of those cosines (``min_cosine``), the ``stable`` flags
    (``min_cosine >= threshold``), the share of stable units, and the same for the control."""
    if not isinstance(atoms, Mapping) or not atoms:
        raise ValueError(f"atoms must be a non-empty {{seed: decoder atoms}} mapping, got {type(atoms).__name__}")
    _check_int("reference", reference, low=0)
    _check_float("threshold", threshold, low=-1.0, high=1.0)
    if reference not in atoms:
        raise ValueError(f"reference seed {reference} is not among the seeds given: {sorted(atoms)}")
    others = [s for s in sorted(atoms) if s != reference]
    if not others:
        raise ValueError(f"atoms must hold at least two seeds (seed stability needs at least two seeds), got only "
                         f"{sorted(atoms)}")
    out = {"reference": reference, "seeds": others, "threshold": threshold, "matched": {}, "cosine": {}}
    for seed in others:
        match, cosine = match_atoms(atoms[reference], atoms[seed])
        out["matched"][str(seed)], out["cosine"][str(seed)] = match.tolist(), cosine.tolist()
    min_cosine = np.min([out["cosine"][str(s)] for s in others], axis=0)
    out["min_cosine"] = min_cosine.tolist()
    out["stable"] = (min_cosine >= threshold).tolist()
    out["share_stable"] = float(np.mean(min_cosine >= threshold))
    if control is not None:
        if not isinstance(control, Mapping) or not control:
            raise ValueError(f"control must be a non-empty {{seed: untrained atoms}} mapping, got "
                             f"{type(control).__name__}")
        cosines = {str(s): match_atoms(atoms[reference], control[s])[1] for s in sorted(control)}
        control_min = np.min(list(cosines.values()), axis=0)
        out["control"] = {"seeds": sorted(control), "cosine": {s: c.tolist() for s, c in cosines.items()},
                          "min_cosine": control_min.tolist(), "share_stable": float(np.mean(control_min >= threshold)),
                          "max_cosine": float(control_min.max())}
    return out


def unit_groups(stats: UnitStats, purity_threshold: float) -> dict[str, np.ndarray]:
    """``{group: [H] bool}`` over the units of ``stats`` that fire on a test image: ``class-pure`` (purity
    at least ``purity_threshold``) and the rest; ``causal`` (zeroing the unit lowers its majority class's
    logit on average) and the rest."""
    if not isinstance(stats, UnitStats):
        raise ValueError(f"stats must be the UnitStats of unit_statistics, got {type(stats).__name__}")
    _check_float("purity_threshold", purity_threshold, low=0.0, high=1.0)
    fires = stats.n_fire > 0
    with np.errstate(invalid="ignore"):
        pure = fires & (np.nan_to_num(stats.purity, nan=0.0) >= purity_threshold)
        causal = fires & (np.nan_to_num(stats.majority_value(stats.ablation), nan=0.0) < 0)
    return {"class-pure": pure, "not class-pure": fires & ~pure, "causal": causal, "not causal": fires & ~causal}


def compare_stability(min_cosine, group, rest, threshold: float = STABLE_COSINE, seed: int = 0,
                      n_boot: int = STABILITY_BOOTSTRAP) -> dict:
    """Are the units of ``group`` more stable than those of ``rest``? ``min_cosine: [H]`` (``seed_stability``),
    ``group, rest: [H]`` bool masks. For each, its size, mean matched cosine and share of stable units; the
    differences (group - rest) with percentile bootstrap 95 % CIs (units resampled within each group), and
    ``more_stable``: True / False when the CI of the share's difference excludes 0 (above / below), None
    when it does not."""
    c = _as_numbers("min_cosine", min_cosine, ndim=1)
    _check_float("threshold", threshold, low=-1.0, high=1.0)
    _check_int("seed", seed, low=0)
    masks = []
    for name, m in (("group", group), ("rest", rest)):
        m = np.asarray(m)
        if m.dtype != bool or m.shape != c.shape:
            raise ValueError(f"{name} must be a boolean mask of shape {list(c.shape)}, got {m.dtype} "
                             f"{list(m.shape)}")
        if not m.any():
            raise ValueError(f"{name} selects no unit: nothing to compare")
        masks.append(m)
    _check_int("n_boot", n_boot, low=1)
    statistics = {"mean_cosine": lambda r: r.mean(1), "share_stable": lambda r: (r >= threshold).mean(1)}
    out, boots = {}, {}
    for offset, (name, m) in enumerate(zip(("group", "rest"), masks)):  # independent draws for the two sides
        v = c[m]
        boots[name] = {stat: bootstrap_estimates(v, f, n_boot, seed + offset) for stat, f in statistics.items()}
        out[name] = {"n": int(m.sum()), "mean_cosine": float(v.mean()), "share_stable": float((v >= threshold).mean())}
    for stat in statistics:
        lo, hi = percentile_interval(boots["group"][stat] - boots["rest"][stat])
        out[f"{stat}_difference"] = {"value": out["group"][stat] - out["rest"][stat], "ci95": [lo, hi]}
    lo, hi = out["share_stable_difference"]["ci95"]
    out["more_stable"] = True if lo > 0 else False if hi < 0 else None
    return out


def stability_by_group(stability: dict, stats: UnitStats, purity_threshold: float, seed: int = 0) -> dict:
    """``compare_stability`` of class-pure against the other firing units and of causal against the other
    firing units (``unit_groups``), from a ``seed_stability`` result whose reference seed ``stats`` describe. A
    comparison with an empty side is reported as ``undefined`` (with its reason), ``more_stable`` None."""
    stability = _check_result("stability", stability, ("min_cosine", "threshold"), "the dict seed_stability returns")
    c = _as_numbers("stability['min_cosine']", stability["min_cosine"], ndim=1)
    _check_stats(stats)
    _check_float("purity_threshold", purity_threshold, low=0.0, high=1.0)
    _check_int("seed", seed, low=0)
    if len(c) != len(stats.n_fire):
        raise ValueError(f"stability describes {len(c)} units but stats describe {len(stats.n_fire)}")
    groups, out = unit_groups(stats, purity_threshold), {}
    for name in ("class-pure", "causal"):
        group, rest = groups[name], groups[f"not {name}"]
        if group.any() and rest.any():
            out[name] = compare_stability(c, group, rest, stability["threshold"], seed)
        else:  # nothing to compare: reported, not an error (a small or untrained model may have no such unit)
            out[name] = {"group": {"n": int(group.sum())}, "rest": {"n": int(rest.sum())}, "more_stable": None,
                         "undefined": f"no {'firing unit outside the group' if group.any() else name + ' unit'}"}
    return out


def seed_dictionaries(cfg: Config, data: FashionMNIST, device: torch.device, seeds: Sequence[int],
                      ckpt_dir: str | os.PathLike = "checkpoints", train: bool = False) -> dict[int, torch.Tensor]:
    """``{seed: [H, D] decoder atoms}`` of the autoencoders ``cfg`` describes, trained with each of ``seeds``
    (everything else as ``cfg``), from their checkpoints in ``ckpt_dir``. A seed without a checkpoint of
    exactly this configuration is trained (``load_or_train``) when ``train``, else a ``ValueError`` names it
    and the file it expected."""
    _check_instance("cfg", cfg, Config)
    if train is True or data is not None:  # the dataset is read only to train a missing seed
        _check_instance("data", data, FashionMNIST)
    _check_device("device", device)
    _check_path("ckpt_dir", ckpt_dir, "folder", writable=False)
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) or not seeds:
        raise ValueError(f"seeds must be a non-empty sequence of training seeds, got {seeds!r}")
    for s in seeds:
        _check_int("seeds[i]", s, low=0)
    if len(set(int(s) for s in seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {list(seeds)}")
    if not isinstance(train, bool):
        raise ValueError(f"train must be True or False, got {train!r}")
    out = {}
    for s in seeds:
        seed_cfg = dataclasses.replace(cfg, seed=int(s))
        path = Path(ckpt_dir) / seed_cfg.checkpoint_name()
        if train:
            sae = load_or_train(seed_cfg, data, device, ckpt_dir, verbose=False)[0]
        else:
            if not path.is_file():
                raise ValueError(f"no checkpoint for seed {s}: expected {path} (train it with "
                                 f"benchmarks/controls.py, or pass train=True)")
            try:
                stored, sae = load_checkpoint(path, device)[:2]
            except CheckpointError as exc:
                raise ValueError(f"the checkpoint for seed {s} cannot be read: {exc}") from exc
            if stored.training_key() != seed_cfg.training_key():
                raise ValueError(f"{path} was trained with another configuration than seed {s} of this one "
                                 f"(expected {seed_cfg.training_key()}, got {stored.training_key()})")
        out[int(s)] = sae.W_dec.detach().cpu().clone()
    return out


def run_seed_stability(cfg: Config, data: FashionMNIST, device: torch.device, stats: UnitStats,
                       purity_threshold: float, seeds: Sequence[int] = (0, 1, 2),
                       ckpt_dir: str | os.PathLike = "checkpoints", train: bool = False) -> dict:
    """The seed-stability study: the dictionaries of ``seeds`` (``seed_dictionaries``; ``cfg.seed`` is the
    reference and must be among them, ``stats`` its ``unit_statistics``), matched to the reference
    (``seed_stability``, with the untrained dictionaries of the other seeds as the control), and whether
    class-pure and causal units are more stable than the other firing units (``stability_by_group``)."""
    _check_instance("cfg", cfg, Config)
    seeds = _check_ints("seeds", seeds, low=0)
    if cfg.seed not in seeds:
        raise ValueError(f"the reference seed cfg.seed = {cfg.seed} must be among seeds, got {list(seeds)}")
    _check_bool("train", train)
    if train or data is not None:  # the dataset is read only to train a missing seed
        _check_instance("data", data, FashionMNIST)
    _check_device("device", device)
    _check_stats(stats)
    if len(stats.freq_test) != cfg.d_hidden:
        raise ValueError(f"stats must describe cfg's model ({cfg.d_hidden} units), got statistics of "
                         f"{len(stats.freq_test)} units")
    _check_float("purity_threshold", purity_threshold, low=0.0, high=1.0)
    _check_path("ckpt_dir", ckpt_dir, "folder", writable=False)
    atoms = seed_dictionaries(cfg, data, device, seeds, ckpt_dir, train)
    control = {s: untrained_atoms(cfg, s) for s in atoms if s != cfg.seed}
    out = seed_stability(atoms, reference=cfg.seed, control=control)
    out["groups"] = stability_by_group(out, stats, purity_threshold, seed=cfg.seed)
    out["alive"] = (stats.n_fire > 0).tolist()
    out["share_stable_alive"] = float(np.mean(np.asarray(out["stable"])[stats.n_fire > 0]))
    return out


def stability_for_config(path: str | os.PathLike, cfg: Config) -> dict | None:
    """The seed stability stored in ``path`` (``results/controls.json``, key ``stability``) when it was measured
    for a model trained exactly as ``cfg`` says (same training fields, reference seed ``cfg.seed``); ``None``
    when the file is absent, holds no stability, or describes another configuration (a stability of another
    model would be read as this one's). ``ValueError`` naming the file when it is not valid JSON."""
    path = _check_path("path", path, "file", writable=False)
    _check_instance("cfg", cfg, Config)
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a valid JSON file: {exc}") from exc
    stability = stored.get("stability") if isinstance(stored, dict) else None
    if not stability or not isinstance(stored.get("config"), dict):
        return None
    stored_cfg = Config.from_dict(stored["config"], saved=True)
    if stored_cfg.training_key() != cfg.training_key() or stability["reference"] != cfg.seed:
        return None
    return stability


def _pair_matches(dicts: Mapping[int, np.ndarray], pairs) -> dict:
    """``{(r, s): (match [H], cosine [H])}`` for the ordered ``pairs``; a reverse pair reuses its partner's
    assignment (the Hungarian optimum of the transposed cosine matrix is the inverse assignment)."""
    out = {}
    for r, s in pairs:
        if (s, r) in out:
            match, cosine = out[(s, r)]
            inverse = np.argsort(match)
            out[(r, s)] = inverse, cosine[inverse]
        else:
            out[(r, s)] = match_atoms(dicts[r], dicts[s])
    return out


def _recurrence_flags(dec: dict, enc: dict | None, r: int, others: list[int], shared_cosine: float) -> dict:
    """Per unit of reference ``r``: lowest matched decoder (and encoder) cosine over ``others``, and shared flags."""
    out = {"decoder": np.min([dec[(r, s)][1] for s in others], axis=0)}
    if enc is not None:
        out["encoder"] = np.min([enc[(r, s)][1] for s in others], axis=0)
        out["shared"] = np.all([(dec[(r, s)][1] >= shared_cosine) & (enc[(r, s)][1] >= shared_cosine)
                                & (dec[(r, s)][0] == enc[(r, s)][0]) for s in others], axis=0)
    return out


def recurrence(decoders: Mapping[int, object], encoders: Mapping[int, object] | None = None,
               references: Sequence[int] | None = None, thresholds: Sequence[float] = _RECURRENCE_COSINES,
               shared_cosine: float = _SHARED_COSINE, seed: int = 0,
               n_boot: int = STABILITY_BOOTSTRAP) -> dict:
    """Which units recur across training seeds, by decoder atoms and encoder rows (Paulo & Belrose 2025).

    ``decoders``: ``{seed: [H, D] decoder atoms}`` (tensors, arrays or autoencoders), at least two seeds;
    ``encoders``: the same seeds' ``[H, D]`` encoder rows (``W_enc``), optional. For each reference seed in
    ``references`` (default: every seed) each of its units is matched one-to-one in every other seed, on decoder
    atoms and separately on encoder rows (Hungarian assignment on signed cosine, ``match_atoms``); per unit its
    lowest matched cosine over the other seeds, and *shared*: in every other seed both matched cosines reach
    ``shared_cosine`` with the same partner. Statistics (``"statistics"``), each per reference seed (its list in
    ``per_reference``, their mean and ``range``, the seed spread) and for the first reference with a bootstrap 95 %
    CI over its units (``value``, ``ci95``): the share of units whose lowest decoder (``decoder>=t``) and encoder
    (``encoder>=t``) cosine reaches each of ``thresholds``, the share shared, and the median lowest cosine. Also
    the first reference's per-unit values (``units``: lowest decoder and encoder cosine, shared flags)."""
    if not isinstance(decoders, Mapping) or len(decoders) < 2:
        raise ValueError(f"decoders must map at least two seeds to decoder atoms, got "
                         f"{sorted(decoders) if isinstance(decoders, Mapping) else type(decoders).__name__}")
    if encoders is not None and (not isinstance(encoders, Mapping) or set(encoders) != set(decoders)):
        raise ValueError(f"encoders must map the same seeds as decoders ({sorted(decoders)}), got "
                         f"{sorted(encoders) if isinstance(encoders, Mapping) else type(encoders).__name__}")
    seeds = sorted(decoders)
    refs = seeds if references is None else _check_ints("references", references, low=0)
    if any(r not in decoders for r in refs):
        raise ValueError(f"references must be among the seeds {seeds}, got {references!r}")
    if isinstance(thresholds, (str, bytes)) or not isinstance(thresholds, Sequence) or not thresholds:
        raise ValueError(f"thresholds must be a non-empty sequence of cosines, got {thresholds!r}")
    for t in thresholds:
        _check_float("thresholds entry", t, low=-1.0, high=1.0)
    _check_float("shared_cosine", shared_cosine, low=-1.0, high=1.0)
    _check_int("n_boot", n_boot, low=1)
    _check_int("seed", seed, low=0)
    dec = {s: _unit_norm_atoms(f"decoders[{s}]", decoders[s]) for s in seeds}
    enc = None if encoders is None else {s: _unit_norm_atoms(f"encoders[{s}]", encoders[s]) for s in seeds}
    shapes = {a.shape for a in (*dec.values(), *(enc or {}).values())}
    if len(shapes) != 1:
        raise ValueError(f"every dictionary must have the same shape [units, pixels], got {sorted(shapes)}")
    pairs = [(r, s) for r in refs for s in seeds if s != r]
    dec_m = _pair_matches(dec, pairs)
    enc_m = None if enc is None else _pair_matches(enc, pairs)
    flags = {r: _recurrence_flags(dec_m, enc_m, r, [s for s in seeds if s != r], shared_cosine) for r in refs}
    stats: dict[str, Callable[[dict], np.ndarray]] = {}
    for part in ("decoder", "encoder") if enc is not None else ("decoder",):
        for t in thresholds:
            stats[f"{part}>={t}"] = lambda f, part=part, t=t: (f[part] >= t).astype(np.float64)
    if enc is not None:
        stats["shared"] = lambda f: f["shared"].astype(np.float64)
    medians = [p for p in ("decoder", "encoder") if enc is not None or p == "decoder"]
    out = {"seeds": seeds, "references": refs, "thresholds": list(thresholds), "shared_cosine": shared_cosine,
           "n_units": int(next(iter(shapes))[0]), "statistics": {}}
    first = flags[refs[0]]
    for name, per_unit in stats.items():
        values = [float(per_unit(flags[r]).mean()) for r in refs]
        lo, hi = percentile_interval(bootstrap_estimates(per_unit(first), None, n_boot, seed))
        out["statistics"][name] = {"per_reference": values, "mean": float(np.mean(values)),
                                   "range": [min(values), max(values)], "value": values[0], "ci95": [lo, hi]}
    for part in medians:
        values = [float(np.median(flags[r][part])) for r in refs]
        lo, hi = percentile_interval(bootstrap_estimates(first[part], lambda v: np.median(v, axis=1), n_boot, seed))
        out["statistics"][f"median_{part}"] = {"per_reference": values, "mean": float(np.mean(values)),
                                               "range": [min(values), max(values)], "value": values[0],
                                               "ci95": [lo, hi]}
    out["units"] = {part: np.round(first[part], 4).tolist() for part in medians}
    if enc is not None:
        out["units"]["shared"] = first["shared"].tolist()
    return out
