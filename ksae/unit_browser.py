"""The self-contained HTML unit browser (template in ``templates/unit_browser.html``)."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import torch

from ._util import IMAGE_SIDE, _numpy, atomic_write_bytes
from .plots.style import DIVERGING_CMAP
from .units import EXPLORER_PAGE, UNIT_BAND_SAMPLES, UNIT_QUANTILE_BANDS, UnitStats, _rounded, unit_table

if TYPE_CHECKING:
    from .data import FashionMNIST
    from .sae import SparseAutoencoder


UNIT_BROWSER_TEMPLATE = Path(__file__).resolve().parent.parent / "templates" / "unit_browser.html"


SIGNED_TILE_ZERO = 127  # grey level of 0 in a signed (atom, encoder-row) sprite tile; +-scale maps to 254 / 0


def _png_sprite(tiles: np.ndarray) -> tuple[str, int]:
    """``tiles: [n, 784]`` uint8 grey images -> (base64 PNG of a near-square sheet of 28 x 28 tiles, columns)."""
    from PIL import Image  # Pillow: installed with matplotlib

    n = max(len(tiles), 1)
    columns = math.ceil(math.sqrt(n))
    sheet = np.zeros((math.ceil(n / columns) * columns, IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)
    sheet[:len(tiles)] = tiles.reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    sheet = sheet.reshape(-1, columns, IMAGE_SIDE, IMAGE_SIDE).transpose(0, 2, 1, 3).reshape(-1, columns * IMAGE_SIDE)
    buffer = io.BytesIO()
    Image.fromarray(sheet, mode="L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii"), columns


def _signed_tiles(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``rows: [n, 784]`` signed -> (uint8 tiles with 0 at ``SIGNED_TILE_ZERO``, each row scaled by its own
    max |value|; those scales ``[n]``)."""
    scale = np.abs(rows).max(1)
    scale = np.where(scale > 0, scale, 1.0)
    return np.round(SIGNED_TILE_ZERO * (1 + rows / scale[:, None])).astype(np.uint8), scale


def _diverging_lut() -> list[list[int]]:
    """RGB of the diverging colour map for every grey level of a signed tile (``SIGNED_TILE_ZERO`` = white)."""
    t = np.clip((np.arange(256) - SIGNED_TILE_ZERO) / SIGNED_TILE_ZERO, -1, 1)
    return np.round(255 * plt.get_cmap(DIVERGING_CMAP)((t + 1) / 2)[:, :3]).astype(int).tolist()


def _hex(rgb) -> str:
    return "#" + "".join(f"{round(255 * c):02x}" for c in rgb[:3])


def _check_stability(stability, n_units: int) -> list[tuple[int, list, list]]:
    """``[(seed, cosine: [H], matched unit: [H])]`` of a ``seed_stability`` result for ``n_units`` units
    (empty for ``None``); ``ValueError`` when it is not one or describes another number of units."""
    if stability is None:
        return []
    keys = ("reference", "seeds", "threshold", "cosine", "matched", "min_cosine", "share_stable")
    if not isinstance(stability, dict) or any(k not in stability for k in keys):
        raise ValueError(f"stability must be the dict of seed_stability or run_seed_stability (keys {keys}), got "
                         f"{type(stability).__name__}")
    if len(stability["min_cosine"]) != n_units:
        raise ValueError(f"stability describes {len(stability['min_cosine'])} units but stats describe {n_units}")
    return [(seed, stability["cosine"][str(seed)], stability["matched"][str(seed)]) for seed in stability["seeds"]]


