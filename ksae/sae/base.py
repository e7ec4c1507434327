"""The interface every sparse autoencoder kind implements (``SparseAutoencoder``), and the pieces they share:
sparse codes and their dense form, the FVU, firing counts, what a training step hands a kind and gets back."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._util import _check_int

if TYPE_CHECKING:
    from ..config import Config


def densify(values: torch.Tensor, indices: torch.Tensor, d_hidden: int) -> torch.Tensor:
    """Sparse codes ``values, indices: [B, k]`` (distinct indices per row) -> dense ``z: [B, H]``."""
    return torch.zeros(len(values), d_hidden, dtype=values.dtype, device=values.device).scatter(
        1, indices.long(), values)


def fvu(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained, the project's one definition of reconstruction error:
    ``sum((x_hat - x)^2) / sum((x - mean(x))^2)`` over ``x, x_hat: [N, D]`` (mean over the N images; the
    denominator floored at 1e-12, so a constant ``x`` gives a finite number). A scalar tensor (it runs inside a
    training step); ``float()`` it for a report."""
    return (x_hat - x).pow(2).sum() / (x - x.mean(dim=0)).pow(2).sum().clamp_min(1e-12)


def firing_counts(values: torch.Tensor, indices: torch.Tensor, d_hidden: int) -> torch.Tensor:
    """Number ``[H]`` (float) of images on which each unit fires (value > 0); ``values, indices: [N, k]`` sparse
    codes. Fixed shapes, no boolean indexing: it runs inside a CUDA graph (``autoencoder_step``)."""
    fired = (values.detach() > 0).reshape(-1).to(torch.float32)
    return torch.zeros(d_hidden, device=values.device).index_add_(0, indices.reshape(-1), fired)


def _pad_codes(values: torch.Tensor, indices: torch.Tensor, width: int, d_hidden: int):
    """Sparse codes ``values, indices: [B, w]`` (non-negative values, distinct indices per row) as ``[B, width]``
    (``width >= `` the row's number of positive values): the same code, padded with zero values at distinct
    units of the row (``densify`` needs distinct indices). Unchanged when ``w == width``."""
    if values.shape[1] == width:
        return values, indices
    return torch.topk(densify(values, indices, d_hidden), width, dim=1, sorted=False)


