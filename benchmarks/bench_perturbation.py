"""Cost per image of every attribution method on this machine; the perturbation family against Captum's
implementations on the same images (time and difference); the pipeline shortcut against the model's own forward;
and the sampling methods' error against their sample counts (why the defaults are what they are). Every image is
from the validation split (correctly classified, class-balanced); the model is the default one of ``--seed``
(``checkpoints/``, trained if missing).

    .venv/bin/python benchmarks/bench_perturbation.py --json results/benchmarks/perturbation.json

Captum runs image by image with ``perturbations_per_eval`` as large as the method allows, its fastest setting here
(each image still pays its Python loop over perturbations for KernelSHAP and LIME). The sampling error of a map is
``||map - reference|| / ||reference||`` per image (on the 49 superpixel values), the reference the same method with a
large budget (Shapley value sampling for Shapley and KernelSHAP, which estimate the same values; LIME for LIME);
``reference_noise`` is the error of one reference against another with a different seed (a floor).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ksae._util  # noqa: E402
import ksae_helpers as kh  # noqa: E402

SIDE = 28


def validation_images(pipeline, data, cfg, n: int):
    """``n`` correctly classified validation images, class-balanced (the first of each class in turn)."""
    _, _, x, y = kh.train_val_split(data, cfg)
    with torch.no_grad():
        ok = pipeline(x).argmax(1) == y
    correct = torch.nonzero(ok)[:, 0]
    keep = correct[kh.balanced_subset(y[correct], n, seed=cfg.seed)]
    return x[keep], y[keep]


def features(maps: torch.Tensor, patch: int) -> np.ndarray:
    """The superpixel values ``[N, M]`` of maps ``[N, 784]`` (each pixel carries its feature's value)."""
    return maps.reshape(len(maps), SIDE, SIDE)[:, ::patch, ::patch].reshape(len(maps), -1).double().numpy()


def rel_errors(a: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a - ref, axis=1) / np.linalg.norm(ref, axis=1)


def captum_maps(method: str, pipeline, x, y, cfg) -> torch.Tensor:
    """Captum's map of ``method`` for ``x: [N, 784]``, image by image, its own sampling (torch's global generator)."""
    from captum._utils.models.linear_model import SkLearnRidge
    from captum.attr import FeatureAblation, KernelShap, Lime, Occlusion, ShapleyValueSampling

    model = lambda images: pipeline(images.reshape(len(images), -1))
    mask = kh.superpixel_grid(cfg.patch_size)[None]
    calls = {"occlusion": lambda i, t: Occlusion(model).attribute(i, sliding_window_shapes=(cfg.patch_size,) * 2,
                                                               strides=cfg.occlusion_stride, target=t,
                                                               perturbations_per_eval=1024),
             "feature_ablation": lambda i, t: FeatureAblation(model).attribute(i, target=t, feature_mask=mask,
                                                                            perturbations_per_eval=64),
             "shapley": lambda i, t: ShapleyValueSampling(model).attribute(i, target=t, feature_mask=mask,
                                                                        n_samples=cfg.shapley_samples,
                                                                        perturbations_per_eval=64),
             "kernel_shap": lambda i, t: KernelShap(model).attribute(i, target=t, feature_mask=mask,
                                                                  n_samples=cfg.kernel_shap_samples,
                                                                  perturbations_per_eval=1024),
             "lime": lambda i, t: Lime(model, interpretable_model=SkLearnRidge(alpha=1.0)).attribute(
                 i, target=t, feature_mask=mask, n_samples=cfg.lime_samples, perturbations_per_eval=1024)}
    out = []
    for image, label in zip(x, y):
        out.append(calls[method](image.reshape(1, SIDE, SIDE), label[None]).reshape(1, -1).to(x.dtype))
    return torch.cat(out)


def timed(fn, repeats: int = 1):
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=100, help="validation images timed per method")
    parser.add_argument("--captum-images", type=int, default=10, help="of them, explained by Captum too")
    parser.add_argument("--convergence-images", type=int, default=12)
    parser.add_argument("--epochs", type=int, nargs=2, default=None, metavar=("AE", "CLF"), help="(smoke runs)")
    parser.add_argument("--train-subset", type=int, default=0, help="(smoke runs)")
    parser.add_argument("--ckpt-dir", default="checkpoints")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    epochs = {} if args.epochs is None else {"ae_epochs": args.epochs[0], "clf_epochs": args.epochs[1]}
    cfg = kh.Config(seed=args.seed, train_subset=args.train_subset, **epochs)
    device = torch.device("cpu")
    data = kh.load_fashion_mnist("data", verbose=False)
    sae, clf, _, _ = kh.load_or_train(cfg, data, device, args.ckpt_dir)  # the default model unless told otherwise
    pipeline = kh.SparseCodePipeline(sae, clf).eval()
    x, y = validation_images(pipeline, data, cfg, args.images)
    kh.attribute_all(pipeline, x[:10], y[:10], cfg)  # warm-up
    methods = {}
    for m, label in kh.METHOD_LABELS.items():
        seconds, maps = timed(lambda m=m: kh.attribute_all(pipeline, x, y, cfg, [m])[m], repeats=2)
        row = {"method": label, "family": next(f for f, ms in kh.METHOD_FAMILIES.items() if m in ms),
               "ms_per_image": 1e3 * seconds / len(x)}
        if m in kh.METHOD_FAMILIES["perturbation"]:
            n = args.captum_images
            torch.manual_seed(0)
            captum_seconds, theirs = timed(lambda m=m: captum_maps(m, pipeline, x[:n], y[:n], cfg))
            ours_n = maps[:n].double()
            row.update({"captum_ms_per_image": 1e3 * captum_seconds / n,
                        "captum_over_ours": captum_seconds / n / (seconds / len(x)),
                        "rel_diff_to_captum": float((ours_n - theirs.double()).norm() / theirs.double().norm())})
            direct = kh.attribute_all(torch.nn.Sequential(pipeline).eval(), x[:20], y[:20], cfg, [m])[m]
            row["shortcut_max_rel_diff"] = float(((maps[:20] - direct).abs().amax(1) / direct.abs().amax(1)).max())
        methods[m] = row
        print(f"{label}: {row['ms_per_image']:.2f} ms/image" + (
            f", Captum {row['captum_ms_per_image']:.1f} ms/image ({row['captum_over_ours']:.0f}x), relative "
            f"difference {row['rel_diff_to_captum']:.1e}, shortcut {row['shortcut_max_rel_diff']:.1e}"
            if "captum_ms_per_image" in row else ""), flush=True)
    xc, yc = x[:args.convergence_images], y[:args.convergence_images]
    p = cfg.patch_size
    features_per_image = int(kh.superpixel_grid(p).max()) + 1
    reference = {"shapley": [features(kh.shapley_value_sampling(pipeline, xc, yc, n_samples=500, seed=s), p)
                             for s in (100, 101)],
                 "lime": [features(kh.lime(pipeline, xc, yc, n_samples=20000, seed=s), p) for s in (100, 101)]}
    runs = {"shapley": (kh.shapley_value_sampling, (5, 10, 25, 50, 100), "shapley", "Shapley value sampling, 500"),
            "kernel_shap": (kh.kernel_shap, (300, 600, 1200, 2400), "shapley", "Shapley value sampling, 500"),
            "lime": (kh.lime, (300, 600, 1200, 2400), "lime", "LIME, 20000")}
    convergence = []
    for m, (fn, counts, ref, ref_name) in runs.items():
        noise = rel_errors(reference[ref][1], reference[ref][0])
        for n in counts:
            err = rel_errors(features(fn(pipeline, xc, yc, n_samples=n, seed=1), p), reference[ref][0])
            default = n == {"shapley": cfg.shapley_samples, "kernel_shap": cfg.kernel_shap_samples,
                            "lime": cfg.lime_samples}[m]
            convergence.append({"method": kh.METHOD_LABELS[m], "n_samples": n, "default": default,
                                "evaluations_per_image": n * (features_per_image - 1) + 2 if m == "shapley" else n,
                                "rel_error_mean": float(err.mean()), "rel_error_max": float(err.max()),
                                "reference": ref_name, "reference_noise": float(noise.mean())})
            print(f"{kh.METHOD_LABELS[m]}, {n} samples: relative error {err.mean():.3f} (max {err.max():.3f}; "
                  f"reference noise {noise.mean():.3f})", flush=True)
    result = ksae._util._jsonable({
        "machine": f"{os.uname().machine}, {os.cpu_count()} cores", "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()), "created": time.strftime("%Y-%m-%d"), "model_seed": args.seed,
        "images": len(x), "captum_images": args.captum_images, "convergence_images": len(xc),
        "config": {k: getattr(cfg, k) for k in cfg.ATTRIBUTION_FIELDS}, "methods": methods,
        "sampling_error": convergence})
    if args.json:
        kh.atomic_write_bytes(args.json, (json.dumps(result, indent=1) + "\n").encode())
    return result


if __name__ == "__main__":
    main()
