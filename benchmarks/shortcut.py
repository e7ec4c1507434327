"""Ground truth, run for real: the planted-shortcut study (``ksae.shortcut_study.run_shortcut``).

Three variants planted into Fashion-MNIST (certified, biased, two-part), three training seeds; per variant and seed
the shortcut pipeline, its clean twin, the oracle and the raw-pixel classifier with its twin, every one trained with
the default recipe or loaded from ``checkpoints/`` (``shortcut_<role>_<data hash>_<config>.pt``; the default pairs
``ksae_..._seed<s>_....pt`` and the pixel control are shared with the rest of the project), so a rerun only measures.
Writes ``results/shortcut.json``; the notebook's section and docs/results.md draw from it. With ``--pages DIR`` it
also writes the certified shortcut model's unit browser and explorer (first seed) into DIR, and with
``--screenshot PNG`` drives that explorer in headless Chromium: a marked Shirt whose largest contributor is the
marker unit, that unit removed by a click. From the repository root:

    .venv/bin/python benchmarks/shortcut.py --pages runs/shortcut_certified --screenshot docs/shortcut_explorer.png
    .venv/bin/python benchmarks/shortcut.py --tiny --ckpt-dir /tmp/s --out /tmp/shortcut.json   # CI: a minute
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import ksae_helpers as kh  # noqa: E402
from ksae.controls import _accuracy  # noqa: E402
from ksae.shortcut_models import _default_models, _shortcut_models  # noqa: E402
from ksae.shortcuts import plant_shortcut  # noqa: E402

TINY = dict(k=8, d_hidden=64, clf_hidden=(32, 16), train_subset=3000, ae_epochs=2, clf_epochs=3, n_val=1000,
            batch_size=64, lr=5e-3, ig_steps=4, smoothgrad_samples=2)  # CI's configuration: every stage in seconds
TINY_SIZES = dict(n_images=12, n_random=8, seeds=(0,))
SCREENSHOT_SIZE = (1500, 1100)  # browser window for the docs' screenshot, pixels
CLF_EPOCH_CANDIDATES = (20, 30)  # fewer classifier epochs than the default, tried in this order for the budget


def choose_clf_epochs(cfg, data, device, ckpt_dir, train: bool, candidates=CLF_EPOCH_CANDIDATES,
                      seeds=(0, 1, 2)) -> dict:
    """The classifier epochs of the study, chosen on the validation split for the compute budget: the fewest of
    ``candidates`` whose heads, the default autoencoder's (seed ``seeds[0]``) and the raw-pixel classifier's, trained
    on the unmarked training split with the true labels, reach a validation accuracy within the spread of the default
    recipe's across ``seeds`` (max - min of the default heads' validation accuracy) of their default-recipe twins;
    else the default. Those heads are the biased variant's clean twins of the run (cached, trained once)."""
    planted = plant_shortcut(data, "biased")
    _, _, x_val, y_val = kh.train_val_split(data, cfg)
    default = cfg.clf_epochs
    val = {}
    pairs = [kh.load_or_train(kh.Config(**{**cfg.to_dict(), "seed": s}), data, device, ckpt_dir, verbose=False)[:2]
             if train else _default_models(kh.Config(**{**cfg.to_dict(), "seed": s}), planted, device, ckpt_dir,
                                           train, verbose=False)[:2] for s in seeds]  # the default pairs
    for epochs in (default, *candidates):
        cfg_e = kh.Config(**{**cfg.to_dict(), "clf_epochs": epochs, "seed": seeds[0]})
        pair = _default_models(cfg_e, planted, device, ckpt_dir, train, verbose=False)[:2]
        models = _shortcut_models(planted, None, cfg_e, data, device, pair, ("twin", "pixel_twin"), ckpt_dir, train,
                                  verbose=False)
        val[str(epochs)] = {name: _accuracy(models[role][0], x_val, y_val, device)
                            for name, role in (("sae", "twin"), ("pixels", "pixel_twin"))}
    spread = [_accuracy(kh.SparseCodePipeline(sae, clf).eval(), x_val, y_val, device) for sae, clf in pairs]
    tolerance = max(spread) - min(spread)
    ok = [e for e in candidates if all(abs(val[str(e)][n] - val[str(default)][n]) <= tolerance for n in val[str(e)])]
    return {"default": default, "candidates": list(candidates), "validation_accuracy": val,
            "default_seeds_validation_accuracy": dict(zip(map(str, seeds), spread)), "tolerance": tolerance,
            "chosen": min(ok) if ok else default,
            "rule": "the fewest candidate epochs whose SAE head (default autoencoder) and raw-pixel head reach a "
                    "validation accuracy within the default recipe's seed spread of their default-recipe twins"}


