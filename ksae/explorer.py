"""The image explorer: the trained model running in one self-contained HTML page (template in
``templates/explorer.html``): any test image or a drawing, its code, the units' exact contributions, steering,
attribution maps. A sibling of the unit browser, linked both ways."""

from __future__ import annotations

import base64
import copy
import gzip
import json
import os
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn as nn

from ._util import IMAGE_SIDE, _numpy, atomic_write_bytes
from .attribution import RESCALE_EPS, decoder_weighted, ig_quadrature, integrated_gradients, simple_gradients
from .config import Config
from .data import FashionMNIST
from .models import SparseCodePipeline
from .perturbation import occlusion
from .plots.style import DIVERGING_CMAP, MAP_CLIP_PERCENTILE
from .units import UNIT_BROWSER_PAGE, UnitStats, unit_top_contributions

EXPLORER_TEMPLATE = Path(__file__).resolve().parent.parent / "templates" / "explorer.html"


EXPLORER_DTYPES = ("float32", "float16")  # how the page stores the weights (the images are uint8: exact)


EXPLORER_MAX_BYTES = 20 * 2**20  # the page's size bound; write_explorer refuses to write a larger one


EXPLORER_GZIP_LEVEL = 6  # gzip level of the embedded binary (the page inflates it with DecompressionStream)


EXPLORER_MAX_SCALE = 3.0  # steering: a unit's activation scaled from 0x to this


def _linear_layers(pipeline: SparseCodePipeline) -> list[nn.Linear]:
    """The classifier's dense layers after its first, checked to alternate with ReLU (and dropout), ending in
    the logits layer: the structure the page computes. ``ValueError`` otherwise."""
    layers, expect_relu = [], True
    for module in pipeline.clf.rest:
        if isinstance(module, nn.Dropout):
            continue
        if isinstance(module, nn.ReLU) == expect_relu and isinstance(module, (nn.ReLU, nn.Linear)):
            if isinstance(module, nn.Linear):
                layers.append(module)
            expect_relu = not expect_relu
            continue
        raise ValueError(f"pipeline: the page computes a classifier of Linear layers with ReLU between them; "
                         f"its head holds {type(module).__name__} out of that order")
    if not layers or not expect_relu:
        raise ValueError("pipeline: the classifier's head must end in a Linear layer (the logits)")
    return layers


def _check_pipeline(pipeline, data) -> list[nn.Linear]:
    if not isinstance(pipeline, SparseCodePipeline):
        raise ValueError(f"pipeline must be a SparseCodePipeline (autoencoder + classifier), got "
                         f"{type(pipeline).__name__}")
    sae, clf = pipeline.sae, pipeline.clf
    if sae.d_input != IMAGE_SIDE * IMAGE_SIDE:
        raise ValueError(f"pipeline: the page shows {IMAGE_SIDE} x {IMAGE_SIDE} images, so the autoencoder must "
                         f"read {IMAGE_SIDE ** 2} pixels; it reads {sae.d_input}")
    if clf.W1.shape[0] != sae.d_hidden:
        raise ValueError(f"pipeline: the classifier reads {clf.W1.shape[0]} code units but the autoencoder has "
                         f"{sae.d_hidden}")
    layers = _linear_layers(pipeline)
    if len(data.classes) != layers[-1].out_features:
        raise ValueError(f"data has {len(data.classes)} classes but the classifier gives "
                         f"{layers[-1].out_features} logits")
    return layers


