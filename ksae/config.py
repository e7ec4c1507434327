"""``Config``: every knob of the project, validated, saved inside every checkpoint; and the constants it
validates against."""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import asdict, dataclass, fields

from ._util import IMAGE_SIDE, _check_float, _check_int, _plain, _python_number


@dataclass
class Config:
    """Every knob of the project, with the seed's defaults. Saved inside every checkpoint."""

    # --- sparse autoencoder ---
    sae_kind: str = "topk"  # which sparse autoencoder (SAE_KINDS; one module each under ksae/sae/): its activation,
    # its training loss terms and the knobs it reads (SAE_KNOBS); "topk" is the seed's (Gao et al. 2024)
    k: int = 50  # active code units kept per image (top-k); batchtopk and matryoshka: per image on average over a
    # training batch (top k x batch of the batch), a threshold at inference
    d_input: int = 784  # pixels per image (28 x 28)
    d_hidden: int = 1024  # code units (dictionary size)
    aux_k: int = 256  # AuxK (Gao et al. 2024): top this-many dormant units reconstruct the residual (0 = off).
    # Keeps the dictionary alive below k = 50 (docs/results.md, the k sweep); chosen on the validation split
    aux_coef: float = 1 / 32  # AuxK: weight of the auxiliary loss
    dead_after: int = 20_000  # AuxK: a unit that fired on none of the last this-many training images is "dormant"
    # (a "dead" unit fires on no image at all; the field keeps its name: checkpoints and results record it).
    # Every kind tracks dormant units; topk, batchtopk and matryoshka revive them with AuxK, relu_l1 resamples them
    # --- the variants' own knobs: each read only by the kinds SAE_KNOBS names (set for another kind: ValueError) ---
    batchtopk_threshold_rate: float = 0.01  # batchtopk, matryoshka: the inference threshold is an EMA, at this
    # rate per step, of each training batch's smallest kept activation (SAELens' estimator and rate)
    matryoshka_prefixes: tuple[int, ...] = (32, 128, 512)  # matryoshka: nested prefix sizes below d_hidden (the whole
    # dictionary is the last prefix); loss = the mean of the prefixes' reconstruction FVUs (dictionary_learning)
    target_l0: float = 50.0  # jumprelu: the mean L0 the loss pulls toward, lambda * (L0 / target_l0 - 1)^2
    jumprelu_l0_coef: float = 1.0  # jumprelu: lambda, the weight of that target-L0 loss (dictionary_learning's 1)
    jumprelu_bandwidth: float = 0.001  # jumprelu: width of the straight-through rectangle kernel, as a share of the
    # training images' RMS norm sqrt(E||x - b_pre||^2) (the published 0.001 is for inputs scaled to E||x||^2 = 1)
    l1_coef: float = 5.5e-3  # relu_l1: lambda of the penalty lambda * sum_j f_j ||d_j|| (decoder norms, unconstrained
    # decoder; Anthropic's April 2024 recipe) added to the FVU; chosen on the validation split for L0 ~ 50
    # (benchmarks/variant_training.py: validation L0 45.1 at 0.006, 26.2 at 0.01, 16.3 at 0.016; log-log interpolated)
    sparsity_warmup: float = 0.05  # jumprelu, relu_l1: share of the training steps over which the sparsity term's
    # weight rises linearly from 0 to its full value
    # --- classifier on the codes ---
    clf_hidden: tuple[int, int] = (512, 256)  # hidden widths of the MLP head
    n_classes: int = 10  # Fashion-MNIST classes
    dropout: float = 0.3  # dropout after each hidden ReLU
    # --- optimisation ---
    batch_size: int = 256  # images per step, both models
    lr: float = 1e-3  # Adam learning rate, both models (the peak of a decaying schedule)
    ae_lr_schedule: str = "decay20"  # autoencoder: "constant", "cosine" (to 0), "decay10"/"decay20"/"decay50"
    # (linear to 0 over the last 10/20/50 % of steps)
    clf_lr_schedule: str = "cosine"  # classifier: same choices
    ae_epochs: int = 30  # autoencoder epochs
    clf_epochs: int = 50  # classifier epochs
    clf_hflip: bool = True  # classifier sees each image or its mirror image at random (labels unchanged)
    clf_shift: int = 1  # classifier also sees each such view moved this many pixels up, down, left or right
    # (one of the five positions at random per step; 0 = off). docs/results.md, recipe choices
    ae_hflip: bool = False  # autoencoder sees each image or its mirror image at random
    n_val: int = 5000  # training images held out as the validation split (class-stratified, fixed seed
    # VAL_SPLIT_SEED); every recipe choice and per-epoch curve uses it, the test set is evaluated once
    train_subset: int = 0  # train on only the first N images of the training split (0 = all); for smoke runs
    seed: int = 0  # seeds initialisation, batch order, dropout and sample selection
    # --- attribution ---
    ig_steps: int = 50  # integrated-gradients steps from a zero image
    ig_method: str = "gausslegendre"  # IG quadrature (Captum's names)
    smoothgrad_samples: int = 25  # SmoothGrad noisy copies per image
    smoothgrad_noise: float = 0.1  # SmoothGrad noise std (pixels are in [0, 1])
    confidence_threshold: float = 0.8  # explain only correct predictions above this softmax confidence
    patch_size: int = 4  # perturbation methods: side of the square superpixels (4: a 7 x 7 grid, 49 features) and
    # of the occlusion window
    occlusion_stride: int = 1  # occlusion: the window moves this many pixels (1 to patch_size; Captum's default 1)
    shapley_samples: int = 25  # Shapley value sampling: random feature orders per image (Captum's default)
    kernel_shap_samples: int = 1200  # KernelSHAP: coalitions (model evaluations) per image, at least features + 1
    lime_samples: int = 1200  # LIME: random coalitions (model evaluations) per image
    # --- execution ---
    cuda_graphs: bool = True  # on CUDA, replay each training step as one captured CUDA graph (same maths, no
    # per-kernel launch cost; ``GraphedStep``); ignored on other devices

    # The fields above "attribution" change the trained weights: a checkpoint is reused only if all of them
    # match (``training_key``). The attribution and execution fields do not:
    ATTRIBUTION_FIELDS = ("ig_steps", "ig_method", "smoothgrad_samples", "smoothgrad_noise", "confidence_threshold",
                          "patch_size", "occlusion_stride", "shapley_samples", "kernel_shap_samples", "lime_samples")
    NON_TRAINING_FIELDS = ATTRIBUTION_FIELDS + ("cuda_graphs",)

    def __post_init__(self):
        self._check_kind()
        if not isinstance(self.clf_hidden, (tuple, list)) or not self.clf_hidden:
            raise ValueError(f"clf_hidden must be a non-empty sequence of positive widths, got {self.clf_hidden!r}")
        for width in self.clf_hidden:
            _check_int("clf_hidden width", width, low=1)
        self.clf_hidden = tuple(int(w) for w in self.clf_hidden)
        for name in ("d_input", "d_hidden", "n_classes", "batch_size", "ae_epochs", "clf_epochs", "ig_steps",
                     "smoothgrad_samples", "shapley_samples", "lime_samples"):
            _check_int(name, getattr(self, name), low=1)
        _check_int("patch_size", self.patch_size, low=1, high=IMAGE_SIDE, high_name="the image side")
        _check_int("occlusion_stride", self.occlusion_stride, low=1, high=self.patch_size, high_name="patch_size")
        features = (-(-IMAGE_SIDE // self.patch_size)) ** 2  # superpixels of the patch grid
        _check_int("kernel_shap_samples", self.kernel_shap_samples, low=features + 1)
        _check_int("k", self.k, low=1, high=self.d_hidden if "k" in self.reads() else None, high_name="d_hidden")
        _check_int("train_subset", self.train_subset, low=0)
        _check_int("n_val", self.n_val, low=0)
        _check_int("seed", self.seed, low=0)
        _check_int("clf_shift", self.clf_shift, low=0, high=IMAGE_SIDE - 1, high_name="the image side minus 1")
        _check_int("aux_k", self.aux_k, low=0)
        _check_int("dead_after", self.dead_after, low=1)
        _check_float("dropout", self.dropout, low=0.0, high=1.0, high_open=True)
        _check_float("lr", self.lr, low=0.0, low_open=True)
        _check_float("smoothgrad_noise", self.smoothgrad_noise, low=0.0)
        _check_float("aux_coef", self.aux_coef, low=0.0)
        _check_float("confidence_threshold", self.confidence_threshold, low=0.0, high=1.0, high_open=True)
        for name in ("clf_hflip", "ae_hflip", "cuda_graphs"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("ae_lr_schedule", "clf_lr_schedule"):
            if getattr(self, name) not in LR_SCHEDULES:
                raise ValueError(f"{name} must be one of {LR_SCHEDULES}, got {getattr(self, name)!r}")
        if self.ig_method not in IG_METHODS:
            raise ValueError(f"ig_method must be one of {sorted(IG_METHODS)}, got {self.ig_method!r}")
        self._check_variant_knobs()
        for f in fields(self):  # numpy scalars are accepted as their Python numbers (JSON, the checkpoint's name)
            setattr(self, f.name, _python_number(getattr(self, f.name)))

    def _check_kind(self) -> None:
        if self.sae_kind not in SAE_KINDS:
            close = difflib.get_close_matches(str(self.sae_kind), SAE_KINDS, n=1, cutoff=0.0)
            raise ValueError(f"sae_kind must be one of {SAE_KINDS}, got {self.sae_kind!r}"
                             + (f" (did you mean {close[0]!r}?)" if close else ""))

    def _check_variant_knobs(self) -> None:
        """Each variant knob in range, and none set (to a value other than its default) for a kind that does not
        read it: that would be silently ignored."""
        _check_float("batchtopk_threshold_rate", self.batchtopk_threshold_rate, low=0.0, high=1.0, low_open=True)
        _check_float("target_l0", self.target_l0, low=0.0, low_open=True,
                     high=self.d_hidden if "target_l0" in self.reads() else None)
        _check_float("jumprelu_l0_coef", self.jumprelu_l0_coef, low=0.0, low_open=True)
        _check_float("jumprelu_bandwidth", self.jumprelu_bandwidth, low=0.0, low_open=True)
        _check_float("l1_coef", self.l1_coef, low=0.0, low_open=True)
        _check_float("sparsity_warmup", self.sparsity_warmup, low=0.0, high=1.0, high_open=True)
        prefixes = self.matryoshka_prefixes
        if not isinstance(prefixes, (tuple, list)) or not prefixes:
            raise ValueError(f"matryoshka_prefixes must be a non-empty sequence of increasing sizes below d_hidden "
                             f"({self.d_hidden}), got {prefixes!r}")
        reads = "matryoshka_prefixes" in self.reads()  # sizes must fit the dictionary only where they are read
        for size in prefixes:
            _check_int("matryoshka_prefixes entry", size, low=1, high=self.d_hidden - 1 if reads else None,
                       high_name="d_hidden - 1")
        if any(b <= a for a, b in zip(prefixes, prefixes[1:])):
            raise ValueError(f"matryoshka_prefixes must increase, got {list(prefixes)}")
        self.matryoshka_prefixes = tuple(int(s) for s in prefixes)
        for name in ("batchtopk_threshold_rate", "target_l0", "jumprelu_l0_coef", "jumprelu_bandwidth", "l1_coef",
                     "sparsity_warmup"):  # 50 and 50.0 are one setting: one spelling in keys and names
            setattr(self, name, float(getattr(self, name)))
        default = Config.__dataclass_fields__
        for name, kinds in SAE_KNOBS.items():
            value = getattr(self, name)
            if self.sae_kind not in kinds and _plain(value) != _plain(default[name].default):
                raise ValueError(f"{name} is read only by sae_kind {', '.join(kinds)}; sae_kind {self.sae_kind!r} "
                                 f"does not read it: expected the default {_plain(default[name].default)!r}, got "
                                 f"{_plain(value)!r} (its sparsity knob is {_SPARSITY_KNOB[self.sae_kind]})")

    def reads(self) -> tuple[str, ...]:
        """The kind-specific knobs (``SAE_KNOBS``) this configuration's ``sae_kind`` reads."""
        return tuple(name for name, kinds in SAE_KNOBS.items() if self.sae_kind in kinds)

    def to_dict(self) -> dict:
        """All fields as plain Python values (what a checkpoint stores)."""
        d = asdict(self)
        d["clf_hidden"] = list(self.clf_hidden)
        d["matryoshka_prefixes"] = list(self.matryoshka_prefixes)
        return d

    def not_applicable(self) -> tuple[str, ...]:
        """The variant fields that do not apply to this configuration's kind (``_VARIANT_FIELDS``: knobs of other
        kinds, at their defaults by validation; ``sae_kind`` itself when it is "topk", the kind of every checkpoint
        and result written before the variants). Keys leave them out, so those keys stay what they were."""
        return tuple(name for name in _VARIANT_FIELDS
                     if (name == "sae_kind" and self.sae_kind == "topk")
                     or (name in SAE_KNOBS and name not in self.reads()))

    def key_dict(self) -> dict:
        """``to_dict`` without ``not_applicable()``: what checkpoint keys and result matching compare."""
        skip = set(self.not_applicable())
        return {name: value for name, value in self.to_dict().items() if name not in skip}

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        """The Config a ``to_dict`` (a checkpoint's, a result's) describes. Unknown fields are ignored, and so are
        the knobs of kinds other than its ``sae_kind`` (they are back at today's defaults): a stored knob that no
        longer equals its default, because the default changed since, describes nothing the model depends on."""
        known = {f.name for f in fields(cls)}
        kind = d.get("sae_kind", "topk")
        return cls(**{k: v for k, v in d.items() if k in known and (k not in SAE_KNOBS or kind in SAE_KNOBS[k])})

    def training_key(self) -> dict:
        """The fields that determine the trained weights."""
        d = self.key_dict()
        return {name: value for name, value in d.items() if name not in self.NON_TRAINING_FIELDS}

    def checkpoint_name(self) -> str:
        """A file name that says what was trained, plus a short hash of every training field."""
        digest = hashlib.sha256(json.dumps(self.training_key(), sort_keys=True).encode()).hexdigest()[:8]
        subset = f"_n{self.train_subset}" if self.train_subset else ""
        knob = _SPARSITY_KNOB[self.sae_kind]
        sparsity = f"k{self.k}" if knob == "k" else f"{_SPARSITY_TAG[knob]}{getattr(self, knob):g}"
        kind = "" if self.sae_kind == "topk" else f"_{self.sae_kind}"  # top-k: the name every checkpoint had
        return (f"ksae{kind}_{sparsity}_h{self.d_hidden}_clf{'x'.join(map(str, self.clf_hidden))}"
                f"_ae{self.ae_epochs}_clf{self.clf_epochs}{subset}_seed{self.seed}_{digest}.pt")


SAE_KINDS = ("topk", "batchtopk", "jumprelu", "relu_l1", "matryoshka")  # Config.sae_kind's values (ksae/sae/)


SAE_KNOBS = {  # a kind-specific knob -> the kinds that read it (a non-default value for another kind: ValueError)
    "k": ("topk", "batchtopk", "matryoshka"),
    "aux_k": ("topk", "batchtopk", "matryoshka"),
    "aux_coef": ("topk", "batchtopk", "matryoshka"),
    "batchtopk_threshold_rate": ("batchtopk", "matryoshka"),
    "matryoshka_prefixes": ("matryoshka",),
    "target_l0": ("jumprelu",),
    "jumprelu_l0_coef": ("jumprelu",),
    "jumprelu_bandwidth": ("jumprelu",),
    "l1_coef": ("relu_l1",),
    "sparsity_warmup": ("jumprelu", "relu_l1"),
}


_SPARSITY_KNOB = {"topk": "k", "batchtopk": "k", "matryoshka": "k", "jumprelu": "target_l0", "relu_l1": "l1_coef"}
# the knob that sets each kind's L0 (in its checkpoint's name)


_SPARSITY_TAG = {"k": "k", "target_l0": "l0-", "l1_coef": "l1-"}  # how the checkpoint name spells each


_VARIANT_FIELDS = ("sae_kind", "batchtopk_threshold_rate", "matryoshka_prefixes", "target_l0", "jumprelu_l0_coef",
                  "jumprelu_bandwidth", "l1_coef", "sparsity_warmup")  # the fields added with the variants: in a
# key only where they apply (Config.not_applicable), so the keys of every earlier checkpoint and result hold


DECAY_SCHEDULES = {"decay10": 0.1, "decay20": 0.2, "decay50": 0.5}  # share of the last steps over which the
# learning rate falls linearly to 0 (constant before); decay20 is the autoencoder's default (docs/results.md,
# recipe choices)


LR_SCHEDULES = ("constant", "cosine", *DECAY_SCHEDULES)


# All methods explain F(x) = the target class's *logit* of ``model(x)`` (``output="probability"``
# explains its softmax probability instead). They accept images as [B, 784], [B, 28, 28] or
# [B, 1, 28, 28] and return attributions of the same shape. Names follow Captum's ``attribute()``.
IG_METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")
