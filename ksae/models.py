"""The top-k sparse autoencoder, the classifier on its codes, and the end-to-end pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._util import _check_float, _check_int, _check_same_shape, _check_tensor, _describe, _part_hint

if TYPE_CHECKING:
    from .config import Config


def densify(values: torch.Tensor, indices: torch.Tensor, d_hidden: int) -> torch.Tensor:
    """Sparse codes ``values, indices: [B, k]`` (distinct indices per row) -> dense ``z: [B, H]``."""
    _check_codes(values, indices)
    _check_int("d_hidden", d_hidden, low=1)
    return torch.zeros(len(values), d_hidden, dtype=values.dtype, device=values.device).scatter(
        1, indices.long(), values)


def _check_codes(values, indices) -> None:
    """Sparse codes at the door: ``values: [B, k]`` floating, ``indices: [B, k]`` integer (shapes and dtypes only:
    they run inside training steps, where reading a value would be a host sync)."""
    _check_tensor("values", values, [(None, "B"), (None, "k")], "float")
    _check_tensor("indices", indices, [(None, "B"), (None, "k")], "int")
    _check_same_shape("values and indices", values, indices)


class KSparseAutoencoder(nn.Module):
    """Top-k sparse autoencoder (Makhzani & Frey 2013; training recipe of Gao et al. 2024).

    Forward maths, for ``x: [B, D]``::

        pre   = W_enc (x - b_pre) + b_enc              pre: [B, H]
        z     = TopK_k(ReLU(pre))                     z:   [B, H], at most k non-zeros per row
        x_hat = W_dec z + b_pre                       x_hat: [B, D]

    ``W_dec`` is stored as ``[H, D]``: row ``j`` is unit ``j``'s dictionary atom ``d_j`` (so
    ``W_dec z`` above is ``z @ W_dec`` in code). Atoms have unit L2 norm, kept so by
    ``unit_norm_decoder_`` after every step; ``W_enc: [H, D]`` starts equal to ``W_dec`` (the
    transpose, in the maths' layout) and ``b_pre`` as the mean training image (``init_pre_bias_``).
    Decoding uses only the k active atoms (an embedding-bag sum over contiguous rows).
    """

    def __init__(self, k: int = 50, d_input: int = 784, d_hidden: int = 1024):
        super().__init__()
        _check_int("d_input", d_input, low=1)
        _check_int("d_hidden", d_hidden, low=1)
        self.d_input, self.d_hidden = d_input, d_hidden
        self.set_k_(k)
        w_dec = torch.randn(d_hidden, d_input)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)  # [H, D], row j = atom d_j
        self.W_enc = nn.Parameter(w_dec.clone())  # [H, D]
        self.b_enc = nn.Parameter(torch.zeros(d_hidden))  # [H]
        self.b_pre = nn.Parameter(torch.zeros(d_input))  # [D]

    @classmethod
    def from_config(cls, cfg: Config) -> KSparseAutoencoder:
        """The autoencoder ``cfg`` describes (``k``, ``d_input``, ``d_hidden``); models are built this one way."""
        return cls(cfg.k, cfg.d_input, cfg.d_hidden)

    def set_k_(self, k: int) -> None:
        """Change how many units stay active (e.g. to probe a trained model at another sparsity)."""
        _check_int("k", k, low=1, high=self.d_hidden, high_name="d_hidden")
        self.k = k

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

    def top_k(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``pre: [B, H]`` -> ``(values: [B, k], indices: [B, k])``: the k largest, through ReLU."""
        values, indices = torch.topk(pre, self.k, dim=1, sorted=False)
        return F.relu(values), indices

    def encode_sparse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x: [B, D]`` -> ``(values: [B, k], indices: [B, k])`` of the top-k ReLU activations."""
        return self.top_k(self.pre_activations(x))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [B, D]`` -> dense code ``z: [B, H]`` with at most k non-zeros per row."""
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


class SparseCodeClassifier(nn.Module):
    """MLP on sparse codes: ``z: [B, H]`` -> logits ``[B, C]``.

    ``H -> 512 -> 256 -> C`` with ReLU and dropout after each hidden layer (widths from the config).
    ``forward_sparse`` computes the same function from the k active units only (used in training).
    """

    def __init__(self, d_hidden: int = 1024, hidden: Sequence[int] = (512, 256), n_classes: int = 10,
                 dropout: float = 0.3):
        super().__init__()
        _check_int("d_hidden", d_hidden, low=1)
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, (list, tuple)) or not hidden:
            raise ValueError(f"hidden must be a non-empty sequence of layer widths, got {_describe(hidden)}")
        for width in hidden:
            _check_int("hidden width", width, low=1)
        _check_int("n_classes", n_classes, low=1)
        _check_float("dropout", dropout, low=0.0, high=1.0, high_open=True)
        first = nn.Linear(d_hidden, hidden[0])  # for PyTorch's default initialisation
        self.W1 = nn.Parameter(first.weight.detach().T.contiguous())  # [H, hidden0], row j = unit j's fan-out
        self.b1 = nn.Parameter(first.bias.detach().clone())  # [hidden0]
        layers: list[nn.Module] = [nn.ReLU(), nn.Dropout(dropout)]
        for w_in, w_out in zip(hidden[:-1], hidden[1:]):
            layers += [nn.Linear(w_in, w_out), nn.ReLU(), nn.Dropout(dropout)]
        layers.append(nn.Linear(hidden[-1], n_classes))
        self.rest = nn.Sequential(*layers)

    @classmethod
    def from_config(cls, cfg: Config) -> SparseCodeClassifier:
        """The classifier ``cfg`` describes (``d_hidden``, ``clf_hidden``, ``n_classes``, ``dropout``)."""
        return cls(cfg.d_hidden, cfg.clf_hidden, cfg.n_classes, cfg.dropout)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``z: [B, H]`` -> logits ``[B, C]``."""
        return self.rest(z @ self.W1 + self.b1)

    def affine_split(self):
        """``(A: [hidden0, H], c: [hidden0], head)`` with ``forward(z) = head(z A^T + c)`` (see attribution)."""
        return self.W1.T, self.b1, self.rest

    def first_layer_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``values, indices: [B, k]`` (the active units) -> first-layer pre-activations ``[B, hidden0]``."""
        return F.embedding_bag(indices, self.W1, per_sample_weights=values, mode="sum") + self.b1

    def forward_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``values, indices: [B, k]`` (the active units) -> logits ``[B, C]``; equals ``forward``."""
        return self.rest(self.first_layer_sparse(values, indices))


class SparseCodePipeline(nn.Module):
    """The model being explained: pixels -> encoder -> top-k -> classifier -> logits.

    ``forward(x: [B, 784]) -> logits: [B, C]``; ``F(x)`` in the attribution docs is one of these logits.
    """

    def __init__(self, sae: KSparseAutoencoder, clf: SparseCodeClassifier):
        if not isinstance(sae, KSparseAutoencoder) or not isinstance(clf, SparseCodeClassifier):
            hint = (_part_hint(sae, lambda v: isinstance(v, KSparseAutoencoder)).replace("its", "sae's")
                    + _part_hint(clf, lambda v: isinstance(v, SparseCodeClassifier)).replace("its", "clf's"))
            raise ValueError(f"SparseCodePipeline(sae, clf) needs a KSparseAutoencoder and a SparseCodeClassifier, "
                             f"got {type(sae).__name__} and {type(clf).__name__}{hint}")
        if clf.W1.shape[0] != sae.d_hidden:
            raise ValueError(f"clf must read the autoencoder's {sae.d_hidden} code units, got a classifier of "
                             f"{clf.W1.shape[0]} inputs (models trained with different d_hidden?)")
        super().__init__()
        self.sae, self.clf = sae, clf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from_pre(self.sae.pre_activations(x))

    def logits_from_pre(self, pre: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations ``pre: [B, H]`` -> logits ``[B, C]`` (top-k, then the classifier)."""
        return self.clf.forward_sparse(*self.sae.top_k(pre))

    def affine_split(self):
        """``(A: [H, D], c: [H], head)`` with ``forward(x) = head(x A^T + c)``: the encoder is affine, so
        attribution along a straight path can move through code space instead of pixel space."""
        return self.sae.W_enc, self.sae.encoder_bias(), self.logits_from_pre
