"""Every recipe default re-checked on the validation split (never on the test set).

Each check trains the default recipe and the recipe with one choice switched off (or set to an alternative
value), with the library's own training functions, on the training split (55 000 images), and scores both on
the 5 000 validation images (`Config.n_val`, class-stratified, fixed). Autoencoder choices are scored by
validation FVU and dead units, classifier choices by validation accuracy (on the default autoencoder). The test
set is not read. Writes ``results/recipe_checks.json``; docs/results.md's "Recipe choices, on validation" table
is written from it (``python -m ksae.docs``). Run from the repository root (about 15 minutes on 2 CPU cores for
all rows; the default models come from ``checkpoints/`` when cached):

    .venv/bin/python benchmarks/recipe_checks.py
    .venv/bin/python benchmarks/recipe_checks.py --only decay10 decay50 lr2e-3   # these rows, merged into --out
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ksae_helpers as kh  # noqa: E402

# name: (choice, field changed, alternative value, which model it trains, k of the comparison)
CHECKS = {
    "auxk": ("AuxK loss on dead units (aux_k=256)", "aux_k", 0, "ae", 50),
    "auxk10": ("AuxK loss on dead units (aux_k=256), at k=10", "aux_k", 0, "ae", 10),
    "decay20": ("AE learning rate: linear decay over the last 20 % (decay20)", "ae_lr_schedule", "constant", "ae", 50),
    "decay10": ("AE learning rate decay over the last 20 %, not the last 10 % (decay10)", "ae_lr_schedule", "decay10",
                "ae", 50),
    "decay50": ("AE learning rate decay over the last 20 %, not the last 50 % (decay50)", "ae_lr_schedule", "decay50",
                "ae", 50),
    "lr2e-3": ("AE peak learning rate 1e-3 (the seed's), not 2e-3", "lr", 2e-3, "ae", 50),
    "hflip": ("Classifier sees mirror images (clf_hflip)", "clf_hflip", False, "clf", 50),
    "shift": ("Classifier sees 1-pixel shifts (clf_shift=1)", "clf_shift", 0, "clf", 50),
}


def train_ae(cfg: kh.Config, data: kh.FashionMNIST, device: torch.device) -> tuple[kh.KSparseAutoencoder, dict]:
    """Train one autoencoder on the training split; validation FVU, dead units (on the training split), seconds."""
    sae, seconds = kh.train_autoencoder_on_split(cfg, data, device)
    x_train, _, x_val, _ = kh.train_val_split(data, cfg)
    return sae, {"val_fvu": kh.dataset_fvu(sae, x_val, device), "dead_units": dead_units(sae, x_train, device),
                 "seconds": seconds}


def dead_units(sae: kh.KSparseAutoencoder, x: torch.Tensor, device: torch.device) -> int:
    """Units that fire on none of the images ``x: [N, 784]``."""
    return int((kh.firing_frequency(*kh.encode_dataset(sae, x, device), sae.d_hidden) == 0).sum())


def train_clf(cfg: kh.Config, sae: kh.KSparseAutoencoder, data: kh.FashionMNIST, device: torch.device) -> dict:
    """Train one classifier on ``sae``'s codes of the training split; validation accuracy and seconds."""
    x_train, y_train, x_val, y_val = kh.train_val_split(data, cfg)
    torch.manual_seed(cfg.seed)
    clf = kh.SparseCodeClassifier.from_config(cfg)
    t0 = time.perf_counter()
    history = kh.train_classifier(clf, sae, x_train, y_train, cfg, device, x_val, y_val)
    return {"val_accuracy": history["val_acc"][-1], "seconds": time.perf_counter() - t0}


def merged(path: str, rows: list[dict]) -> list[dict]:
    """The rows of the results file at ``path`` (in ``CHECKS`` order) with ``rows`` in place of the same choices."""
    if not Path(path).exists():
        return rows
    new = {row["choice"]: row for row in rows}
    old = {row["choice"]: row for row in json.loads(Path(path).read_text())["rows"]}
    order = [check[0] for check in CHECKS.values()]
    both = {**old, **new}
    return sorted(both.values(), key=lambda row: order.index(row["choice"]) if row["choice"] in order else len(order))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/recipe_checks.json")
    parser.add_argument("--ckpt-dir", default="checkpoints")
    parser.add_argument("--only", nargs="+", choices=list(CHECKS), default=None,
                        help="run only these checks and merge their rows into --out's (same choice replaced)")
    args = parser.parse_args(argv)
    device = kh.pick_device()
    data = kh.load_fashion_mnist("data")
    base = kh.Config()
    sae, clf, history, metrics = kh.load_or_train(base, data, device, args.ckpt_dir)
    x_train, _, _, _ = kh.train_val_split(data, base)
    default = {"ae": {"val_fvu": metrics["autoencoder"]["val_fvu"], "dead_units": dead_units(sae, x_train, device),
                      "seconds": history["seconds"]["ae"]},
               "clf": {"val_accuracy": metrics["classifier"]["val_accuracy"], "seconds": history["seconds"]["clf"]}}
    rows = []
    for choice, name, alternative, model, k in (CHECKS[key] for key in args.only or CHECKS):
        with_cfg = kh.Config(k=k)
        without_cfg = kh.Config(**{**with_cfg.to_dict(), name: alternative})
        if model == "ae":
            with_ = default["ae"] if k == base.k else train_ae(with_cfg, data, device)[1]
            without = train_ae(without_cfg, data, device)[1]
            better = (without["dead_units"], without["val_fvu"]) >= (with_["dead_units"], with_["val_fvu"])
        else:
            with_, without = default["clf"], train_clf(without_cfg, sae, data, device)
            better = with_["val_accuracy"] >= without["val_accuracy"]
        rows.append({"choice": choice, "field": name, "default": getattr(base, name), "alternative": alternative,
                     "k": k, "with": with_, "without": without, "kept": bool(better)})
        print(json.dumps(rows[-1]))
    result = {"device": kh.device_name(device), "n_val": base.n_val, "rule": (
        "kept when the default is no worse on validation: autoencoder choices compare (dead units, validation FVU) "
        "in that order, classifier choices validation accuracy"), "rows": merged(args.out, rows) if args.only else rows}
    kh.atomic_write_bytes(args.out, (json.dumps(result, indent=1) + "\n").encode())
    return result


if __name__ == "__main__":
    main()