def _check_arguments(pipeline, data, path, cfg, unit_stats, unit_browser, dtype) -> list[nn.Linear]:
    if not isinstance(data, FashionMNIST):
        raise ValueError(f"data must be the FashionMNIST of load_fashion_mnist, got {type(data).__name__}")
    if len(data.x_test) == 0 or data.x_test.shape[1:] != (IMAGE_SIDE * IMAGE_SIDE,):
        raise ValueError(f"data.x_test must be [N >= 1, {IMAGE_SIDE ** 2}], got {list(data.x_test.shape)}")
    layers = _check_pipeline(pipeline, data)
    if not isinstance(path, (str, os.PathLike)) or str(path) == "":
        raise ValueError(f"path must be a file path (str or os.PathLike), got {path!r}")
    if Path(path).is_dir():
        raise ValueError(f"path must name a file, got the folder {path}")
    if not isinstance(cfg, Config):
        raise ValueError(f"cfg must be a Config (its ig_steps, ig_method, patch_size and occlusion_stride), got "
                         f"{type(cfg).__name__}")
    sae = pipeline.sae
    if (cfg.sae_kind != sae.kind or (sae.k is not None and cfg.k != sae.k)) or cfg.d_hidden != sae.d_hidden:
        raise ValueError(f"cfg (sae_kind={cfg.sae_kind!r}, k={cfg.k}, d_hidden={cfg.d_hidden}) does not describe the "
                         f"pipeline (sae_kind={sae.kind!r}, k={sae.k}, d_hidden={sae.d_hidden})")
    if unit_stats is not None and (not isinstance(unit_stats, UnitStats)
                                   or len(unit_stats.descriptions) != pipeline.sae.d_hidden):
        raise ValueError(f"unit_stats must be None or the UnitStats of unit_statistics for this pipeline's "
                         f"{pipeline.sae.d_hidden} units, got {type(unit_stats).__name__}")
    if not isinstance(unit_browser, str) or not unit_browser or any(c in unit_browser for c in "\"'<>#"):
        raise ValueError(f"unit_browser must be the unit browser's relative address (e.g. 'unit_browser.html'), "
                         f"got {unit_browser!r}")
    if dtype not in EXPLORER_DTYPES:
        raise ValueError(f"dtype must be one of {EXPLORER_DTYPES}, got {dtype!r}")
    return layers


def _weights(pipeline: SparseCodePipeline, layers: list[nn.Linear]) -> dict[str, np.ndarray]:
    """The page's arrays, float32, row-major: ``W_enc, W_dec: [H, 784]``, ``b_enc: [H]``, ``b_pre: [784]``,
    ``W1: [H, hidden0]``, ``b1``, and per later layer ``W<i>: [out, in]`` (torch's layout), ``b<i>``."""
    sae, clf = pipeline.sae, pipeline.clf
    arrays = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "b_pre": sae.b_pre, "W_dec": sae.W_dec,
              "W1": clf.W1, "b1": clf.b1}
    for i, layer in enumerate(layers, start=2):
        arrays[f"W{i}"], arrays[f"b{i}"] = layer.weight, layer.bias
    return {name: np.ascontiguousarray(_numpy(t.detach()), dtype=np.float32) for name, t in arrays.items()}


@torch.no_grad()
def _float16_error(pipeline: SparseCodePipeline, x: torch.Tensor) -> float:
    """Max |logit change| / max |logit| over ``x: [N, 784]`` when every weight is rounded to float16."""
    rounded = copy.deepcopy(pipeline).eval()
    for tensor in [*rounded.parameters(), *rounded.buffers()]:  # buffers: e.g. BatchTopK's threshold
        if tensor.is_floating_point():
            tensor.copy_(tensor.half().to(tensor.dtype))
    x = x.to(next(pipeline.parameters()).device)
    reference, changed = pipeline(x), rounded(x)
    return float((changed - reference).abs().max() / reference.abs().max().clamp_min(1e-30))


