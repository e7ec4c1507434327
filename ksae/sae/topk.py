"""Top-k, the seed's kind (Makhzani & Frey 2013; training recipe of Gao et al. 2024): the k largest
pre-activations through ReLU, AuxK for dormant units, and the fast scan of top-k sets along straight paths."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .._util import _check_int
from .base import SparseAutoencoder, TrainingContext, TrainingTerms, densify, firing_counts, fvu

if TYPE_CHECKING:
    from ..config import Config


PATH_TOPK_STRIDE = 4  # path scans find the top-k set every this many points, and between two that differ


def auxk_loss(sae: SparseAutoencoder, pre: torch.Tensor, residual: torch.Tensor, dormant: torch.Tensor,
              aux_k: int, graph_safe: bool = False) -> torch.Tensor:
    """AuxK loss (Gao et al. 2024): the top ``aux_k`` *dormant* units must reconstruct the residual.

    ``pre: [B, H]`` encoder pre-activations, ``residual: [B, D]`` = x - x_hat (treated as a target),
    ``dormant: [H]`` bool: units that fired on none of the last ``Config.dead_after`` training images (a
    training-time state; a *dead* unit, in the metrics and the unit atlas, fires on no image at all). Gives
    dormant units a gradient that points them at what the live units miss.
    ``graph_safe=True`` computes the same loss with fixed shapes and no host sync (for a CUDA graph): it always
    takes ``aux_k`` units, live ones at weight 0, multiplies the loss by "any unit dormant", and decodes densely
    (``embedding_bag``'s CUDA backward may sync with the host, which a capture forbids).
    """
    if aux_k == 0:
        return pre.new_zeros(())
    n_take = min(aux_k, pre.shape[1])
    if not graph_safe:
        n_take = min(n_take, int(dormant.sum()))
        if n_take == 0:
            return pre.new_zeros(())
    masked = pre.masked_fill(~dormant, float("-inf"))
    values, indices = torch.topk(masked, n_take, dim=1, sorted=False)
    if graph_safe:
        residual_hat = densify(F.relu(values), indices, sae.d_hidden) @ sae.W_dec
    else:
        residual_hat = F.embedding_bag(indices, sae.W_dec, per_sample_weights=F.relu(values), mode="sum")
    loss = fvu(residual_hat, residual.detach())
    return loss * dormant.any() if graph_safe else loss

class KSparseAutoencoder(SparseAutoencoder):
    """Top-k sparse autoencoder (Makhzani & Frey 2013; training recipe of Gao et al. 2024), ``kind = "topk"``.

    Forward maths, for ``x: [B, D]``::

        pre   = W_enc (x - b_pre) + b_enc              pre: [B, H]
        z     = TopK_k(ReLU(pre))                     z:   [B, H], at most k non-zeros per row
        x_hat = W_dec z + b_pre                       x_hat: [B, D]

    ``W_dec`` is stored as ``[H, D]``: row ``j`` is unit ``j``'s dictionary atom ``d_j`` (so
    ``W_dec z`` above is ``z @ W_dec`` in code). Atoms have unit L2 norm, kept so by
    ``unit_norm_decoder_`` after every step; ``W_enc: [H, D]`` starts equal to ``W_dec`` (the
    transpose, in the maths' layout) and ``b_pre`` as the mean training image (``init_pre_bias_``).
    Decoding uses only the k active atoms (an embedding-bag sum over contiguous rows). Training loss: batch FVU
    + ``aux_coef`` * AuxK (``auxk_loss``).
    """

    kind = "topk"
    aux_name = "AuxK loss"

    def __init__(self, k: int = 50, d_input: int = 784, d_hidden: int = 1024):
        super().__init__(d_input, d_hidden)
        self.set_k_(k)
        self._init_weights_()

    @classmethod
    def from_config(cls, cfg: Config) -> KSparseAutoencoder:
        """The autoencoder ``cfg`` describes (``k``, ``d_input``, ``d_hidden``); models are built this one way."""
        return cls(cfg.k, cfg.d_input, cfg.d_hidden)

    def set_k_(self, k: int) -> None:
        """Change how many units stay active (e.g. to probe a trained model at another sparsity)."""
        _check_int("k", k, low=1, high=self.d_hidden, high_name="d_hidden")
        self.k = k

    def top_k(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``pre: [B, H]`` -> ``(values: [B, k], indices: [B, k])``: the k largest, through ReLU."""
        values, indices = torch.topk(pre, self.k, dim=1, sorted=False)
        return F.relu(values), indices

    def activation(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``pre: [B, H]`` -> ``(values, indices): [B, k]`` (``top_k``)."""
        return self.top_k(pre)

    def path_code(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k sets along straight paths, found fast (``_path_top_k``): ``pre: [b, S, H]`` -> ``[b, S, k]``."""
        return _path_top_k(self, pre)

    def code_changes(self, values: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(swaps, jumps): [b, S-1]`` (``_topk_changes``): units entering the set, and discontinuous swaps."""
        return _topk_changes(values, indices, self.d_hidden)

    def training_terms(self, x: torch.Tensor, dormant: torch.Tensor, ctx: TrainingContext) -> TrainingTerms:
        """Batch FVU + ``aux_coef`` * AuxK of ``x: [B, D]``. ``graph_safe``: fixed-shape AuxK and a dense decode,
        so the whole pass can be captured in a CUDA graph (``embedding_bag``'s CUDA backward may sync)."""
        pre = self.pre_activations(x)
        values, indices = self.top_k(pre)
        x_hat = (self.decode(densify(values, indices, self.d_hidden)) if ctx.graph_safe
                 else self.decode_sparse(values, indices))
        batch_fvu = fvu(x_hat, x)
        aux = auxk_loss(self, pre, x - x_hat, dormant, ctx.cfg.aux_k, graph_safe=ctx.graph_safe)
        return TrainingTerms(batch_fvu + ctx.cfg.aux_coef * aux, batch_fvu, aux,
                             (values.detach() > 0).sum() / len(x), firing_counts(values, indices, self.d_hidden))

    def activation_spec(self) -> dict:
        return {"kind": self.kind, "rule": "topk", "k": self.k}

    def activation_label(self) -> str:
        return f"k = {self.k} active units"


def _topk_changes(values: torch.Tensor, indices: torch.Tensor,
                  d_hidden: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k set changes between consecutive path points: the ReLU'd top-k ``values`` and their unit
    ``indices: [B, S, k]`` at each point (any order, as ``_path_top_k`` gives them) -> ``(swaps, jumps): [B, S-1]``.

    ``swaps`` counts the units that enter the top-k set in each interval (as many leave), so several swaps
    inside one interval all count. A swap exchanges two units where their pre-activations are equal; the code
    jumps by that common value after ReLU, so F jumps only if it is > 0. ``jumps`` marks intervals with a swap
    where the k-th largest pre-activation (the value at which units swap) is > 0 at both ends (the smallest
    ReLU'd value is > 0 exactly then); a swap at or below 0 exchanges two zeros (continuous), and a ReLU
    zero-crossing changes no top-k set at all.
    """
    member = torch.zeros((*indices.shape[:-1], d_hidden), dtype=torch.bool, device=indices.device)
    member.scatter_(-1, indices, True)
    swaps = (member[:, 1:] & ~member[:, :-1]).sum(-1)
    kth_positive = values.min(-1).values > 0  # [B, S]
    return swaps, (swaps > 0) & kth_positive[:, 1:] & kth_positive[:, :-1]


def _path_top_k(sae: KSparseAutoencoder, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``sae.top_k`` at every point of straight paths: ``pre: [b, S, H]``, linear in a parameter that increases
    along S (``pre = c + alpha d``, alphas sorted) -> ``(values, indices): [b, S, k]``.

    Two units' pre-activations are lines in alpha and cross at most once, so a top-k set found at two points is
    the set at every point between them. ``torch.topk`` runs every ``PATH_TOPK_STRIDE`` points (and at the last)
    and on the points between two of those whose sets differ; the other points take the set and read its values
    (the default model's top-k set changes at ~80 of 1024 intervals of a path).
    """
    b, n_points, d_hidden = pre.shape

    def top_indices(p: torch.Tensor) -> torch.Tensor:  # [..., H] -> [..., k]
        return sae.top_k(p.reshape(-1, d_hidden))[1].view(*p.shape[:-1], -1)

    coarse = torch.unique(torch.cat([torch.arange(0, n_points, PATH_TOPK_STRIDE), torch.tensor([n_points - 1])]))
    ends = top_indices(pre[:, coarse.to(pre.device)]).sort(-1).values  # [b, C, k]
    same = (ends[:, 1:] == ends[:, :-1]).all(-1)  # [b, C - 1]: the interval's two ends have one set
    interval = (torch.arange(n_points) // PATH_TOPK_STRIDE).clamp(max=max(len(coarse) - 2, 0)).to(pre.device)
    indices = ends[:, interval]  # [b, S, k]: each point takes its interval's first set
    redo = ~same[:, interval] if len(coarse) > 1 else torch.zeros(b, n_points, dtype=torch.bool, device=pre.device)
    if bool(redo.any()):
        indices[redo] = top_indices(pre[redo])
    return F.relu(pre.gather(-1, indices)), indices
