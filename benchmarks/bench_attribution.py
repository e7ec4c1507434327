#!/usr/bin/env python3
"""Time the four attribution methods of ksae_helpers against Captum with the same settings.

For the first ``--n-images`` Fashion-MNIST test images (target = the model's prediction) it times

* ours, batched (``integrated_gradients``, ``simple_gradients``, ``smoothgrad``, ``decoder_weighted``
  with the default Config settings: IG 50 Gauss-Legendre steps from a zero image, SmoothGrad 25
  samples at std 0.1, decoder-weighted by the Rescale rule);
* Captum with the same settings and about the same rows per forward/backward pass
  (IntegratedGradients, Saliency(abs=False), NoiseTunnel(Saliency), and for decoder-weighted
  DeepLift (Rescale) on the classifier head in code space with the zero code as baseline, then
  ``c @ W_dec``);
* ours, one image at a time, on a subset (``--single-subset``) and extrapolated to ``--n-images``;

checks that ours and Captum agree, and prints a markdown table.

    python benchmarks/bench_attribution.py                      # 1000 images, pick_device()
    python benchmarks/bench_attribution.py --n-images 200 --device cpu

Model: ``--checkpoint PATH`` if given, else ``checkpoints/<Config().checkpoint_name()>`` if it exists,
else a randomly initialised default-size pipeline (784 -> 1024 top-50 -> 512 -> 256 -> 10): the
cost of an attribution does not depend on the trained weights.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import captum  # noqa: E402
from captum.attr import DeepLift, IntegratedGradients, NoiseTunnel, Saliency  # noqa: E402

import ksae_helpers as kh  # noqa: E402

warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")
warnings.filterwarnings("ignore", message=".*hooks and attributes on non-linear")

METHODS = ("integrated", "simple", "smoothgrad", "decoder")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-images", type=int, default=1000, help="test images to attribute (default 1000)")
    p.add_argument("--device", default=None, help="torch device (default: ksae_helpers.pick_device())")
    p.add_argument("--checkpoint", default=None, help="checkpoint to load (default: the default-config "
                                                      "checkpoint in checkpoints/ if present, else random init)")
    p.add_argument("--single-subset", type=int, default=50,
                   help="images timed one at a time, then extrapolated (default 50)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per entry; the minimum is reported")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads(N) before timing (default: leave PyTorch's default)")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    if args.n_images < 1 or args.single_subset < 1 or args.repeats < 1:
        p.error("--n-images, --single-subset and --repeats must be >= 1")
    return args


def load_model(checkpoint: str | None, device: torch.device):
    """``(cfg, pipeline, description)``."""
    default = ROOT / "checkpoints" / kh.Config().checkpoint_name()
    path = Path(checkpoint) if checkpoint else (default if default.exists() else None)
    if path is not None:
        cfg, sae, clf, _, _ = kh.load_checkpoint(path, device)
        return cfg, kh.SparseCodePipeline(sae, clf).eval(), f"checkpoint {path}"
    cfg = kh.Config()
    torch.manual_seed(cfg.seed)
    sae = kh.KSparseAutoencoder.from_config(cfg)
    clf = kh.SparseCodeClassifier.from_config(cfg)
    pipeline = kh.SparseCodePipeline(sae, clf).to(device).eval()
    desc = (f"randomly initialised default-size pipeline (no checkpoint at {default.relative_to(ROOT)}): "
            f"{cfg.d_input} -> {cfg.d_hidden} top-{cfg.k} -> {' -> '.join(map(str, cfg.clf_hidden))} -> "
            f"{cfg.n_classes}; speed does not depend on training")
    return cfg, pipeline, desc


def timed(fn, device, repeats=1):
    """``(result, seconds)``: minimum wall time over ``repeats`` runs."""
    best, out = float("inf"), None
    for _ in range(repeats):
        kh.synchronize(device)
        t0 = time.perf_counter()
        out = fn()
        if isinstance(out, torch.Tensor):
            out = out.detach()
        kh.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return out, best


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest per-image ||a_i - b_i|| / ||b_i||."""
    a, b = a.reshape(len(a), -1).double(), b.reshape(len(b), -1).double()
    return float(((a - b).norm(dim=1) / b.norm(dim=1).clamp_min(1e-30)).max())


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device else kh.pick_device(verbose=False)
    cfg, pipeline, desc = load_model(args.checkpoint, device)
    data = kh.load_fashion_mnist(download=False, verbose=False)
    n = min(args.n_images, len(data.x_test))
    x = data.x_test[:n].to(device)
    with torch.no_grad():
        target = pipeline(x).argmax(1)
    rows = kh.DEFAULT_INTERNAL_BATCH
    steps, method = cfg.ig_steps, cfg.ig_method
    nt, noise = cfg.smoothgrad_samples, cfg.smoothgrad_noise

    print("# Attribution benchmark: ours (ksae_helpers) vs Captum\n")
    print(f"- device: {kh.device_name(device)}; torch {torch.__version__}; captum {captum.__version__}; "
          f"CPU load average before start {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"- model: {desc}")
    print(f"- {n} test images, target = prediction; IG {steps} steps {method} from a zero image; SmoothGrad "
          f"{nt} samples at std {noise}; decoder-weighted by the Rescale rule")
    print(f"- rows per forward/backward pass: ours {rows} (default internal batch); Captum IG "
          f"internal_batch_size={rows} ({max(1, rows // n)} steps x {n} images per pass), NoiseTunnel "
          f"nt_samples_batch_size={max(1, rows // n)}")

    sae, clf = pipeline.sae, pipeline.clf

    def captum_decoder(xb, tb):
        with torch.no_grad():
            z = sae.encode(xb)
        c = DeepLift(clf).attribute(z, baselines=torch.zeros_like(z), target=tb)
        return c.detach() @ sae.W_dec.detach()

    ours = {
        "integrated": lambda xb, tb: kh.integrated_gradients(pipeline, xb, tb, n_steps=steps, method=method),
        "simple": lambda xb, tb: kh.simple_gradients(pipeline, xb, tb),
        "smoothgrad": lambda xb, tb: kh.smoothgrad(pipeline, xb, tb, nt_samples=nt, stdevs=noise, seed=cfg.seed),
        "decoder": lambda xb, tb: kh.decoder_weighted(pipeline, xb, tb),
    }
    theirs = {
        "integrated": lambda xb, tb: IntegratedGradients(pipeline).attribute(
            xb, baselines=torch.zeros_like(xb), target=tb, n_steps=steps, method=method, internal_batch_size=rows),
        "simple": lambda xb, tb: Saliency(pipeline).attribute(xb, target=tb, abs=False),
        "smoothgrad": lambda xb, tb: NoiseTunnel(Saliency(pipeline)).attribute(
            xb, nt_type="smoothgrad", nt_samples=nt, stdevs=noise, target=tb, abs=False,
            nt_samples_batch_size=max(1, rows // len(xb))),
        "decoder": captum_decoder,
    }

    # warm-up (first-call allocations, thread pools, numpy's leggauss import) on a few images
    for fns in (ours, theirs):
        for fn in fns.values():
            fn(x[:4], target[:4])

    m = min(args.single_subset, n)
    results = {}
    t_start = time.perf_counter()
    for name in METHODS:
        a_ours, t_ours = timed(lambda: ours[name](x, target), device, args.repeats)
        a_cap, t_cap = timed(lambda: theirs[name](x, target), device, args.repeats)

        def one_at_a_time():
            return torch.cat([ours[name](x[i:i + 1], int(target[i])) for i in range(m)])

        a_single, t_single = timed(one_at_a_time, device, args.repeats)
        results[name] = {
            "ours": t_ours, "captum": t_cap, "single": t_single * n / m,
            "diff": max_rel_diff(a_ours, a_cap),
            # smoothgrad draws per-call noise, so batched vs single differs there by design
            "single_diff": max_rel_diff(a_single, a_ours[:m]),
        }
        print(f"  {kh.METHOD_LABELS[name]}: ours {t_ours:.2f} s, Captum {t_cap:.2f} s, "
              f"one-at-a-time {t_single:.2f} s for {m} images", file=sys.stderr, flush=True)

    print("\n| method | ours (s) | Captum (s) | speed ratio (Captum/ours) | one-at-a-time (s, extrapolated) "
          "| max rel. diff |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in METHODS:
        r = results[name]
        diff = f"{r['diff']:.1e}" + (" (different noise)" if name == "smoothgrad" else "")
        print(f"| {kh.METHOD_LABELS[name]} | {r['ours']:.2f} | {r['captum']:.2f} | {r['captum'] / r['ours']:.2f} | "
              f"{r['single']:.1f} | {diff} |")
    tot = {k: sum(r[k] for r in results.values()) for k in ("ours", "captum", "single")}
    print(f"| **All four** | **{tot['ours']:.2f}** | **{tot['captum']:.2f}** | **{tot['captum'] / tot['ours']:.2f}** | "
          f"**{tot['single']:.1f}** | |")
    print(f"\n- {n} images on {kh.device_name(device)}; min of {args.repeats} run(s) per entry; "
          f"one-at-a-time timed on the first {m} images and scaled by {n}/{m}.")
    print("- max rel. diff = max over images of ||ours - Captum|| / ||Captum|| per image. SmoothGrad "
          "uses independent noise in the two libraries, so its difference is Monte-Carlo noise, not error.")
    print("- one-at-a-time vs batched (ours), max rel. diff on the subset: " + ", ".join(
        f"{kh.METHOD_LABELS[k]} {results[k]['single_diff']:.1e}" for k in METHODS if k != "smoothgrad")
        + " (SmoothGrad: different noise per call by design)")
    print(f"- benchmark wall time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