def explorer_data(pipeline: SparseCodePipeline, data: FashionMNIST, cfg: Config, unit_stats: UnitStats | None = None,
                  top_contributions: tuple[np.ndarray, np.ndarray] | None = None, unit_browser: str = UNIT_BROWSER_PAGE,
                  dtype: str = "float32") -> tuple[dict, bytes]:
    """The page's data: a JSON-able manifest (shapes, offsets, quadrature, classes, colours, per-unit images and
    descriptions, and ``activation``: the autoencoder's ``activation_spec``, its kind and rule, from which the page
    computes that kind's own activation) and the binary it describes (weights in ``dtype``, a threshold kind's
    ``cutoffs: [H]`` with them, then the test images as uint8 and their labels), uncompressed.
    ``top_contributions``: ``unit_top_contributions``'s ``(ids, values)`` if computed."""
    layers = _check_arguments(pipeline, data, "explorer.html", cfg, unit_stats, unit_browser, dtype)
    pipeline = pipeline.eval()
    device = next(pipeline.parameters()).device
    images = np.round(255 * _numpy(data.x_test)).astype(np.uint8)
    if not np.array_equal(images.astype(np.float32) / np.float32(255), _numpy(data.x_test)):
        raise ValueError("data.x_test must hold 8-bit images scaled to [0, 1] (u / 255), as load_fashion_mnist "
                         "gives: the page stores them as uint8")
    if top_contributions is None:
        top_contributions = unit_top_contributions(pipeline, data.x_test, device)
    ids, values = top_contributions
    if np.shape(ids) != np.shape(values) or np.shape(ids)[:1] != (pipeline.sae.d_hidden,):
        raise ValueError(f"top_contributions must be unit_top_contributions's (ids, values), both [H = "
                         f"{pipeline.sae.d_hidden}, n], got shapes {np.shape(ids)} and {np.shape(values)}")
    weights = _weights(pipeline, layers)
    spec = dict(pipeline.sae.activation_spec())
    if spec["rule"] == "threshold":  # the cutoffs go into the binary with the weights
        weights["cutoffs"] = np.ascontiguousarray(_numpy(spec.pop("cutoffs")), dtype=np.float32)
    spec["text"] = f"Autoencoder: {pipeline.sae.kind}, its code from {pipeline.sae.activation_label()}."
    store = np.float16 if dtype == "float16" else np.float32
    chunks, arrays, offset = [], {}, 0
    for name, array in weights.items():
        raw = array.astype(store).tobytes()
        arrays[name] = {"offset": offset, "length": int(array.size), "shape": list(array.shape)}
        chunks.append(raw)
        offset += len(raw)
    for name, array in (("images", images), ("labels", _numpy(data.y_test).astype(np.uint8))):
        arrays[name] = {"offset": offset, "length": int(array.size), "shape": list(array.shape)}
        chunks.append(array.tobytes())
        offset += array.nbytes
    alphas, ig_weights = ig_quadrature(cfg.ig_steps, cfg.ig_method)
    cmap = plt.get_cmap(DIVERGING_CMAP)
    manifest = {
        "classes": list(data.classes), "side": IMAGE_SIDE, "d_hidden": pipeline.sae.d_hidden, "k": pipeline.sae.k,
        "activation": spec,
        "hidden": [int(layer.in_features) for layer in layers], "n_classes": layers[-1].out_features,
        "n_images": len(images), "dtype": dtype, "arrays": arrays,
        "float16_error": _float16_error(pipeline, data.x_test) if dtype == "float16" else None,
        "ig": {"steps": cfg.ig_steps, "method": cfg.ig_method, "alphas": alphas.tolist(),
               "weights": ig_weights.tolist()},
        "occlusion": {"window": [cfg.patch_size] * 2, "stride": [cfg.occlusion_stride] * 2},  # zero baseline
        "rescale_eps": RESCALE_EPS, "max_scale": EXPLORER_MAX_SCALE, "clip_percentile": MAP_CLIP_PERCENTILE,
        "cmap": np.round(255 * cmap(np.linspace(0, 1, 256))[:, :3]).astype(int).tolist(),
        "positive_color": "#" + "".join(f"{round(255 * c):02x}" for c in cmap(0.85)[:3]),
        "negative_color": "#" + "".join(f"{round(255 * c):02x}" for c in cmap(0.15)[:3]),
        "unit_browser": unit_browser,
        "top_images": [[int(i) for i in row if i >= 0] for row in np.asarray(ids)],
        "top_contributions": [[float(f"{v:.4g}") for v, i in zip(vs, row) if i >= 0]
                              for vs, row in zip(np.asarray(values), np.asarray(ids))],
        "descriptions": list(unit_stats.descriptions) if unit_stats is not None else None,
    }
    return manifest, b"".join(chunks)