def shortcut_pipeline(cfg, data, device, ckpt_dir, seed: int, train: bool):
    """The certified variant's shortcut pipeline of ``seed`` (cached by the run) and its planted data."""
    planted = plant_shortcut(data, "certified")
    cfg_s = kh.Config(**{**cfg.to_dict(), "seed": seed})
    models = _shortcut_models(planted, None, cfg_s, data, device, (None, None), ("shortcut",), ckpt_dir, train,
                              verbose=False)
    return models["shortcut"][0], planted, cfg_s


def write_pages(pipeline, planted, cfg, device, folder: Path) -> tuple[Path, kh.UnitStats]:
    """The shortcut model's unit browser and explorer, side by side in ``folder``, on the planted test set."""
    stats = kh.unit_statistics(pipeline, planted.data, device, seed=cfg.seed)
    top = kh.unit_top_contributions(pipeline, planted.data.x_test, device)
    kh.write_unit_browser(stats, pipeline.sae, planted.data, folder / kh.UNIT_BROWSER_PAGE, top_contributions=top)
    page = kh.write_explorer(pipeline, planted.data, folder / kh.EXPLORER_PAGE, cfg, unit_stats=stats,
                             top_contributions=top)
    return page, stats


def marker_image(pipeline, planted, unit: int) -> int | None:
    """The first marked test image labelled Shirt that the model takes for Shirt with ``unit`` its largest
    contributor (Rescale, Shirt logit): what the page shows first in its table; None if there is none."""
    shirt = kh.CLASS_NAMES.index("Shirt")
    rows = torch.nonzero((planted.data.y_test == shirt) & planted.marks_test[:, 0])[:, 0]
    x = planted.data.x_test[rows]
    with torch.no_grad():
        pred = pipeline(x).argmax(1)
    _, c = kh.decoder_weighted(pipeline, x, torch.full((len(x),), shirt), return_contributions=True)
    ok = torch.nonzero((pred == shirt) & (c.argmax(1) == unit))[:, 0]
    return int(rows[ok[0]]) if len(ok) else None


