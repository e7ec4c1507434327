"""Adam, learning-rate schedules, classifier views, and the two training loops (the autoencoder's, one for
every kind: the kind supplies its loss terms)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ._util import IMAGE_SIDE
from .config import DECAY_SCHEDULES
from .cuda_graphs import GraphedStep, graph_backend
from .data import train_val_split
from .metrics import dataset_fvu, encode_dataset
from .models import SparseCodeClassifier, densify
from .runtime import synchronize
from .sae import SparseAutoencoder, TrainingContext, autoencoder_from_config
from .sae.base import _pad_codes

if TYPE_CHECKING:
    from .config import Config
    from .cuda_graphs import CudaGraphBackend
    from .data import FashionMNIST


def _batches(n: int, batch_size: int, generator: torch.Generator, device: torch.device):
    """Random-permutation index slices covering ``range(n)`` once (last batch may be short)."""
    perm = torch.randperm(n, generator=generator).to(device)
    return [perm[i:i + batch_size] for i in range(0, n, batch_size)]


def make_adam(params, lr: float, capturable: bool = False) -> torch.optim.Optimizer:
    """Adam, fused where this PyTorch supports it (on this CPU: 0.5 ms against 8 ms per step).

    ``capturable=True`` (CUDA graphs): the learning rate is a device tensor (``set_lr_`` fills it without a
    host sync) and the step count lives on the device, so ``step()`` can be replayed inside a graph.
    """
    params = list(params)
    if capturable:
        lr_tensor = torch.tensor(lr, device=params[0].device)
        try:
            return torch.optim.Adam(params, lr=lr_tensor, fused=True, capturable=True)
        except (RuntimeError, TypeError, ValueError):  # PyTorch without fused capturable Adam
            return torch.optim.Adam(params, lr=lr_tensor, capturable=True)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # older PyTorch, or a device without a fused kernel
        return torch.optim.Adam(params, lr=lr)


def lr_factor(schedule: str, step: int, total_steps: int) -> float:
    """Multiplier of the peak learning rate at ``step`` of ``total_steps``."""
    progress = min(step / max(total_steps, 1), 1.0)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule in DECAY_SCHEDULES:
        return min(1.0, (1 - progress) / DECAY_SCHEDULES[schedule])
    return 1.0


def make_scheduler(opt: torch.optim.Optimizer, schedule: str, total_steps: int):
    """Per-step learning-rate schedule (see ``lr_factor``) as a PyTorch scheduler (the benchmarks' reference
    loops; ours call ``set_lr_`` before every step, which also works for a capturable optimiser's tensor lr)."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(schedule, step, total_steps))


def set_lr_(opt: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate to ``lr`` (a tensor learning rate is filled in place, with no
    host sync: what a CUDA graph's captured ``opt.step()`` reads)."""
    for group in opt.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def hflip(x: torch.Tensor) -> torch.Tensor:
    """Mirror ``x: [N, 784]`` images left-right."""
    return x.reshape(-1, IMAGE_SIDE, IMAGE_SIDE).flip(2).reshape(len(x), -1)


def shift_images(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Move ``x: [N, 784]`` images ``dy`` pixels down and ``dx`` right (negative: up, left); what moves in is 0."""
    if max(abs(dy), abs(dx)) >= IMAGE_SIDE:
        raise ValueError(f"shift must be smaller than the image side {IMAGE_SIDE}, got dy={dy}, dx={dx}")
    pad = max(abs(dy), abs(dx))
    padded = F.pad(x.reshape(-1, IMAGE_SIDE, IMAGE_SIDE), (pad, pad, pad, pad))
    moved = padded[:, pad - dy:pad - dy + IMAGE_SIDE, pad - dx:pad - dx + IMAGE_SIDE]
    return moved.reshape(len(x), -1)


SHIFT_DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1))  # down, up, right, left: classifier_views' order


def classifier_views(x: torch.Tensor, cfg: Config) -> Iterator[torch.Tensor]:
    """Yield, one at a time (only one shifted copy in memory), the versions of ``x: [N, 784]`` the classifier
    trains on: the images, their mirror images if ``cfg.clf_hflip``, then each of those moved
    ``cfg.clf_shift`` pixels down, up, right and left (images first, then mirror images)."""
    bases = [x, hflip(x)] if cfg.clf_hflip else [x]
    yield from bases
    s = cfg.clf_shift
    if s:
        for base in bases:
            for dy, dx in SHIFT_DIRECTIONS:
                yield shift_images(base, dy * s, dx * s)


def _progress(total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit="step", mininterval=2.0, dynamic_ncols=True)


def autoencoder_step(sae: SparseAutoencoder, opt: torch.optim.Optimizer, ctx: TrainingContext,
                     since_fired: torch.Tensor, sums: torch.Tensor) -> Callable[[torch.Tensor], None]:
    """The autoencoder's training step for ``GraphedStep``, one for every kind: ``step(xb: [B, D])`` asks the kind
    for the batch's loss terms (``sae.training_terms``: top-k's FVU + AuxK, ...; dormant units: those that fired on
    none of the last ``dead_after`` images), takes one Adam step between the kind's gradient and weight
    constraints (``constrain_grads_``, ``after_step_``: unit-norm atoms for most kinds), and updates in place
    ``since_fired: [H]`` (images since each unit last fired) and ``sums: [4]`` (loss, FVU, the kind's auxiliary
    term and L0, each summed over images). ``ctx.graph_safe``: the kind's fixed-shape, sync-free pass."""
    def step(xb: torch.Tensor) -> None:
        terms = sae.training_terms(xb, since_fired >= ctx.cfg.dead_after, ctx)
        opt.zero_grad(set_to_none=True)
        terms.loss.backward()
        sae.constrain_grads_()
        opt.step()
        sae.after_step_()
        since_fired.add_(len(xb)).masked_fill_(terms.fired > 0, 0)
        sums.add_(torch.stack([terms.loss.detach(), terms.fvu.detach(), terms.aux.detach(),
                               terms.l0.to(sums)]) * len(xb))
    return step


def train_autoencoder(sae: SparseAutoencoder, x_train: torch.Tensor, cfg: Config,
                      device: torch.device, x_val: torch.Tensor | None = None,
                      backend: CudaGraphBackend | None = None) -> dict[str, list[float]]:
    """Train ``sae`` (any kind) on ``x_train: [N, D]`` with Adam and the kind's loss terms. Returns per-epoch
    history (``loss``, ``fvu``, ``aux_loss``: the kind's auxiliary term, named by ``aux_name``, ``l0``: mean
    active units per training image, ``dormant_fraction``), with the FVU and mean L0 of the validation images
    ``x_val: [M, D]`` after every epoch (``val_fvu``, ``val_l0``: the inference activation's) if they are given.

    One loop for every kind (``autoencoder_step``; top-k: batch FVU + ``aux_coef`` * AuxK). On CUDA with
    ``cfg.cuda_graphs`` every full batch replays one CUDA graph (``GraphedStep``; ``backend`` overrides
    ``graph_backend``, for tests). After each epoch the kind's ``end_epoch_`` runs (relu_l1 resamples dormant
    units). Deterministic on CPU for a fixed ``cfg.seed``.
    """
    *_, history = _autoencoder_epochs(sae, x_train, cfg, device, x_val, backend)  # every epoch, in order
    return history


def _autoencoder_epochs(sae: SparseAutoencoder, x_train: torch.Tensor, cfg: Config, device: torch.device,
                        x_val: torch.Tensor | None = None, backend: CudaGraphBackend | None = None):
    """``train_autoencoder`` one epoch at a time: yields the (growing) history after each epoch; the model is
    left in eval mode once exhausted. ``benchmarks/variant_training.py`` times kinds' epochs alternately with it."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    x = x_train.to(device)
    sae.to(device).train()
    sae.prepare_training_(x)
    backend = backend or graph_backend(cfg, device)
    opt = make_adam(sae.parameters(), cfg.lr, capturable=backend is not None and x.is_cuda)
    steps = math.ceil(len(x) / cfg.batch_size)
    ctx = TrainingContext(cfg, torch.zeros((), device=device), cfg.ae_epochs * steps, backend is not None)
    since_fired = torch.zeros(sae.d_hidden, dtype=torch.long, device=device)  # images since last active
    sums = torch.zeros(4, device=device)
    step = GraphedStep(autoencoder_step(sae, opt, ctx, since_fired, sums), cfg.batch_size, backend)
    history = {"loss": [], "fvu": [], "aux_loss": [], "l0": [], "dormant_fraction": [], "val_fvu": [], "val_l0": [],
               "aux_name": sae.aux_name}
    bar = _progress(cfg.ae_epochs * steps, "autoencoder")
    for epoch in range(cfg.ae_epochs):
        sums.zero_()
        for i, idx in enumerate(_batches(len(x), cfg.batch_size, gen, device)):
            set_lr_(opt, cfg.lr * lr_factor(cfg.ae_lr_schedule, epoch * steps + i, cfg.ae_epochs * steps))
            ctx.step.fill_(epoch * steps + i)
            xb = x[idx]
            if cfg.ae_hflip:
                flip = torch.rand(len(idx), generator=gen).to(device) < 0.5
                xb = torch.where(flip[:, None], hflip(xb), xb)
            step(xb)
            bar.update()
        sae.end_epoch_(x, since_fired, opt, ctx, epoch)
        mean = (sums / len(x)).tolist()
        dormant_fraction = float((since_fired >= cfg.dead_after).float().mean())
        for key, value in zip(("loss", "fvu", "aux_loss", "l0", "dormant_fraction"), mean + [dormant_fraction]):
            history[key].append(value)
        if x_val is not None:
            history["val_fvu"].append(dataset_fvu(sae, x_val, device))
            history["val_l0"].append(float((encode_dataset(sae, x_val, device)[0] > 0).sum(1).float().mean()))
            sae.train()
        bar.set_postfix(epoch=epoch + 1, loss=f"{mean[0]:.4f}", fvu=f"{mean[1]:.4f}", l0=f"{mean[3]:.1f}",
                        dormant=f"{dormant_fraction:.3f}",
                        **({"val_fvu": f"{history['val_fvu'][-1]:.4f}"} if x_val is not None else {}))
        yield history
    bar.close()
    sae.eval()


_WIDTH_PROBE_IMAGES = 4096  # ViewCodes estimates a varying code width from this many images


CODE_MEMORY_BUDGET = 2 * 2**30  # bytes: the classifier's view codes are held up to this size, else encoded per batch


def n_classifier_views(cfg: Config) -> int:
    """How many views ``classifier_views`` yields for ``cfg``."""
    return (1 + cfg.clf_hflip) * (1 + len(SHIFT_DIRECTIONS) * (cfg.clf_shift > 0))


def view_of(x: torch.Tensor, view: torch.Tensor, cfg: Config) -> torch.Tensor:
    """Each image of ``x: [B, D]`` as its view number ``view: [B]`` of ``classifier_views`` (same order)."""
    n_bases = 1 + cfg.clf_hflip
    out = torch.empty_like(x)
    for v in view.unique().tolist():
        rows = view == v
        b = v if v < n_bases else (v - n_bases) // len(SHIFT_DIRECTIONS)
        base = x[rows] if b == 0 else hflip(x[rows])
        if v >= n_bases:
            dy, dx = SHIFT_DIRECTIONS[(v - n_bases) % len(SHIFT_DIRECTIONS)]
            base = shift_images(base, dy * cfg.clf_shift, dx * cfg.clf_shift)
        out[rows] = base
    return out


def encode_views(sae: SparseAutoencoder, x: torch.Tensor, cfg: Config,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse codes of every ``classifier_views`` view of ``x: [N, D]``: ``(values, indices)``, each
    ``[V, N, w]`` on ``device``, indices int32 (what ``ViewCodes`` holds when it fits); ``w = k`` for top-k, else
    the widest view's width (the others padded, ``_pad_codes``)."""
    return _stack_views([encode_dataset(sae, view, device) for view in classifier_views(x, cfg)], sae.d_hidden)


def _stack_views(codes: list[tuple[torch.Tensor, torch.Tensor]], d_hidden: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each view's ``(values, indices): [N, w_v]`` -> ``[V, N, w]`` at the widest ``w`` (int32 indices), filled in
    place: the codes are held once (plus the view being copied)."""
    width = max(v.shape[1] for v, _ in codes)
    values = torch.empty(len(codes), len(codes[0][0]), width, device=codes[0][0].device)
    indices = torch.empty(len(codes), len(codes[0][0]), width, dtype=torch.int32, device=codes[0][0].device)
    for i in range(len(codes)):
        values[i], indices[i] = _pad_codes(*codes[i], width, d_hidden)
        codes[i] = None
    return values, indices


class ViewCodes:
    """Sparse codes of the classifier's views of ``x: [N, D]``: encoded once and held (``[V, N, w]``
    values and int32 indices) when they fit in ``budget`` bytes, else encoded batch by batch (large k:
    at k = 1024 the held codes would take 4.9 GB). ``w`` is k for top-k; for kinds whose number of active units
    varies, the width of the first ``_WIDTH_PROBE_IMAGES`` images estimates the size, and the views are padded to
    the widest."""

    def __init__(self, sae: SparseAutoencoder, x: torch.Tensor, cfg: Config, device: torch.device,
                 budget: int | None = None):
        self.n_views = n_classifier_views(cfg)
        width = encode_dataset(sae, x[:_WIDTH_PROBE_IMAGES], device)[0].shape[1]  # k for top-k
        self.nbytes = self.n_views * len(x) * width * 8  # float32 value + int32 index per active unit
        self.held = self.nbytes <= (CODE_MEMORY_BUDGET if budget is None else budget)
        if self.held:
            self.values, self.indices = encode_views(sae, x, cfg, device)
        else:
            self.sae, self.x, self.cfg = sae.eval(), x.to(device), cfg

    @torch.no_grad()
    def batch(self, view: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes ``(values: [B, w], indices: [B, w])`` of images ``idx: [B]``, each as view ``view: [B]``."""
        if self.held:
            return self.values[view, idx], self.indices[view, idx]
        return self.sae.encode_sparse(view_of(self.x[idx], view, self.cfg))


@torch.no_grad()
def _accuracy_sparse(clf: SparseCodeClassifier, values, indices, y, batch_size: int = 8192) -> float:
    clf.eval()
    correct = sum(
        (clf.forward_sparse(values[i:i + batch_size], indices[i:i + batch_size]).argmax(1)
         == y[i:i + batch_size]).sum().item()
        for i in range(0, len(y), batch_size)
    )
    return correct / len(y)


@torch.no_grad()
def _accuracy_dense(clf: SparseCodeClassifier, values, indices, y, batch_size: int = 8192) -> float:
    """``_accuracy_sparse`` with the first layer on the densified codes ``values, indices: [N, k]``."""
    clf.eval()
    d_hidden = clf.W1.shape[0]
    correct = sum((clf(densify(values[i:i + batch_size], indices[i:i + batch_size], d_hidden)).argmax(1)
                   == y[i:i + batch_size]).sum().item() for i in range(0, len(y), batch_size))
    return correct / len(y)


def classifier_step(clf: SparseCodeClassifier, opt: torch.optim.Optimizer, sums: torch.Tensor,
                    graph_safe: bool = False) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]:
    """The classifier's training step for ``GraphedStep``: ``step(values, indices: [B, k], yb: [B])`` takes one
    Adam step on the cross-entropy of the sparse codes' logits and adds (loss summed over images, correct
    predictions) to ``sums: [2]`` in place. ``graph_safe``: the first layer on the dense code (graph-safe)."""
    def step(values: torch.Tensor, indices: torch.Tensor, yb: torch.Tensor) -> None:
        logits = clf(densify(values, indices, clf.W1.shape[0])) if graph_safe else clf.forward_sparse(values, indices)
        loss = F.cross_entropy(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sums.add_(torch.stack([loss.detach() * len(yb), (logits.argmax(1) == yb).sum()]))
    return step


def train_classifier(clf: SparseCodeClassifier, sae: SparseAutoencoder, x_train: torch.Tensor,
                     y_train: torch.Tensor, cfg: Config, device: torch.device,
                     x_val: torch.Tensor | None = None, y_val: torch.Tensor | None = None,
                     backend: CudaGraphBackend | None = None, dense: bool = False) -> dict[str, list]:
    """Train ``clf`` on the frozen autoencoder's codes of ``x_train: [N, D]`` (labels ``y_train: [N]``).

    Codes are kept sparse (``ViewCodes``: ``[V, N, k]`` values and indices for the ``V`` views of
    ``classifier_views``, mirror images and shifted copies, computed once, or per batch when they would
    exceed ``CODE_MEMORY_BUDGET``); each step takes a random view per image and
    touches only the k active rows of the first layer (``classifier_step``; a CUDA graph as in
    ``train_autoencoder``). Returns per-epoch loss, train accuracy and (if
    given) accuracy on the validation images ``x_val: [M, D]`` (never the test set).

    ``sae`` may be any encoder with ``k`` (entries per code), ``eval()`` and ``encode_sparse(x) -> (values,
    indices)`` (the controls of ``ksae.controls``: pixels, PCA). ``dense=True`` runs the first layer on the
    densified code (a matmul, as the graph-safe step does): the same function, faster for dense codes.
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    codes = ViewCodes(sae, x_train, cfg, device)
    y = y_train.to(device)
    val = None if x_val is None else (*encode_dataset(sae, x_val, device), y_val.to(device))
    clf.to(device)
    backend = backend or graph_backend(cfg, device)
    opt = make_adam(clf.parameters(), cfg.lr, capturable=backend is not None and y.is_cuda)
    steps = math.ceil(len(y) / cfg.batch_size)
    sums = torch.zeros(2, device=device)
    step = GraphedStep(classifier_step(clf, opt, sums, graph_safe=backend is not None or dense), cfg.batch_size,
                       backend)
    history = {"loss": [], "train_acc": [], "val_acc": []}
    bar = _progress(cfg.clf_epochs * steps, "classifier")
    for epoch in range(cfg.clf_epochs):
        clf.train()
        sums.zero_()
        batches = _batches(len(y), cfg.batch_size, gen, device)
        # one view per image, drawn for the whole epoch (the same numbers as a draw per step): one host-to-device
        # copy per epoch, none per step, so the host never waits for the GPU inside the epoch
        views = torch.randint(codes.n_views, (len(y),), generator=gen).to(device).split(cfg.batch_size)
        for i, (idx, view) in enumerate(zip(batches, views)):
            set_lr_(opt, cfg.lr * lr_factor(cfg.clf_lr_schedule, epoch * steps + i, cfg.clf_epochs * steps))
            step(*codes.batch(view, idx), y[idx])
            bar.update()
        loss_mean, acc = (sums / len(y)).tolist()
        history["loss"].append(loss_mean)
        history["train_acc"].append(acc)
        if val is not None:
            history["val_acc"].append((_accuracy_dense if dense else _accuracy_sparse)(clf, *val))
        bar.set_postfix(epoch=epoch + 1, loss=f"{loss_mean:.4f}", acc=f"{acc:.3f}",
                        **({"val_acc": f"{history['val_acc'][-1]:.3f}"} if val is not None else {}))
    bar.close()
    clf.eval()
    return history


def train_autoencoder_on_split(cfg: Config, data: FashionMNIST,
                               device: torch.device) -> tuple[SparseAutoencoder, float]:
    """A fresh autoencoder trained with ``cfg`` on the training split (``train_val_split``), and the seconds it
    took (device synchronised): what the benchmarks compare recipes with."""
    x_train, _, _, _ = train_val_split(data, cfg)
    torch.manual_seed(cfg.seed)
    sae = autoencoder_from_config(cfg)
    t0 = time.perf_counter()
    train_autoencoder(sae, x_train, cfg, device)
    synchronize(device)
    return sae, time.perf_counter() - t0


def train_models(cfg: Config, data: FashionMNIST, device: torch.device):
    """Train the autoencoder, then the classifier on its codes. Returns ``(sae, clf, history)``."""
    x_train, y_train, x_val, y_val = train_val_split(data, cfg)
    torch.manual_seed(cfg.seed)
    sae = autoencoder_from_config(cfg)
    clf = SparseCodeClassifier.from_config(cfg)
    t0 = time.perf_counter()
    ae_history = train_autoencoder(sae, x_train, cfg, device, x_val if len(x_val) else None)
    t1 = time.perf_counter()
    clf_history = train_classifier(clf, sae, x_train, y_train, cfg, device, *((x_val, y_val) if len(x_val) else ()))
    t2 = time.perf_counter()
    history = {"ae": ae_history, "clf": clf_history, "seconds": {"ae": t1 - t0, "clf": t2 - t1}}
    return sae.eval(), clf.eval(), history
