"""The sparse autoencoder kinds, one module each over a shared base (``base.SparseAutoencoder``: the interface
every consumer asks), and ``autoencoder_from_config``, the one way a configuration becomes an autoencoder."""

from __future__ import annotations

from ..config import SAE_KINDS, Config
from .base import SparseAutoencoder, TrainingContext, TrainingTerms, densify, firing_counts, fvu
from .batchtopk import BatchTopKAutoencoder
from .jumprelu import JumpReLUAutoencoder
from .matryoshka import MatryoshkaAutoencoder
from .relu_l1 import ReLUL1Autoencoder
from .topk import PATH_TOPK_STRIDE, KSparseAutoencoder, auxk_loss

SAE_CLASSES = {cls.kind: cls for cls in (KSparseAutoencoder, BatchTopKAutoencoder, JumpReLUAutoencoder,
                                         ReLUL1Autoencoder, MatryoshkaAutoencoder)}  # Config.sae_kind -> its class
assert tuple(SAE_CLASSES) == tuple(sorted(SAE_CLASSES, key=SAE_KINDS.index)) and set(SAE_CLASSES) == set(SAE_KINDS)


def autoencoder_from_config(cfg: Config) -> SparseAutoencoder:
    """The autoencoder ``cfg`` describes: ``SAE_CLASSES[cfg.sae_kind].from_config(cfg)`` (``cfg.sae_kind`` is
    validated by ``Config``). Draws the weights from torch's global random state, as ``train_models`` does after
    ``torch.manual_seed(cfg.seed)``."""
    if not isinstance(cfg, Config):
        raise ValueError(f"cfg must be a Config, got {type(cfg).__name__}")
    return SAE_CLASSES[cfg.sae_kind].from_config(cfg)


__all__ = ["SAE_CLASSES", "PATH_TOPK_STRIDE", "BatchTopKAutoencoder", "JumpReLUAutoencoder", "KSparseAutoencoder",
           "MatryoshkaAutoencoder", "ReLUL1Autoencoder", "SparseAutoencoder", "TrainingContext", "TrainingTerms",
           "autoencoder_from_config", "auxk_loss", "densify", "firing_counts", "fvu"]