def screenshot(page: Path, image: int, unit: int, path: Path) -> dict:
    """Open ``page`` at test image ``image``, check that ``unit`` heads the contribution table, click its remove
    button, save the window as a palette PNG at ``path``; the prediction before and after."""
    from bench_explorer import _driver, _open
    from PIL import Image
    from selenium.webdriver.common.by import By

    driver = _driver(*SCREENSHOT_SIZE)
    try:
        _open(driver, page, f"#image-{image}")
        first = driver.find_element(By.CSS_SELECTOR, "#units tbody tr")
        if int(first.get_attribute("data-unit")) != unit:
            raise RuntimeError(f"unit {unit} is not at the top of the table (unit {first.get_attribute('data-unit')} "
                               "is)")
        before = driver.execute_script("const r = window.ksae.state.last; return [r.target, Array.from(r.probs)]")
        driver.find_element(By.CSS_SELECTOR, f'#units button[data-unit="{unit}"]').click()
        after = driver.execute_script("const r = window.ksae.state.last; return [r.target, Array.from(r.probs)]")
        label = driver.find_element(By.CSS_SELECTOR, f'#units button[data-unit="{unit}"]').text
        png = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    finally:
        driver.quit()
    path.parent.mkdir(parents=True, exist_ok=True)
    png.quantize(colors=kh.PNG_COLORS).save(path, optimize=True)
    classes = kh.CLASS_NAMES
    top = max(range(len(after[1])), key=lambda c: after[1][c])
    return {"image": image, "unit": unit, "button": label,
            "before": {"predicted": classes[before[0]], "probability": before[1][before[0]]},
            "after": {"predicted": classes[top], "probability": after[1][top],
                      "shirt_probability": after[1][classes.index("Shirt")]}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CI's tiny configuration (one seed, small sizes)")
    parser.add_argument("--variants", nargs="+", default=list(kh.SHORTCUT_VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default 0 1 2)")
    parser.add_argument("--n-images", type=int, default=100, help="marked test images explained per variant and seed")
    parser.add_argument("--n-random", type=int, default=100, help="random-unit draws per number of units removed")
    parser.add_argument("--cached-only", action="store_true", help="load every model, train none (missing: error)")
    parser.add_argument("--clf-epochs", default="auto", help="classifier epochs of every model of the study, or "
                        "'auto': chosen on the validation split for the budget (choose_clf_epochs)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: kh.pick_device())")
    parser.add_argument("--ckpt-dir", default="checkpoints")
    parser.add_argument("--out", default="results/shortcut.json")
    parser.add_argument("--pages", default="", help="write the certified shortcut model's pages into this folder")
    parser.add_argument("--screenshot", default="", help="with --pages: the explorer, marker unit removed, as a PNG")
    args = parser.parse_args(argv)
    device = torch.device(args.device) if args.device else kh.pick_device(verbose=False)
    cfg = kh.Config(**(TINY if args.tiny else {}))
    sizes = dict(TINY_SIZES) if args.tiny else dict(n_images=args.n_images, n_random=args.n_random, seeds=(0, 1, 2))
    if args.seeds is not None:
        sizes["seeds"] = tuple(args.seeds)
    data = kh.load_fashion_mnist("data", verbose=False)
    t0 = time.perf_counter()
    recipe = None
    if args.clf_epochs == "auto" and not args.tiny:
        recipe = choose_clf_epochs(cfg, data, device, args.ckpt_dir, not args.cached_only)
        cfg = kh.Config(**{**cfg.to_dict(), "clf_epochs": recipe["chosen"]})
    elif args.clf_epochs != "auto":
        cfg = kh.Config(**{**cfg.to_dict(), "clf_epochs": int(args.clf_epochs)})
    recipe_seconds = time.perf_counter() - t0
    result = kh.run_shortcut(data, cfg, device, args.variants, ckpt_dir=args.ckpt_dir, train=not args.cached_only,
                             **sizes)
    result["recipe"] = {**(recipe or {"chosen": cfg.clf_epochs, "rule": "given"}), "seconds": recipe_seconds}
    result["wall_seconds"] = time.perf_counter() - t0
    if args.pages and "certified" in result["variants"]:
        seed = result["seeds"][0]
        pipeline, planted, cfg_s = shortcut_pipeline(cfg, data, device, args.ckpt_dir, seed, train=False)
        page, _ = write_pages(pipeline, planted, cfg_s, device, Path(args.pages))
        _recovery = result["per_seed"]["certified"][str(seed)].get("units", {}).get("recovery")
        pages = {"folder": args.pages, "seed": seed}
        if _recovery and args.screenshot:
            unit = _recovery["M"]["closest_unit"]
            image = marker_image(pipeline, planted, unit)
            pages["screenshot"] = (screenshot(page, image, unit, Path(args.screenshot)) if image is not None else
                                   f"no marked Shirt has unit {unit} as its largest contributor")
        result["pages"] = pages
    kh.atomic_write_bytes(args.out, (json.dumps(result, indent=1) + "\n").encode())
    for v in result["variants"]:
        s = result["summary"][v]
        print(f"{v}: gates {s['gates']}")
        if "localisation" in s:
            print("  finds the shortcut (sparse code):", [m for m, c in s["localisation"]["shortcut"].items()
                                                          if c["finds"]])
            print("  finds the shortcut (pixels):", [m for m, c in s["localisation"]["pixel"].items() if c["finds"]])
            print("  scorers ranking a marker unit first:", [n for n, c in s["units"]["finding"].items() if c["finds"]])
    print(json.dumps(result.get("pages", {})))
    print(f"wall {result['wall_seconds']:.0f} s; stages: " +
          ", ".join(f"{k} {v:.0f} s" for k, v in result["seconds"].items()))
    return result


if __name__ == "__main__":
    main()
