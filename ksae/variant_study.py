"""Which sparse autoencoder? Every kind on one frontier, its units' recurrence across seeds, and its recovery of a
planted dictionary (``run_variants``; the models: ``ksae.variant_models``).

* **Frontier**: each kind at mean L0 near each target (its knob chosen on the validation split, ``_calibrate``):
  test FVU, L0, dead and dense units, the pixel classifier on the reconstructions; the classifier head at the
  stability target (three seeds for top-k, whose spread is the head's seed spread); PCA with L0 components.
* **Recurrence**: each kind at the stability target, three seeds, plus top-k at the lowest target and at three
  times the epochs (``recurrence``: decoder and encoder matching, "shared" units), against the untrained
  dictionaries and dictionaries of random training images; and against top-k with CIs (``_answer``).
* **Planted dictionary**: each kind on synthetic images at each coherence (``planted_dictionary``): recovery
  (``recovery_scores``) and the project's explanations against the rule's exact contributions (``_known_answer``).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ._util import (
    _check_bool,
    _check_choices,
    _check_device,
    _check_instance,
    _check_int,
    _check_ints,
    _check_path,
    _jsonable,
)
from .attribution import attribute_all, integrated_gradients
from .config import Config
from .controls import LinearCode, _control_checkpoint_name, _explained_model, _load_or_train_control, fit_pca
from .data import FashionMNIST, train_val_split
from .models import SparseCodePipeline
from .planted import PLANTED_COHERENCES, _check_sizes, planted_dictionary, random_image_atoms, recovery_scores
from .runtime import device_name
from .stability import recurrence
from .stats import _rowwise_pearson, bootstrap_estimates, partner_images, percentile_interval, summarize
from .variant_models import (
    _KINDS,
    _KNOBS,
    _autoencoder,
    _calibrate,
    _configs_for,
    _kind,
    _measure,
    _model_pair,
    _new_autoencoder,
    _predict_correct,
    _training_seconds,
)

_TARGETS = (20, 50, 100)  # mean test L0 of the frontier's models (the default of run_variants)


_EPOCH_FACTOR = 3  # the long-training top-k row of the recurrence study trains this many times the epochs


_PLANTED = dict(n_atoms=512, mean_l0=50.0, n_train=60_000, n_test=5_000)  # the synthetic data sets: 512 atoms for
# the 1024-unit autoencoders (fewer atoms than pixels: a linear encoder can invert them where they are incoherent);
# with 1024 atoms and 16 000 images a top-k SAE memorised the images (validation FVU 0.54 against 0.36 in training)


_PLANTED_SIZES = ("n_atoms", "mean_l0", "n_train", "n_test", "n_classes", "zipf_exponent", "max_rate")  # the keys
# of planted: planted_dictionary's sizes (its coherence and seed come from the study)


_PLANTED_RECIPE = dict(n_val=2000, clf_hflip=False, clf_shift=0, train_subset=0)  # on the synthetic data: every
# training image; the rule is not invariant to mirroring or shifts, so the head sees the images as they are


_PLANTED_EPOCHS = (10, 5)  # epochs of each planted autoencoder and head (at most the recipe's): a top-k SAE's
# recovery of incoherent atoms rises sharply around epoch 4 and is ~94 % at 10 (pilot runs); the budget: 30 planted
# models within the study's two hours


_EXPLAIN_PER_CLASS = 20  # correctly classified planted test images per class whose explanations meet the answer


_COMPARE_BOOT = 2000  # bootstrap resamples of the comparisons


_ANSWER_STATISTICS = ("shared", "decoder>=0.9", "decoder>=0.7", "median_decoder")  # compared with top-k's


_HIST_BINS = 20  # histograms of matched cosines on [0, 1] in the results file (per-unit values stay in memory)


_KNOWN_METHODS = ("integrated", "simple", "smoothgrad", "input_x_gradient", "input_x_smoothgrad", "decoder")


def _boot_ci(est: np.ndarray) -> list[float]:
    return list(percentile_interval(est))


def _histogram(values) -> list[int]:
    """Counts of ``values`` (clipped to [0, 1]) in ``_HIST_BINS`` equal bins of [0, 1]."""
    return np.histogram(np.clip(np.asarray(values, dtype=np.float64), 0, 1), bins=_HIST_BINS, range=(0, 1))[0].tolist()


def _compact(rec: dict) -> dict:
    """A ``recurrence`` result for the results file: its per-unit values as histograms (``_histogram``)."""
    units = rec.pop("units")
    rec["histograms"] = {part: _histogram(v) for part, v in units.items() if part != "shared"}
    if "shared" in units:
        rec["n_shared"] = int(np.sum(units["shared"]))
    return rec


# --- the comparisons with top-k ---------------------------------------------------------------------------
def _overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    return max(a) >= min(b) and max(b) >= min(a)


def _verdict(diff_ci: list[float], range_a, range_b) -> str:
    """"higher" / "lower" when the CI of the difference excludes 0 *and* the seed ranges do not overlap, else
    "no resolvable difference" (a difference inside the seed spread is not resolved)."""
    if diff_ci[0] > 0 and not _overlap(range_a, range_b):
        return "higher"
    if diff_ci[1] < 0 and not _overlap(range_a, range_b):
        return "lower"
    return "no resolvable difference"


def _paired(a: np.ndarray, b: np.ndarray, seed: int) -> tuple[float, list[float]]:
    """Mean of ``a - b`` (per image, the same images) and its bootstrap 95 % CI."""
    d = a.astype(np.float64) - b.astype(np.float64)
    return float(d.mean()), _boot_ci(bootstrap_estimates(d, None, _COMPARE_BOOT, seed))


def _fvu_difference(a: dict, b: dict, seed: int) -> tuple[float, list[float]]:
    """FVU of ``a`` minus FVU of ``b`` (``_measure``'s raw per-image values, the same test images), paired CI."""
    est = (bootstrap_estimates(a["sse"] - b["sse"], None, _COMPARE_BOOT, seed)
           / bootstrap_estimates(a["ss"], None, _COMPARE_BOOT, seed))  # the same draws (same N and seed)
    return float((a["sse"].sum() - b["sse"].sum()) / a["ss"].sum()), _boot_ci(est)


def _recurrence_difference(a: dict, b: dict, name: str, seed: int) -> dict:
    """Statistic ``name`` of recurrence ``a`` minus ``b`` (their reference seed's units resampled independently)."""
    if name.startswith("median_"):
        part = name.split("_", 1)[1]
        va, vb = np.asarray(a["units"][part]), np.asarray(b["units"][part])
        stat = lambda r: np.median(r, axis=1)  # noqa: E731
    else:
        part, threshold = (name.split(">=") + [None])[:2]
        va, vb = (np.asarray(r["units"][part], dtype=np.float64) for r in (a, b))
        if threshold is not None:
            va, vb = (va >= float(threshold)).astype(np.float64), (vb >= float(threshold)).astype(np.float64)
        stat = None
    est = bootstrap_estimates(va, stat, _COMPARE_BOOT, seed) - bootstrap_estimates(vb, stat, _COMPARE_BOOT, seed + 1)
    sa, sb = a["statistics"][name], b["statistics"][name]
    ci = _boot_ci(est)
    return {"difference": sa["value"] - sb["value"], "ci95": ci, "mean_difference": sa["mean"] - sb["mean"],
            "range": sa["range"], "reference_range": sb["range"], "verdict": _verdict(ci, sa["range"], sb["range"])}


def _answer(stability: dict, by_seed: dict, raw: dict, reference: str = "topk", seed: int = 0) -> dict:
    """Every variant against top-k at the stability target: recurrence (``_ANSWER_STATISTICS``), test FVU,
    the pixel classifier on the reconstructions, the head's accuracy; each a difference with a bootstrap CI over
    units or test images (seed 0) and a verdict that also asks the seed ranges not to overlap (``_verdict``)."""
    out = {}
    ref_seeds = by_seed[reference]
    for name, st in stability.items():
        if name == reference or name not in by_seed:
            continue
        row: dict = {"recurrence": {s: _recurrence_difference(st["trained"], stability[reference]["trained"], s,
                                                              seed) for s in _ANSWER_STATISTICS}}
        seeds_a = by_seed[name]
        d, ci = _fvu_difference(raw[name], raw[reference], seed)
        ra, rb = [r["fvu"] for r in seeds_a], [r["fvu"] for r in ref_seeds]
        row["fvu"] = {"difference": d, "ci95": ci, "range": [min(ra), max(ra)], "reference_range": [min(rb), max(rb)],
                      "verdict": _verdict(ci, ra, rb)}
        for key, field in (("accuracy_recovered", "recovered_correct"), ("accuracy", "correct")):
            if field in raw[name] and field in raw[reference]:
                d, ci = _paired(raw[name][field], raw[reference][field], seed)
                metric = "pixel_accuracy" if key == "accuracy_recovered" else "accuracy"
                # a model with a head at one seed only: its seed-0 value stands for its range (top-k's heads, at every
                # seed, give the spread the difference must clear)
                ra = [r[metric] for r in seeds_a if metric in r] or [float(raw[name][field].mean())]
                rb = [r[metric] for r in ref_seeds if metric in r] or [float(raw[reference][field].mean())]
                row[key] = {"difference": d, "ci95": ci, "range": [min(ra), max(ra)],
                            "reference_range": [min(rb), max(rb)], "verdict": _verdict(ci, ra, rb)}
        out[name] = row
    return out


# --- the planted dictionary: explanations against the known answer -----------------------------------------
def _centred_head(clf):
    """A copy of ``clf`` whose logits are centred over the classes (last layer minus its class mean): the same
    softmax and predictions, and the logit of a class is its score against the average class, as the rule's."""
    clf = copy.deepcopy(clf)
    last = clf.rest[-1]
    with torch.no_grad():
        last.weight -= last.weight.mean(0, keepdim=True)
        last.bias -= last.bias.mean()
    return clf.eval()


def _known_answer(sae, clf, planted, match: np.ndarray, cfg: Config, device: torch.device,
                  n_per_class: int = _EXPLAIN_PER_CLASS, seed: int = 0) -> dict:
    """The project's explanations of the (centred) logit of the true class against the exact answer, on
    ``n_per_class`` correctly classified planted test images per class (seeded). Code space: decoder-weighted's
    unit contributions, read through the matching (planted atom j <- unit ``match[j]``), against the exact atom
    contributions ``PlantedDictionary.contributions``; pixel space: every method's map against
    ``PlantedDictionary.evidence`` (integrated gradients also from the empty code's image, the generator's
    offset, instead of black). Per image the Pearson correlation, and the same against another image of the same
    class (the null); ``summarize`` of both and of the excess (correlation minus null). A class with fewer than two
    such images is left out (it has no null)."""
    pipe = SparseCodePipeline(sae, _centred_head(clf)).to(device).eval()
    x_all, y_all = planted.data.x_test, planted.data.y_test
    correct = torch.from_numpy(_predict_correct(pipe, x_all, y_all, device))
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(len(planted.data.classes)):
        members = torch.nonzero(correct & (y_all == c))[:, 0]
        pick = members[torch.randperm(len(members), generator=gen)[:n_per_class]].sort().values
        picks.append(pick if len(pick) >= 2 else pick[:0])  # the null needs another image of the same class
    idx = torch.cat(picks)
    if len(idx) == 0:
        return {"n_images": 0, "per_class": [0] * len(picks), "accuracy": float(correct.double().mean()),
                "undefined": "fewer than 2 correctly classified test images in every class"}
    x, y = x_all[idx].to(device), y_all[idx].to(device)
    phi = planted.contributions(planted.codes_test[idx].double(), y.cpu()).numpy()
    evidence = planted.evidence(torch.from_numpy(phi)).numpy()
    maps, contributions = attribute_all(pipe, x, y, cfg, methods=_KNOWN_METHODS, return_contributions=True)
    maps = {m: v.detach().cpu().double().numpy() for m, v in maps.items()}
    empty = torch.full_like(x[:1], planted.offset)
    maps["integrated_empty"] = integrated_gradients(pipe, x, y, baselines=empty.expand_as(x), n_steps=cfg.ig_steps,
                                                    method=cfg.ig_method).detach().cpu().double().numpy()
    partner = partner_images(y.cpu(), same_class=True, seed=seed)
    code = contributions.detach().cpu().double().numpy()[:, match]

    def scores(values: np.ndarray, truth: np.ndarray) -> dict:
        r, null = _rowwise_pearson(values, truth), _rowwise_pearson(values, truth[partner])
        return {"correlation": summarize(r, seed), "null": summarize(null, seed), "excess": summarize(r - null, seed)}

    return {"n_images": len(idx), "per_class": [len(p) for p in picks], "accuracy": float(correct.double().mean()),
            "code": scores(code, phi), "pixels": {m: scores(v, evidence) for m, v in maps.items()}}


def _planted_study(kinds: Sequence[str], coherences: Sequence[str], base: Config, sizes: dict,
                   device: torch.device, ckpt_dir, n_per_class: int, verbose: bool, ledger: list) -> dict:
    """Each kind trained at L0 near the planted mean L0 (knob chosen on the synthetic validation split) on each
    coherence's images; its recovery of the atoms and its explanations against the known answer."""
    out = {}
    target = int(round(sizes["mean_l0"]))
    for coherence in coherences:
        planted = planted_dictionary(coherence, **sizes, seed=base.seed)
        pcfg = Config(**{**base.to_dict(), **_PLANTED_RECIPE,
                         "n_val": min(_PLANTED_RECIPE["n_val"], sizes["n_train"] // 5),
                         "ae_epochs": min(_PLANTED_EPOCHS[0], base.ae_epochs),
                         "clf_epochs": min(_PLANTED_EPOCHS[1], base.clf_epochs)})
        tag = f"planted-{coherence}-{planted.fingerprint()}_"
        baseline = random_image_atoms(train_val_split(planted.data, pcfg)[0], pcfg.d_hidden, seed=base.seed + 1)
        entry = {"generator": planted.describe(), "kinds": {}}
        for kind in kinds:
            cal = _calibrate(pcfg, kind, [target], planted.data, device, ckpt_dir, tag, verbose, ledger)[str(target)]
            sae, clf, history, _ = _model_pair(cal["cfg"], planted.data, device, ckpt_dir, tag, verbose, ledger)
            row, _ = _measure(sae, planted.data, cal["cfg"], device, _explained_model(sae, clf), seed=base.seed)
            with torch.no_grad():
                learned = torch.cat([sae.encode(planted.data.x_test[i:i + 2048].to(device)).cpu()
                                     for i in range(0, len(planted.data.x_test), 2048)])
            rec = recovery_scores(planted.atoms, sae.W_dec.detach().cpu(), planted.codes_test, learned, baseline)
            known = _known_answer(sae, clf, planted, np.asarray(rec.pop("match")), cal["cfg"], device, n_per_class,
                                  base.seed)
            cosine, f1 = rec.pop("abs_cosine"), np.asarray(rec.pop("f1"), dtype=np.float64)
            rec["abs_cosine_quantiles"] = {str(q): float(np.quantile(cosine, q)) for q in (0.1, 0.5, 0.9)}
            rec["abs_cosine_histogram"] = _histogram(cosine)
            rec["f1_quantiles"] = {str(q): float(np.nanquantile(f1, q)) for q in (0.1, 0.5, 0.9)}
            entry["kinds"][kind] = {"knob": {k: v for k, v in cal.items() if k != "cfg"}, **row, "recovery": rec,
                                    "explanations": known, "train_seconds": _training_seconds(history)}
        entry["baseline_mcc"] = next(iter(entry["kinds"].values()))["recovery"]["baseline_mcc"] if kinds else None
        out[coherence] = entry
    return out


# --- the study ----------------------------------------------------------------------------------------------
def _stability_specs(kinds: Sequence[str], targets: Sequence[int], calibration: dict) -> dict:
    """``{name: (kind, target, Config at seed 0)}``: every kind at the stability target (the middle one), and
    top-k at the lowest target and with ``_EPOCH_FACTOR`` times the epochs."""
    middle = sorted(targets)[len(targets) // 2]
    specs = {kind: (kind, middle, calibration[kind][str(middle)]["cfg"]) for kind in kinds}
    if "topk" in kinds:
        low = min(targets)
        top = calibration["topk"][str(middle)]["cfg"]
        specs[f"topk_L0_{low}"] = ("topk", low, calibration["topk"][str(low)]["cfg"])
        longer = Config(**{**top.to_dict(), "ae_epochs": top.ae_epochs * _EPOCH_FACTOR})
        specs[f"topk_{_EPOCH_FACTOR}x_epochs"] = ("topk", middle, longer)
    return specs


def _controls(scfg: Config, seeds: Sequence[int], decoders: dict, encoders: dict, x_train: torch.Tensor,
              seed: int) -> dict:
    """The reference seed's dictionary matched, as in ``recurrence``, to chance dictionaries in place of the other
    seeds': their untrained initialisations (what training starts from) and random training images."""
    ref, others = seeds[0], seeds[1:]
    untrained = {}
    with torch.random.fork_rng(devices=[]):
        for s in others:
            torch.manual_seed(int(s))
            init = _new_autoencoder(Config(**{**scfg.to_dict(), "seed": int(s)}))
            init.prepare_training_(x_train)  # what training's first step starts from
            untrained[s] = (init.W_dec.detach().clone(), init.W_enc.detach().clone())
    images = {s: random_image_atoms(x_train, scfg.d_hidden, int(s)) for s in others}
    return {"untrained": recurrence({ref: decoders[ref], **{s: d for s, (d, _) in untrained.items()}},
                                    {ref: encoders[ref], **{s: e for s, (_, e) in untrained.items()}},
                                    references=[ref], seed=seed),
            "random_images": recurrence({ref: decoders[ref], **images}, {ref: encoders[ref], **images},
                                        references=[ref], seed=seed)}


def _ledger_summary(ledger: list) -> dict:
    """Models the run used (one entry per model: an autoencoder's ``ae_`` file and its pair are one model), how
    many it trained, and the training seconds their checkpoints record, all and this run's."""
    models: dict[str, dict] = {}
    for e in ledger:
        m = models.setdefault(e["file"].removeprefix("ae_"), {"seconds": {}, "trained_now": False})
        for part, sec in e["seconds"].items():
            m["seconds"][part] = max(m["seconds"].get(part, 0.0), sec)
        m["trained_now"] |= e["trained_now"]
    total = lambda ms: float(sum(sum(m["seconds"].values()) for m in ms))  # noqa: E731
    now = [m for m in models.values() if m["trained_now"]]
    return {"models": len(models), "trained_now": len(now), "train_seconds_recorded": total(models.values()),
            "train_seconds_now": total(now)}


def _control_model(name: str, cfg: Config, data: FashionMNIST, device: torch.device, ckpt_dir, verbose: bool,
                   ledger: list):
    """A control of ``ksae.controls`` (the pixel classifier, PCA), shared with the controls study's cache."""
    path = Path(ckpt_dir) / _control_checkpoint_name(cfg, name)
    existed = path.exists()
    code, clf, history = _load_or_train_control(name, cfg, data, device, ckpt_dir, verbose=verbose)
    ledger.append({"file": path.name, "seconds": _training_seconds(history), "trained_now": not existed})
    return code, clf


def run_variants(data: FashionMNIST, cfg: Config, device: torch.device, ckpt_dir: str | os.PathLike = "checkpoints",
                 kinds: Sequence[str] | None = None, targets: Sequence[int] | None = None,
                 seeds: Sequence[int] = (0, 1, 2), planted: dict | None = None,
                 coherences: Sequence[str] = tuple(PLANTED_COHERENCES), n_per_class: int = _EXPLAIN_PER_CLASS,
                 verbose: bool = True) -> dict:
    """The variants study with ``cfg``'s recipe, every model trained or loaded from ``ckpt_dir``
    (``ksae.variant_models``; knobs chosen on the validation split, the test set scored once per model):

    * the frontier of every kind in ``kinds`` (default: every kind) at each mean L0 of ``targets`` (default 20,
      50, 100), PCA with as many components, and the classifier head at the middle target;
    * the recurrence of its units across ``seeds`` (the first is ``cfg.seed``) at the middle target, against the
      untrained and random-image dictionaries, and against top-k's (``_answer``);
    * its recovery of planted dictionaries of ``coherences`` (``planted``: ``planted_dictionary``'s sizes,
      default 512 atoms, mean L0 50, 60 000 + 5 000 images) and its explanations against the known answer.

    Returns the JSON-able result that ``results/variants.json`` holds."""
    _check_instance("data", data, FashionMNIST, "the FashionMNIST data set (load_fashion_mnist, or a "
                    "PlantedDictionary's data)")
    _check_instance("cfg", cfg, Config)
    _check_device("device", device)
    _check_path("ckpt_dir", ckpt_dir, "folder")
    kinds = tuple(_KINDS if kinds is None else _check_choices("kinds", kinds, _KINDS, "autoencoder kinds among",
                                                              empty=False))
    targets = _TARGETS if targets is None else targets
    if isinstance(targets, (str, bytes)) or not isinstance(targets, Sequence) or len(set(targets)) != len(targets) \
            or not targets:
        raise ValueError(f"targets must be distinct mean L0 values, got {targets!r}")
    targets = tuple(targets)
    for t in targets:
        _check_int("targets[i]", t, low=1, high=cfg.d_hidden, high_name="d_hidden")
    _check_ints("seeds", seeds, low=0)
    if len(seeds) < 2 or seeds[0] != cfg.seed or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be at least two distinct training seeds starting with cfg.seed = {cfg.seed}, "
                         f"got {list(seeds)}")
    if planted is not None:
        _check_instance("planted", planted, dict, "a dict of planted_dictionary's sizes")
        _check_choices("planted", list(planted), _PLANTED_SIZES, "a dict with keys among")
    sizes = {**_PLANTED, **(planted or {})}
    _check_sizes(lambda key: f"planted[{key!r}]", **sizes)
    _check_choices("coherences", coherences, tuple(PLANTED_COHERENCES), "among")
    _check_int("n_per_class", n_per_class, low=1)
    _check_bool("verbose", verbose)
    t0, seconds, ledger = time.perf_counter(), {}, []
    pixel_model = _explained_model(*_control_model("pixels", cfg, data, device, ckpt_dir, verbose, ledger))
    seconds["pixel_classifier"] = time.perf_counter() - t0
    t = time.perf_counter()
    calibration = {kind: _calibrate(cfg, kind, targets, data, device, ckpt_dir, verbose=verbose, ledger=ledger)
                   for kind in tqdm(kinds, desc="variants: knobs", disable=not verbose)}
    seconds["calibration"] = time.perf_counter() - t
    t = time.perf_counter()
    middle = sorted(targets)[len(targets) // 2]
    frontier, raw = {}, {}
    for kind in tqdm(kinds, desc="variants: frontier", disable=not verbose):
        frontier[kind] = {}
        for target in targets:
            kcfg = calibration[kind][str(target)]["cfg"]
            if target == middle:
                sae, clf, history, _ = _model_pair(kcfg, data, device, ckpt_dir, verbose=verbose, ledger=ledger)
                row, raw[kind] = _measure(sae, data, kcfg, device, _explained_model(sae, clf), pixel_model, cfg.seed)
            else:
                sae, history, _ = _autoencoder(kcfg, data, device, ckpt_dir, verbose=verbose, ledger=ledger)
                row, _ = _measure(sae, data, kcfg, device, None, pixel_model, cfg.seed)
            knob = {k: v for k, v in calibration[kind][str(target)].items() if k != "cfg"}
            frontier[kind][str(target)] = {"knob": knob, **row, "checkpoint": kcfg.checkpoint_name(),
                                           "train_seconds": _training_seconds(history)}
    seconds["frontier"] = time.perf_counter() - t
    t = time.perf_counter()
    x_train = train_val_split(data, cfg)[0]
    anchors = {"pca": {}}
    for target in targets:
        code = LinearCode(*fit_pca(x_train, int(target))).to(device)
        anchors["pca"][str(target)] = _measure(code, data, cfg, device, None, pixel_model, cfg.seed)[0]
    pca_cfg = Config(**{**cfg.to_dict(), "k": int(middle)})  # the controls study's PCA control at this k
    pca = _control_model("pca", pca_cfg, data, device, ckpt_dir, verbose, ledger)
    pca_row, raw["pca"] = _measure(pca[0], data, pca_cfg, device, _explained_model(*pca), pixel_model, cfg.seed)
    anchors["pca"][str(middle)].update(accuracy=pca_row["accuracy"], accuracy_ci95=pca_row["accuracy_ci95"],
                                       val_accuracy=pca_row.get("val_accuracy"))
    seconds["anchors"] = time.perf_counter() - t
    t = time.perf_counter()
    stability, by_seed = {}, {}
    for name, (kind, target, scfg) in tqdm(_stability_specs(kinds, targets, calibration).items(),
                                           desc="variants: recurrence", disable=not verbose):
        decoders, encoders, rows = {}, {}, []  # every seed measured (its FVU and the pixel classifier's spread)
        for seed_cfg in _configs_for(scfg, seeds):
            if name == "topk":  # top-k's head at every seed: the head's seed spread
                sae, clf, history, _ = _model_pair(seed_cfg, data, device, ckpt_dir, verbose=verbose, ledger=ledger)
                model = _explained_model(sae, clf)
            else:
                sae, history, _ = _autoencoder(seed_cfg, data, device, ckpt_dir, verbose=verbose, ledger=ledger)
                model = None
            decoders[seed_cfg.seed], encoders[seed_cfg.seed] = sae.W_dec.detach().cpu(), sae.W_enc.detach().cpu()
            row, measured = _measure(sae, data, seed_cfg, device, model, pixel_model, cfg.seed)
            rows.append({"seed": seed_cfg.seed, **row, "train_seconds": _training_seconds(history)})
            if name not in raw and seed_cfg.seed == seeds[0]:
                raw[name] = measured  # the rows of top-k at another L0 or with more epochs
        by_seed[name] = rows
        stability[name] = {"kind": kind, "target": target, "knob": _knob_of(scfg), "ae_epochs": scfg.ae_epochs,
                           "checkpoints": [c.checkpoint_name() for c in _configs_for(scfg, seeds)],
                           "trained": recurrence(decoders, encoders, seed=cfg.seed),
                           "controls": _controls(scfg, seeds, decoders, encoders, x_train, cfg.seed)}
    seconds["recurrence"] = time.perf_counter() - t
    answer = _answer(stability, by_seed, raw, seed=cfg.seed) if "topk" in kinds else {}
    for st in stability.values():
        _compact(st["trained"])
        for control in st["controls"].values():
            _compact(control)
    t = time.perf_counter()
    planted_out = _planted_study(kinds, coherences, cfg, sizes, device, ckpt_dir, n_per_class, verbose, ledger) \
        if coherences else {}
    seconds["planted"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    calibration_out = {kind: {t: ({f: v for f, v in c.items() if f != "cfg"} if isinstance(c, dict) else c)
                              for t, c in cal.items()} for kind, cal in calibration.items()}
    result = {"schema_version": 1, "config": cfg.to_dict(), "device": device_name(device), "kinds": list(kinds),
              "targets": [int(t) for t in targets], "stability_target": int(middle), "seeds": [int(s) for s in seeds],
              "calibration": calibration_out, "frontier": frontier, "by_seed": by_seed, "anchors": anchors,
              "pixel_classifier": {"test_accuracy": float(_predict_correct(pixel_model, data.x_test, data.y_test,
                                                                           device).mean())},
              "stability": stability, "answer": answer, "planted": planted_out, "models": _ledger_summary(ledger),
              "seconds": seconds}
    return _jsonable(result)


def _knob_of(cfg: Config) -> dict:
    knob = _KNOBS[_kind(cfg)][0]
    return {"kind": _kind(cfg), "name": knob, "value": getattr(cfg, knob)}