def unit_browser_data(stats: UnitStats, sae: SparseAutoencoder, data: FashionMNIST,
                      top_contributions: tuple[np.ndarray, np.ndarray] | None = None,
                      explorer: str = EXPLORER_PAGE, stability: dict | None = None) -> tuple[dict, str, str]:
    """The browser's data (``unit_table`` rows plus every per-unit detail; image ids index the test set) and
    its two base64 PNG sprites: the test images it shows, and every unit's atom then encoder row.
    ``top_contributions``: ``unit_top_contributions``'s ``(ids, values)``, both ``[H, n]``: each unit then lists
    those images, each linking to the explorer page ``explorer`` (``<explorer>#image-<id>``). ``stability``:
    a ``seed_stability`` (or ``run_seed_stability``) result whose reference is this model: each unit then shows
    its matched cosine in every other seed, and the list can be sorted and filtered by it."""
    per_seed = _check_stability(stability, len(stats.freq_test))
    contributing = np.full((len(stats.freq_test), 0), -1) if top_contributions is None else top_contributions[0]
    if top_contributions is not None and (np.shape(contributing)[:1] != (len(stats.freq_test),)
                                          or np.shape(top_contributions[1]) != np.shape(contributing)):
        raise ValueError(f"top_contributions must be unit_top_contributions's (ids, values), both [H = "
                         f"{len(stats.freq_test)}, n], got shapes {np.shape(contributing)} and "
                         f"{np.shape(top_contributions[1])}")
    image_ids = np.unique(np.concatenate([stats.top_images.ravel(), stats.band_images.ravel(),
                                          np.asarray(contributing).ravel()]).astype(np.int64))
    image_ids = image_ids[image_ids >= 0]
    images = np.round(255 * _numpy(data.x_test[torch.from_numpy(image_ids)]).reshape(len(image_ids), -1))
    image_sprite, image_columns = _png_sprite(images.astype(np.uint8))
    tiles, scales = _signed_tiles(np.concatenate([_numpy(sae.W_dec), _numpy(sae.W_enc)]))
    atom_sprite, atom_columns = _png_sprite(tiles)
    n_units = len(stats.freq_test)
    units = []
    for row in unit_table(stats):
        j = row["unit"]
        top = stats.top_images[j] >= 0
        row.update(n_fire=int(stats.n_fire[j]), description=stats.descriptions[j],
                   top_images=stats.top_images[j][top].tolist(), top_values=_rounded(stats.top_values[j][top]),
                   band_images=[band[band >= 0].tolist() for band in stats.band_images[j]],
                   hist=stats.hist[j].tolist(), hist_max=_rounded(stats.hist_max[j]),
                   class_counts=stats.class_counts[j].tolist(), contribution=_rounded(stats.contribution[j]),
                   ablation=_rounded(stats.ablation[j]), cofiring=[int(u) for u in stats.cofiring[j] if u >= 0],
                   cofiring_jaccard=_rounded(stats.cofiring_jaccard[j][stats.cofiring[j] >= 0]),
                   atom_scale=_rounded(scales[j]), encoder_scale=_rounded(scales[n_units + j]))
        if top_contributions is not None:
            mine = contributing[j] >= 0
            row.update(contributing_images=np.asarray(contributing[j])[mine].tolist(),
                       contributing_values=_rounded(np.asarray(top_contributions[1][j])[mine]))
        if stability is not None:
            row.update(stability=_rounded(stability["min_cosine"][j]), stability_seeds=[
                {"seed": seed, "cosine": _rounded(cos[j]), "unit": int(match[j])} for seed, cos, match in per_seed])
        units.append(row)
    cmap = plt.get_cmap(DIVERGING_CMAP)
    payload = {"classes": stats.classes, "tile": IMAGE_SIDE, "units": units, "image_ids": image_ids.tolist(),
               "image_columns": image_columns, "atom_columns": atom_columns, "cmap": _diverging_lut(),
               "explorer": explorer if top_contributions is not None else None,
               "stability": None if stability is None else {
                   "threshold": stability["threshold"], "reference": stability["reference"],
                   "seeds": stability["seeds"], "share_stable": stability["share_stable"],
                   "control_max": stability["control"]["max_cosine"] if "control" in stability else None},
               "positive_color": _hex(cmap(0.85)), "negative_color": _hex(cmap(0.15)),
               "band_samples": UNIT_BAND_SAMPLES, "band_labels": [
                   f"activation quantiles {100 * lo:.0f}–{100 * hi:.0f} %" for lo, hi in UNIT_QUANTILE_BANDS]}
    return payload, image_sprite, atom_sprite


def write_unit_browser(stats: UnitStats, sae: SparseAutoencoder, data: FashionMNIST,
                       path: str | os.PathLike, top_contributions: tuple[np.ndarray, np.ndarray] | None = None,
                       explorer: str = EXPLORER_PAGE, stability: dict | None = None) -> Path:
    """Write the self-contained HTML unit browser (``templates/unit_browser.html`` filled with the data of
    ``unit_browser_data``: no server, no network access). Returns the path. A unit's entry opens at
    ``<path>#unit-<j>``; with ``top_contributions`` (``unit_top_contributions``) it lists the test images where
    the unit contributes most, each linking to ``<explorer>#image-<id>``; with ``stability``
    (``run_seed_stability``) each unit shows how well it recurs in the other training seeds."""
    if not isinstance(stats, UnitStats):
        raise ValueError(f"stats must be the UnitStats of unit_statistics, got {type(stats).__name__}")
    if sae.d_hidden != len(stats.freq_test):
        raise ValueError(f"stats describe {len(stats.freq_test)} units but the autoencoder has {sae.d_hidden}")
    payload, image_sprite, atom_sprite = unit_browser_data(stats, sae, data, top_contributions, explorer, stability)
    text = json.dumps(payload, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    html = UNIT_BROWSER_TEMPLATE.read_text(encoding="utf-8")
    for placeholder, value in (("{{IMAGE_SPRITE}}", image_sprite), ("{{ATOM_SPRITE}}", atom_sprite),
                               ("{{UNIT_DATA}}", text)):
        assert html.count(placeholder) == 1, f"the template must hold {placeholder} once"
        html = html.replace(placeholder, value)
    return atomic_write_bytes(path, html.encode("utf-8"))


def read_unit_browser_data(path: str | os.PathLike) -> dict:
    """The JSON data embedded in a page written by ``write_unit_browser`` (for checks and other tools)."""
    html = Path(path).read_text(encoding="utf-8")
    match = re.search(r'<script type="application/json" id="unit-data">(.*?)</script>', html, re.S)
    if match is None:
        raise ValueError(f"{path} holds no unit-data script: not a page written by write_unit_browser")
    return json.loads(match.group(1))
