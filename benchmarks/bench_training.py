"""Seconds per training epoch: our loops against the common way of writing them.

OURS       ksae_helpers.train_autoencoder / train_classifier with the default Config (only the epochs
           changed): the whole training set as one on-device tensor, index slices of a seeded
           permutation, top-k decode through the k active atoms only (embedding bag), fused Adam,
           a classifier that reads the precomputed sparse codes.
REFERENCE  what a tutorial would write: torchvision's FashionMNIST dataset (read offline from a temp
           root holding the same files) with a per-sample ``ToTensor`` transform (and a per-sample
           random horizontal flip where the config's ``ae_hflip`` / ``clf_hflip`` is on, and for the
           classifier a per-sample random move of ``clf_shift`` pixels up/down/left/right, or none),
           ``DataLoader(batch_size=256, shuffle=True)``, a dense top-k SAE (``z @ W_dec`` over all 1024
           atoms, same unit-norm atoms and AuxK loss), plain (non-fused) ``torch.optim.Adam``, and a
           classifier of ``nn.Linear`` layers 1024 -> 512 -> 256 -> 10 with dropout 0.3 that encodes
           each batch with the frozen SAE and takes the *dense* code.

Both sides do the same maths per step (same loss, same AuxK, same decoder normalisation, same
schedule), so the ratio measures the implementation, not the recipe. Run from the repository root:

    .venv/bin/python benchmarks/bench_training.py   # 1 epoch of each, best of 2: ~1 min on an idle 2-core CPU
    .venv/bin/python benchmarks/bench_training.py --epochs 3 --device cuda
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ksae.data  # noqa: E402
import ksae_helpers as kh  # noqa: E402

DEFAULT_AE_EPOCHS, DEFAULT_CLF_EPOCHS = kh.Config().ae_epochs, kh.Config().clf_epochs  # 30, 50


# -----------------------------------------------------------------------------------------------------
# Reference implementation ("the common way")
# -----------------------------------------------------------------------------------------------------


class DenseTopKSAE(nn.Module):
    """Top-k SAE written the usual way: dense code ``z: [B, H]`` and a dense decode ``z @ W_dec``."""

    def __init__(self, cfg: kh.Config):
        super().__init__()
        self.k = cfg.k
        w = torch.randn(cfg.d_hidden, cfg.d_input)
        w /= w.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w)  # [H, D]
        self.W_enc = nn.Parameter(w.clone())  # [H, D]
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_hidden))
        self.b_pre = nn.Parameter(torch.zeros(cfg.d_input))

    def pre(self, x):
        return (x - self.b_pre) @ self.W_enc.T + self.b_enc

    def topk(self, pre):
        values, indices = pre.topk(self.k, dim=1)
        return torch.zeros_like(pre).scatter(1, indices, F.relu(values))

    def forward(self, x):
        pre = self.pre(x)
        z = self.topk(pre)
        return z @ self.W_dec + self.b_pre, z, pre


class DenseClassifier(nn.Module):
    def __init__(self, cfg: kh.Config):
        super().__init__()
        widths = (cfg.d_hidden, *cfg.clf_hidden)
        layers: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(w_in, w_out), nn.ReLU(), nn.Dropout(cfg.dropout)]
        layers.append(nn.Linear(widths[-1], cfg.n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z)


def fvu(x_hat, x):
    return (x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()


def make_torchvision_root(source: Path, root: Path) -> Path:
    """Extracted IDX files under ``root/FashionMNIST/raw`` (torchvision's offline layout; no download)."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in kh.FASHION_MNIST_SHA256:
        (raw / name).write_bytes(ksae.data._read_idx_bytes(source, name))
    return root


class RandomShift:
    """Per-sample transform: the ``[1, 28, 28]`` image as it is or moved ``pixels`` up, down, left or right
    (each of the five with equal probability, as ours draws among its precomputed shifted views)."""

    def __init__(self, pixels: int):
        self.offsets = [(0, 0), (pixels, 0), (-pixels, 0), (0, pixels), (0, -pixels)]

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        dy, dx = self.offsets[int(torch.randint(len(self.offsets), ()))]
        return kh.shift_images(image.reshape(1, -1), dy, dx).reshape(image.shape)


def reference_datasets(tv_root: Path, cfg: kh.Config):
    """``(ae_dataset, clf_dataset)``: torchvision FashionMNIST with per-sample PIL -> tensor transforms
    (plus a per-sample random mirror image and shift where the config asks for them, as ours does)."""
    from torchvision import transforms
    from torchvision.datasets import FashionMNIST

    def transform(flip, shift=0):
        steps = ([transforms.RandomHorizontalFlip()] if flip else []) + [transforms.ToTensor()]
        return transforms.Compose(steps + ([RandomShift(shift)] if shift else []))

    ae_transform = transform(cfg.ae_hflip)
    clf_transform = transform(cfg.clf_hflip, cfg.clf_shift)
    return (FashionMNIST(str(tv_root), train=True, transform=ae_transform, download=False),
            FashionMNIST(str(tv_root), train=True, transform=clf_transform, download=False))


def reference_train_autoencoder(sae: DenseTopKSAE, dataset, x_mean, cfg, device, epochs):
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True)
    sae.to(device).train()
    with torch.no_grad():
        sae.b_pre.copy_(x_mean.to(device))
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr)  # plain, not fused
    sched = kh.make_scheduler(opt, cfg.ae_lr_schedule, epochs * len(loader))  # same per-step schedule as ours
    since_fired = torch.zeros(cfg.d_hidden, device=device)
    for _ in range(epochs):
        for images, _labels in loader:
            x = images.view(len(images), -1).to(device)
            x_hat, z, pre = sae(x)
            loss = fvu(x_hat, x)
            dormant = since_fired >= cfg.dead_after
            if cfg.aux_k and dormant.any():  # AuxK, dense: top-aux_k dormant units reconstruct the residual
                masked = pre.masked_fill(~dormant, float("-inf"))
                v, i = masked.topk(min(cfg.aux_k, int(dormant.sum())), dim=1)
                z_aux = torch.zeros_like(pre).scatter(1, i, F.relu(v))
                loss = loss + cfg.aux_coef * fvu(z_aux @ sae.W_dec, (x - x_hat).detach())
            opt.zero_grad()
            loss.backward()
            with torch.no_grad():  # keep atoms unit-norm: drop the radial gradient, step, renormalise
                sae.W_dec.grad -= (sae.W_dec.grad * sae.W_dec).sum(1, keepdim=True) * sae.W_dec
            opt.step()
            sched.step()
            with torch.no_grad():
                sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True)
                since_fired = torch.where((z > 0).any(0), 0, since_fired + len(x))
    kh.synchronize(device)
    return sae.eval()