def _cat_codes(parts: list[tuple[torch.Tensor, torch.Tensor]], d_hidden: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse codes of several batches (widths may differ) -> one ``(values, indices)`` at the widest width."""
    width = max(v.shape[1] for v, _ in parts)
    padded = [_pad_codes(v, i, width, d_hidden) for v, i in parts]
    return torch.cat([p[0] for p in padded]), torch.cat([p[1] for p in padded])


class TrainingContext(NamedTuple):
    """What a training step hands the kind's ``training_terms``, besides the batch and the dormant units."""

    cfg: Config  # the run's knobs (each kind reads its own, SAE_KNOBS)
    step: torch.Tensor  # [] float on the device: this step's index, filled in place before every step (graph-safe)
    total_steps: int  # steps of the whole training run (warm-ups are shares of it)
    graph_safe: bool  # fixed shapes and no host sync: the step may be captured in a CUDA graph (dense decoding)


class TrainingTerms(NamedTuple):
    """What the kind's ``training_terms`` gives back for one batch."""

    loss: torch.Tensor  # []: what backward() runs on (reconstruction + the kind's weighted terms)
    fvu: torch.Tensor  # []: the batch FVU of the whole dictionary's reconstruction
    aux: torch.Tensor  # []: the kind's own term before its weight (AuxK, the L1 penalty, the target-L0 loss)
    l0: torch.Tensor  # []: mean number of units active per image in this batch (no gradient)
    fired: torch.Tensor  # [H]: on how many images of the batch each unit fired (no gradient)


_DENSE_DECODE_SHARE = 0.2  # training decodes densely above this share of active entries: on this CPU (batch 256,
# 1024 units) the embedding-bag decode's forward + backward takes 5 ms at 50 active units per image, 16-30 ms at
# 400; the dense matmul 15 ms at any count


def _row_offsets(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """``rows: [n]`` sorted row ids -> ``[n_rows]`` where each row's entries start (``embedding_bag``'s offsets)."""
    return torch.searchsorted(rows, torch.arange(n_rows, device=rows.device, dtype=rows.dtype))


class SparseAutoencoder(nn.Module):
    """A sparse autoencoder; each kind (``kind``, one module each in ``ksae/sae/``) supplies its activation.

    Forward maths, for ``x: [B, D]``::

        pre   = W_enc (x - b_pre) + b_enc              pre: [B, H]
        z     = act(pre)                              z:   [B, H], the kind's activation (``activation``)
        x_hat = W_dec z + b_pre                       x_hat: [B, D]

    ``W_dec`` is stored as ``[H, D]``: row ``j`` is unit ``j``'s dictionary atom ``d_j`` (so ``W_dec z`` above
    is ``z @ W_dec`` in code). ``W_enc: [H, D]`` starts equal to ``W_dec`` and ``b_pre`` as the mean training
    image. Codes travel sparse, ``(values, indices): [B, w]`` (``encode_sparse``); kinds whose number of active
    units varies per image pad each row to the batch's widest with zero values at other units, so every consumer
    (decoder, classifier, statistics) reads the same pair. The default activation is a threshold rule: unit ``j``
    is active when ``pre_j > cutoffs()[j]`` (>= 0), and then ``z_j = pre_j`` (top-k overrides it).

    What a kind supplies: ``from_config``, ``cutoffs`` (or its own ``activation``, ``path_code`` and
    ``code_changes``), ``training_terms`` (its loss terms of a batch) and ``activation_spec`` (for the explorer
    page); optionally the hooks ``prepare_training_``, ``constrain_grads_``, ``after_step_`` and ``end_epoch_``.
    Inference state (thresholds) lives in buffers or parameters, so it is saved in the state dict.
    """

    kind = ""  # the Config.sae_kind this class implements
    k: int | None = None  # units kept per image (top-k) or per image on average in training (batch top-k)
    aux_name = "auxiliary loss"  # what TrainingTerms.aux is (history["ae"]["aux_loss"]; the training figure)

    def __init__(self, d_input: int = 784, d_hidden: int = 1024):
        super().__init__()
        _check_int("d_input", d_input, low=1)
        _check_int("d_hidden", d_hidden, low=1)
        self.d_input, self.d_hidden = d_input, d_hidden

    def _init_weights_(self) -> None:
        """Draw the atoms (unit-norm Gaussian rows) and set the encoder to their transpose, the biases to 0."""
        w_dec = torch.randn(self.d_hidden, self.d_input)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)  # [H, D], row j = atom d_j
        self.W_enc = nn.Parameter(w_dec.clone())  # [H, D]
        self.b_enc = nn.Parameter(torch.zeros(self.d_hidden))  # [H]
        self.b_pre = nn.Parameter(torch.zeros(self.d_input))  # [D]

    @classmethod
    def from_config(cls, cfg: Config) -> SparseAutoencoder:
        raise NotImplementedError

    def set_k_(self, k: int) -> None:
        """Change how many units stay active at inference: only kinds with a fixed k per image have one."""
        raise ValueError(f"set_k_: a {self.kind} autoencoder keeps no fixed number of units per image at inference "
                         f"(its code keeps the units above a threshold), so it has no k to set; got k={k!r}")

    @torch.no_grad()
    def init_pre_bias_(self, x: torch.Tensor) -> None:
        """Set ``b_pre`` to the mean of ``x: [N, D]`` (the data's centre)."""
        self.b_pre.copy_(x.mean(dim=0))

    @torch.no_grad()
    def unit_norm_decoder_(self) -> None:
        """Rescale every atom (row of ``W_dec``) to unit L2 norm."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_grad_(self) -> None:
        """Drop the part of ``W_dec.grad`` parallel to each atom (it would only change the atom's norm)."""
        if self.W_dec.grad is None:
            return
        parallel = (self.W_dec.grad * self.W_dec).sum(dim=1, keepdim=True)
        self.W_dec.grad -= parallel * self.W_dec

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [B, D]`` -> ``pre: [B, H]``, the encoder's affine map.

        Computed as ``x W_enc^T + (b_enc - W_enc b_pre)``: the same function, but its backward needs no
        ``[B, H] x [H, D]`` product for the input (a third of a training step's time on the CPU).
        """
        return F.linear(x, self.W_enc, self.encoder_bias())

    def encoder_bias(self) -> torch.Tensor:
        """The folded encoder bias ``b_enc - W_enc b_pre: [H]``, so ``pre = x W_enc^T + encoder_bias()``."""
        return self.b_enc - self.W_enc @ self.b_pre

    # --- the activation (inference) ---------------------------------------------------------------------------
    def cutoffs(self) -> torch.Tensor:
        """``[H]``, each >= 0: unit j is active when its pre-activation exceeds ``cutoffs()[j]`` (threshold kinds)."""
        raise NotImplementedError

    def activation(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``pre: [B, H]`` -> the active code ``(values, indices): [B, w]``: here the threshold rule (``z_j = pre_j``
        where ``pre_j > cutoffs()[j]``), each row padded with zero values to the batch's largest count ``w``
        (at least 1). Differentiable in ``pre`` (gradient 1 on active units)."""
        active = pre > self.cutoffs()
        width = max(1, int(active.sum(1).max())) if len(pre) else 1
        return torch.topk(torch.where(active, pre, torch.zeros_like(pre)), min(width, self.d_hidden), dim=1,
                          sorted=False)

    def encode_sparse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x: [B, D]`` -> ``(values, indices): [B, w]``, the active code (``activation``)."""
        return self.activation(self.pre_activations(x))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [B, D]`` -> dense code ``z: [B, H]``."""
        return densify(*self.encode_sparse(x), self.d_hidden)

    def decode_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``values, indices: [B, k]`` -> ``x_hat: [B, D]``, summing only the active atoms."""
        return F.embedding_bag(indices, self.W_dec, per_sample_weights=values, mode="sum") + self.b_pre

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Dense code ``z: [B, H]`` -> ``x_hat: [B, D]``."""
        return z @ self.W_dec + self.b_pre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [B, D]`` -> reconstruction ``x_hat: [B, D]``."""
        return self.decode_sparse(*self.encode_sparse(x))

    # --- along straight paths (the completeness check asks these) -------------------------------------------
    def path_code(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The active code at every point of straight paths: ``pre: [b, S, H]`` (linear in a parameter increasing
        along S) -> ``(values, indices): [b, S, w]`` (one width for all points)."""
        values, indices = self.activation(pre.reshape(-1, pre.shape[-1]))
        return values.view(*pre.shape[:-1], -1), indices.view(*pre.shape[:-1], -1)

    def code_changes(self, values: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Where the activation changes between consecutive path points: ``path_code``'s ``values, indices:
        [b, S, w]`` -> ``(changes, jumps): [b, S-1]``: how many units enter or leave the active set in each
        interval, and whether any of them crosses a cutoff > 0, where its code jumps from 0 to the cutoff (a
        discontinuity of F); a crossing at cutoff 0 is ReLU's kink (continuous)."""
        member = torch.zeros((*indices.shape[:-1], self.d_hidden), dtype=torch.bool, device=indices.device)
        member.scatter_(-1, indices, values > 0)
        changed = member[:, 1:] ^ member[:, :-1]
        return changed.sum(-1), (changed & (self.cutoffs().to(member.device) > 0)).any(-1)

    # --- training ---------------------------------------------------------------------------------------------
    def training_terms(self, x: torch.Tensor, dormant: torch.Tensor, ctx: TrainingContext) -> TrainingTerms:
        """The loss terms of one training batch ``x: [B, D]`` (``dormant: [H]`` bool: units that fired on none of
        the last ``Config.dead_after`` training images)."""
        raise NotImplementedError

    @torch.no_grad()
    def prepare_training_(self, x: torch.Tensor) -> None:
        """Before the first step, with the training images ``x: [N, D]``: ``b_pre`` at their mean, unit-norm
        atoms."""
        self.init_pre_bias_(x)
        self.unit_norm_decoder_()

    def constrain_grads_(self) -> None:
        """After backward, before the optimiser's step: drop the atoms' radial gradient (unit-norm kinds)."""
        self.remove_parallel_grad_()

    def after_step_(self) -> None:
        """After the optimiser's step: atoms back to unit norm (unit-norm kinds)."""
        self.unit_norm_decoder_()

    def end_epoch_(self, x: torch.Tensor, since_fired: torch.Tensor, opt: torch.optim.Optimizer,
                   ctx: TrainingContext, epoch: int) -> None:
        """After each epoch (outside any CUDA graph): a kind's between-epoch work, e.g. resampling dormant units.
        ``x: [N, D]`` training images, ``since_fired: [H]`` images since each unit last fired (may be reset)."""

    # --- descriptions -------------------------------------------------------------------------------------------
    def activation_spec(self) -> dict:
        """The activation for the explorer page: ``{"kind", "rule": "threshold", "cutoffs": [H] tensor}`` (or top-k's
        ``{"kind", "rule": "topk", "k"}``); the page computes the same rule in JavaScript."""
        return {"kind": self.kind, "rule": "threshold", "cutoffs": self.cutoffs().detach()}

    def activation_label(self) -> str:
        """A short phrase naming the activation, for figure titles."""
        return f"the {self.kind} activation"

    def _sparse_decode(self, z: torch.Tensor, selected: torch.Tensor, graph_safe: bool) -> torch.Tensor:
        """Training's decoder: ``x_hat: [B, D]`` of the dense code ``z: [B, H]`` reading only the entries where
        ``selected: [B, H]`` (bool; must include every non-zero of ``z``), an embedding-bag sum over them (the
        gradient reaches ``z`` on exactly those entries). ``graph_safe``, or more than ``_DENSE_DECODE_SHARE`` of
        the entries selected (early in training): a dense matmul, the same function (no data-dependent shape)."""
        if graph_safe or bool(selected.sum() > _DENSE_DECODE_SHARE * selected.numel()):
            return self.decode(z)
        rows, units = selected.nonzero(as_tuple=True)
        return F.embedding_bag(units, self.W_dec, _row_offsets(rows, len(z)), per_sample_weights=z[rows, units],
                               mode="sum") + self.b_pre


def _warmup(ctx: TrainingContext, share: float) -> torch.Tensor | float:
    """The sparsity term's weight factor at this step: rising linearly from 0 to 1 over ``share`` of the steps."""
    steps = share * ctx.total_steps
    return 1.0 if steps < 1 else (ctx.step / steps).clamp(max=1.0)