def write_explorer(pipeline: SparseCodePipeline, data: FashionMNIST, path: str | os.PathLike, cfg: Config,
                   unit_stats: UnitStats | None = None,
                   top_contributions: tuple[np.ndarray, np.ndarray] | None = None,
                   unit_browser: str = UNIT_BROWSER_PAGE, dtype: str = "float32") -> Path:
    """Write the self-contained image explorer (``templates/explorer.html`` with the model's weights and the
    test images inlined, gzip + base64: no server, no network) and return its path.

    ``pipeline``: the trained model; ``data``: its test images go into the page; ``cfg``: the run's Config (its
    ``ig_steps`` and ``ig_method`` give the page's integrated gradients, ``patch_size`` and ``occlusion_stride`` its
    occlusion); ``unit_stats``: ``unit_statistics``'s
    result, for each unit's one-line description (optional); ``top_contributions``: ``unit_top_contributions``'s
    result if already computed (else computed here); ``unit_browser``: the unit browser's address relative to
    the page (a unit opens its atlas entry ``<unit_browser>#unit-<j>``); ``dtype``: ``"float32"`` (exact) or
    ``"float16"`` (half the weights' bytes; the page states the measured logit error). ``ValueError`` for bad
    arguments and for a page over ``EXPLORER_MAX_BYTES``.
    """
    _check_arguments(pipeline, data, path, cfg, unit_stats, unit_browser, dtype)
    manifest, blob = explorer_data(pipeline, data, cfg, unit_stats, top_contributions, unit_browser, dtype)
    manifest["compressed"] = "gzip"
    packed = base64.b64encode(gzip.compress(blob, compresslevel=EXPLORER_GZIP_LEVEL, mtime=0)).decode("ascii")
    text = json.dumps(manifest, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    html = EXPLORER_TEMPLATE.read_text(encoding="utf-8")
    for placeholder, value in (("{{EXPLORER_DATA}}", text), ("{{EXPLORER_BLOB}}", packed)):
        assert html.count(placeholder) == 1, f"the template must hold {placeholder} once"
        html = html.replace(placeholder, value)
    page = html.encode("utf-8")
    if len(page) > EXPLORER_MAX_BYTES:
        raise ValueError(f"the page would be {len(page) / 2**20:.1f} MiB, over the bound of "
                         f"{EXPLORER_MAX_BYTES / 2**20:.0f} MiB (try dtype='float16')")
    return atomic_write_bytes(path, page)


def read_explorer_data(path: str | os.PathLike) -> tuple[dict, bytes]:
    """The manifest and the (inflated) binary embedded in a page written by ``write_explorer``."""
    html = Path(path).read_text(encoding="utf-8")
    manifest = re.search(r'<script type="application/json" id="explorer-data">(.*?)</script>', html, re.S)
    blob = re.search(r'<script type="application/octet-stream" id="explorer-blob">(.*?)</script>', html, re.S)
    if manifest is None or blob is None:
        raise ValueError(f"{path} holds no explorer data: not a page written by write_explorer")
    return json.loads(manifest.group(1)), gzip.decompress(base64.b64decode(blob.group(1)))



def explorer_reference(pipeline: SparseCodePipeline, cfg: Config, x: torch.Tensor,
                       target: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the page computes, by the package's own functions, for ``x: [B, 784]`` and ``target: [B]`` class ids
    (in the pipeline's dtype): ``logits [B, C]``, ``recon [B, 784]``, ``z [B, H]``, ``contributions [B, H]`` and
    ``decoderMap [B, 784]`` (``decoder_weighted``), ``ig [B, 784]`` (``cfg``'s steps and quadrature),
    ``gradient [B, 784]`` and ``occlusion [B, 784]`` (``cfg``'s patch and stride, a zero baseline): the reference the
    browser test and the benchmark compare the page with."""
    with torch.no_grad():
        logits, z, recon = pipeline(x), pipeline.sae.encode(x), pipeline.sae(x)
    dec, contributions = decoder_weighted(pipeline, x, target, return_contributions=True)
    return {"logits": logits, "recon": recon, "contributions": contributions, "decoderMap": dec, "z": z,
            "ig": integrated_gradients(pipeline, x, target, n_steps=cfg.ig_steps, method=cfg.ig_method),
            "gradient": simple_gradients(pipeline, x, target),
            "occlusion": occlusion(pipeline, x, target, (cfg.patch_size,) * 2, cfg.occlusion_stride)}