def reference_train_classifier(clf: DenseClassifier, sae: DenseTopKSAE, dataset, cfg, device, epochs):
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True)
    clf.to(device)
    sae.eval()
    opt = torch.optim.Adam(clf.parameters(), lr=cfg.lr)
    sched = kh.make_scheduler(opt, cfg.clf_lr_schedule, epochs * len(loader))
    for _ in range(epochs):
        clf.train()
        for images, labels in loader:
            x, y = images.view(len(images), -1).to(device), labels.to(device)
            with torch.no_grad():
                z = sae.topk(sae.pre(x))  # dense [B, 1024] code from the frozen SAE
            loss = F.cross_entropy(clf(z), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    kh.synchronize(device)
    return clf.eval()


# -----------------------------------------------------------------------------------------------------
# Benchmark
# -----------------------------------------------------------------------------------------------------


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=1, help="epochs of each phase to time (default 1)")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: ksae_helpers.pick_device())")
    parser.add_argument("--train-subset", type=int, default=0,
                        help="time on the first N training images only (default 0 = all 60 000)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="time everything this many times and keep each phase's fastest (default 2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own choice); 1 is much faster on a busy CPU")
    parser.add_argument("--skip-reference", action="store_true", help="time only our loops")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.repeats < 1:
        parser.error("--epochs and --repeats must be >= 1")

    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device else kh.pick_device(verbose=False)
    cfg = kh.Config(ae_epochs=args.epochs, clf_epochs=args.epochs, train_subset=args.train_subset)
    data = kh.load_fashion_mnist(download=False, verbose=False)
    x_train, y_train = kh.train_subset(data, cfg.train_subset)
    n = len(x_train)
    print(f"device: {kh.device_name(device)}")
    if hasattr(os, "getloadavg"):
        load = os.getloadavg()[0]
        busy = (" -- other processes share the CPU: figures are inflated, and with several torch threads a "
                "phase can run 10x slower in one repeat than the next (OpenMP spin-waits; try --threads 1)"
                ) if load > (
            os.cpu_count() or 1) else ""
        print(f"load average before timing: {load:.2f} on {os.cpu_count()} cores{busy}")
    print(f"torch {torch.__version__}; {n} training images; batch {cfg.batch_size}; k={cfg.k}, "
          f"H={cfg.d_hidden}; {args.epochs} epoch(s) of each phase, best of {args.repeats}; "
          f"lr schedules ae={cfg.ae_lr_schedule} clf={cfg.clf_lr_schedule}; "
          f"hflip ae={cfg.ae_hflip} clf={cfg.clf_hflip}; clf shift {cfg.clf_shift} px")

    # one-time costs that are not per-epoch: the first optimizer construction imports torch._dynamo
    kh.make_adam([nn.Parameter(torch.zeros(1, device=device))], 1e-3)
    torch.optim.Adam([nn.Parameter(torch.zeros(1, device=device))], lr=1e-3)

    tmp = tempfile.TemporaryDirectory()
    ae_ds = clf_ds = None
    if not args.skip_reference:
        tv_root = make_torchvision_root(Path(data.source), Path(tmp.name))
        ae_ds, clf_ds = reference_datasets(tv_root, cfg)
        if cfg.train_subset:
            ae_ds = torch.utils.data.Subset(ae_ds, range(n))
            clf_ds = torch.utils.data.Subset(clf_ds, range(n))

    # Each repeat times ours then the reference with fresh models; the table keeps each phase's fastest
    # repeat (the run least disturbed by anything else on the machine).
    runs = {key: [] for key in ("ours_ae", "clf_setup", "ours_clf", "ref_ae", "ref_clf")}
    for rep in range(args.repeats):
        # ---- ours ---------------------------------------------------------------------------------
        torch.manual_seed(cfg.seed)
        sae = kh.KSparseAutoencoder.from_config(cfg)
        clf = kh.SparseCodeClassifier.from_config(cfg)
        t_ae, _ = timed(lambda: (kh.train_autoencoder(sae, x_train, cfg, device), kh.synchronize(device)))
        # train_classifier encodes every view of the training set once before its first epoch: time that
        # setup on its own, so the per-epoch figure and the projection are both honest
        setup, _ = timed(lambda: (kh.encode_views(sae, x_train, cfg, device), kh.synchronize(device)))
        t_clf, _ = timed(lambda: (kh.train_classifier(clf, sae, x_train, y_train, cfg, device), kh.synchronize(device)))
        runs["ours_ae"].append(t_ae / args.epochs)
        runs["clf_setup"].append(setup)
        runs["ours_clf"].append(max(t_clf - setup, 1e-9) / args.epochs)
        # ---- reference ----------------------------------------------------------------------------
        if not args.skip_reference:
            torch.manual_seed(cfg.seed)
            ref_sae, ref_head = DenseTopKSAE(cfg), DenseClassifier(cfg)
            t, _ = timed(lambda: reference_train_autoencoder(ref_sae, ae_ds, x_train.mean(0), cfg, device,
                                                             args.epochs))
            runs["ref_ae"].append(t / args.epochs)
            t, _ = timed(lambda: reference_train_classifier(ref_head, ref_sae, clf_ds, cfg, device, args.epochs))
            runs["ref_clf"].append(t / args.epochs)
        print(f"repeat {rep + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in runs.items() if v),
              flush=True)
    tmp.cleanup()
    best = {k: (min(v) if v else float("nan")) for k, v in runs.items()}
    ours_ae, ours_clf, clf_setup, ref_ae, ref_clf = (best[k] for k in ("ours_ae", "ours_clf", "clf_setup",
                                                                       "ref_ae", "ref_clf"))

    # ---- table ------------------------------------------------------------------------------------
    rows = [("autoencoder", ours_ae, ref_ae), ("classifier", ours_clf, ref_clf)]
    print()
    print(f"{'phase':<13}{'ours s/epoch':>14}{'reference s/epoch':>19}{'ratio ref/ours':>16}")
    for phase, ours, ref in rows:
        print(f"{phase:<13}{ours:>14.2f}{ref:>19.2f}{ref / ours:>15.1f}x")
    print(f"(classifier one-time setup, encoding the training set's {len(list(kh.classifier_views(x_train[:1], cfg)))} "
          f"views (mirror images, shifted copies): "
          f"{clf_setup:.2f} s, not included above)")
    scale = len(data.x_train) / n
    total = (DEFAULT_AE_EPOCHS * ours_ae + DEFAULT_CLF_EPOCHS * ours_clf + clf_setup) * scale
    print(f"\nprojected default training, ours ({DEFAULT_AE_EPOCHS} AE + {DEFAULT_CLF_EPOCHS} classifier epochs"
          f"{', scaled to 60 000 images' if scale != 1 else ''}): {total:.0f} s = {total / 60:.1f} min")
    if not math.isnan(ref_ae):
        ref_total = (DEFAULT_AE_EPOCHS * ref_ae + DEFAULT_CLF_EPOCHS * ref_clf) * scale
        print(f"projected default training, reference: {ref_total:.0f} s = {ref_total / 60:.1f} min")


if __name__ == "__main__":
    main()
