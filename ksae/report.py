"""``results/summary.json``, tables and generated markdown, run names and output folders, notebook
compaction."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from ._util import _check_int, _check_path, _check_writable_folder, _jsonable, _plain, atomic_write_bytes
from .attribution import METHOD_LABELS
from .checks.agreement import PIXEL_SETS
from .checks.randomization import RANDOMIZATION_VARIANTS
from .checks.verdicts import VERDICT_NAMES, VERDICT_TESTS, _verdict_label, verdict_statements
from .config import Config
from .parameters import NOTEBOOK_PARAMETERS
from .runtime import device_name
from .stats import _ci_text
from .units import _percent

if TYPE_CHECKING:
    from .selection import Selection


# Keys (listed in docs/results.md, "What `results/summary.json` holds"):
#   schema_version, created, config, device, torch_version, timings_s{phase: seconds},
#   autoencoder{k, test_mse_per_pixel, fvu, mean_l0, dead_units, d_hidden},
#   classifier{test_accuracy, per_class_accuracy{class: acc}, confusion_matrix[[...]]},
#   selection{n_images, n_per_class, threshold, candidates_per_class, selected_per_class, n_fallback,
#             shortfalls{class: {passing, selected, fallback}}, skipped_classes, warning},
#   validation{n_images, cross_method, faithfulness, object_focus, completeness, randomization, unit_deletion,
#              seconds{check: s}}, verdicts[{ordering, method, ranking, test, passes, rank, value}],
#   units{table[{unit, freq_train, freq_test, majority_class, purity, recall, mean_contribution, ablation_effect,
#         ablation_accuracy, dead}], agreement{n_units, pearson, spearman, same_sign}, seconds} (passed as extra)
SUMMARY_SCHEMA_VERSION = 1


def selection_summary(selection: Selection, threshold: float) -> dict:
    """The ``selection`` block of the summary: sizes, per-class counts and any shortfall."""
    classes = list(selection.n_candidates)
    fallback = selection.fallback
    return {"n_images": len(selection.y), "threshold": threshold,
            "n_per_class": selection.n_requested or len(selection.y) // max(len(classes), 1),
            "candidates_per_class": selection.n_candidates, "selected_per_class": selection.per_class(classes),
            "n_fallback": int(fallback.sum()) if fallback is not None else 0,
            "shortfalls": selection.shortfalls, "skipped_classes": selection.skipped, "warning": selection.warning}


def build_summary(cfg: Config, device: torch.device, metrics: dict, timings: dict,
                  selection: Selection | None = None, validation: dict | None = None, **extra) -> dict:
    """Everything a reader or a script needs to check the notebook's claims, as one dict."""
    ae = {k: v for k, v in metrics["autoencoder"].items() if k != "unit_usage_train"}
    summary = {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": cfg.to_dict(),
        "device": device_name(device),
        "torch_version": torch.__version__,
        "timings_s": timings,
        "autoencoder": ae,
        "classifier": metrics["classifier"],
    }
    if selection is not None:
        summary["selection"] = selection_summary(selection, cfg.confidence_threshold)
    if validation is not None:
        summary["validation"] = validation
    summary.update(extra)
    return _jsonable(summary)


def figure_timings(seconds: dict[str, list[float]]) -> dict:
    """Figure-drawing time (``seconds``: plot function -> seconds of each figure, e.g. a ``Stopwatch``'s
    ``figures``) summed up, in seconds: ``{"total", "n_figures", "slowest": [function, s], "per_function":
    {function: {"calls", "total", "max"}}}``."""
    per = {name: {"calls": len(t), "total": sum(t), "max": max(t)} for name, t in seconds.items() if t}
    slowest = max(per, key=lambda name: per[name]["max"], default=None)
    return {"total": sum(p["total"] for p in per.values()), "n_figures": sum(p["calls"] for p in per.values()),
            "slowest": [slowest, per[slowest]["max"] if slowest else 0.0], "per_function": per}


def _unserialisable_key(obj, where: str = "summary") -> str | None:
    """Where in ``obj`` (e.g. ``summary['validation']['seconds']``) the first value JSON cannot hold sits."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            found = _unserialisable_key(v, f"{where}[{k!r}]")
            if found:
                return found
        return None
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found = _unserialisable_key(v, f"{where}[{i}]")
            if found:
                return found
        return None
    try:
        json.dumps(obj, allow_nan=False)
    except (TypeError, ValueError):
        return f"{where} ({type(obj).__name__} {obj!r:.60})"
    return None


def write_summary(summary: dict, path: str | os.PathLike = "results/summary.json") -> Path:
    """Write ``summary`` as indented JSON, atomically. Tensors and numpy values become plain numbers and lists,
    NaN and inf (undefined statistics) become ``null`` (``_jsonable``); a value JSON cannot hold raises
    ``ValueError`` naming its key, before anything is written."""
    if not isinstance(summary, dict):
        raise ValueError(f"summary must be a dict (build_summary's), got {type(summary).__name__}")
    _check_path("path", path, "file")
    plain = _jsonable(summary)
    where = _unserialisable_key(plain)
    if where:
        raise ValueError(f"summary must hold only JSON values (numbers, strings, lists, dicts), got {where}")
    return atomic_write_bytes(path, json.dumps(plain, indent=1, allow_nan=False).encode())


def headline_table(summary: dict) -> list[tuple[str, str]]:
    """The headline numbers of a summary as (name, value) rows, for the notebook's closing table."""
    ae, clf = summary["autoencoder"], summary["classifier"]
    kind = (summary.get("config") or {}).get("sae_kind", "topk")  # summaries before the variants: top-k
    first = ("k (active units)", f"{ae['k']}") if kind == "topk" else (  # other kinds: L0 is measured, below
        "Autoencoder", kind + (f" (k = {ae['k']} per image on average in training)" if ae.get("k") else ""))
    rows = [first, ("Test FVU", f"{ae['fvu']:.4f}"),
            ("Test MSE / pixel", f"{ae['test_mse_per_pixel']:.5f}"), ("Mean L0", f"{ae['mean_l0']:.1f}"),
            ("Dead units", f"{ae['dead_units']} / {ae['d_hidden']}"),
            ("Test accuracy", f"{100 * clf['test_accuracy']:.2f} %")]
    sel = summary.get("selection")
    if sel:
        short = f"; fewer for {len(sel.get('shortfalls', {})) + len(sel.get('skipped_classes', []))} classes"
        rows.append(("Explained images", f"{sel['n_images']} ({sel['n_per_class']} asked per class"
                     f"{short if sel.get('warning') else ''}, {sel.get('n_fallback', 0)} below the threshold)"))
    val = summary.get("validation")
    if val:
        for sub, res in val["faithfulness"]["substrates"].items():
            for key, e in res["orderings"].items():
                rows.append((f"LeRF-MoRF gap, {sub}: {key}", _ci_text(e["gap"])))
        comp = val["completeness"]
        rows.append((f"IG completeness error = jump sum within {100 * comp['tolerance']:.0f} % "
                     f"({comp['n_steps']} steps)", f"{100 * comp['share_within_tolerance']:.0f} % of images"))
    rows += [(f"time: {k}", f"{v:.1f} s") for k, v in summary.get("timings_s", {}).items()]
    figures = summary.get("figures")
    if figures and figures["n_figures"]:
        rows.append((f"time: {figures['n_figures']} figures (drawn and saved)",
                     f"{figures['total']:.1f} s, slowest {figures['slowest'][1]:.2f} s ({figures['slowest'][0]})"))
    return rows


def seeds_for_config(path: str | os.PathLike, cfg: Config) -> dict | None:
    """``benchmarks/verdicts_across_seeds.py``'s result at ``path`` if it was measured with ``cfg``'s
    configuration (every field but the seed and the execution fields, which change no result: ``cuda_graphs``;
    a file written before such a field existed still matches), else None (missing file, another configuration)."""
    path = Path(path)
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    ignored = {"seed", *(set(cfg.NON_TRAINING_FIELDS) - set(cfg.ATTRIBUTION_FIELDS))}
    mine = {k: v for k, v in cfg.key_dict().items() if k not in ignored}
    default = Config().to_dict()  # a field that does not apply to cfg's kind matches where absent or at its default
    theirs = {k: v for k, v in result.get("config", {}).items() if k not in ignored
              and not (k in cfg.not_applicable() and _plain(v) == _plain(default[k]))}
    return result if json.dumps(mine, sort_keys=True) == json.dumps(theirs, sort_keys=True) else None


def verdict_markdown(rows: list[dict], seeds: dict | None = None) -> str:
    """A Markdown table, one row per attribution ordering and one column per test of ``VERDICT_TESTS``:
    ✓ / ✗ (pass / fail in this run), the rank among all orderings where there is one, and, if ``seeds``
    (``seeds_for_config``) is given, ``seeds: ✓✓✗`` with the outcome in each seed (— when a test does not
    apply). Then the plain statements: from ``seeds`` when given, else from this run alone."""
    tests = list(VERDICT_TESTS)
    stability = {(e["ordering"], e["test"]): e for e in (seeds or {}).get("stability", [])}
    table = {}
    for r in rows:
        cell = ("✓" if r["passes"] else "✗") + (f" (rank {r['rank']})" if r["rank"] is not None else "")
        e = stability.get((r["ordering"], r["test"]))
        if e:
            cell += " · seeds " + "".join("✓" if ok else "✗" for ok in e["passes"].values())
        table.setdefault(r["ordering"], {})[r["test"]] = cell
    lines = ["| ordering | " + " | ".join(VERDICT_NAMES[t] for t in tests) + " |",
             "|---" * (len(tests) + 1) + "|"]
    lines += [f"| {_verdict_label(o).replace('|', '&#124;')} | " + " | ".join(cells.get(t, "—") for t in tests) + " |"
              for o, cells in table.items()]  # a literal | would split the cell
    statements = seeds["statements"] if seeds else verdict_statements({"this run": rows})
    where = f"{len(seeds['seeds'])} training seeds" if seeds else "this run only (no seed file for this configuration)"
    for kind, title in (("holds", "Holds on every substrate"), ("fails", "Fails everywhere"),
                        ("flips", "Depends on the protocol")):
        if statements[kind]:
            lines += ["", f"**{title}** ({where}):", *[f"- {s}" for s in statements[kind]]]
    return "\n".join(lines)


def read_summary(path: str | os.PathLike = "results/summary.json") -> dict:
    """Load a summary written by ``write_summary`` (any JSON object file). ``ValueError`` naming the file when
    it is missing, unreadable or not a JSON object."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"summary file {str(path)!r} does not exist (run the notebook, or the benchmark that "
                         f"writes it, first)") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"summary file {str(path)!r} must be readable JSON, got {type(exc).__name__}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"summary file {str(path)!r} must hold a JSON object, got {type(data).__name__}")
    return data


def figure_path_fn(folder: str | os.PathLike | None) -> Callable[[str], str | None]:
    """``fn(name) -> "folder/name.png"``, or ``None`` for every name when ``folder`` is empty."""
    return lambda name: str(Path(folder) / f"{name}.png") if folder else None


DEFAULT_FIGURE_DIR = "figures"  # the committed default run's figures


DEFAULT_SUMMARY_PATH = "results/summary.json"  # the committed default run's summary


RUNS_DIR = "runs"  # every other configuration writes under runs/<run_name>/ (git-ignored)
# The notebook's run parameters that are not Config fields, at their defaults (its parameters cell).


RUN_DEFAULTS = {"samples_per_class": 100, "n_subset": 300, "n_completeness": 200, "n_randomization": 100}


RUN_NAME_MAX = 80  # longer run names are cut and given a hash of the full name


def _name_part(name: str, value) -> str:
    """'k20', 'train_subset3000', 'n_subset50' for one non-default setting; the autoencoder kind by its name alone
    ('jumprelu')."""
    if name == "sae_kind":
        return str(value)
    if isinstance(value, (list, tuple)):
        value = "-".join(map(str, value))
    elif isinstance(value, float):
        value = f"{value:g}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{name}{value}")


def run_name(cfg: Config, **run_params) -> str:
    """``"default"`` for ``Config()`` with ``RUN_DEFAULTS``, else the settings that differ, e.g. ``"k20"``,
    ``"jumprelu_target_l020"`` or ``"k1_ae_epochs3_train_subset3000_samples_per_class3"`` (Config fields first, in
    field order: the autoencoder kind first).

    ``run_params``: notebook parameters named in ``RUN_DEFAULTS`` (others raise ``ValueError``).
    """
    if not isinstance(cfg, Config):
        raise ValueError(f"cfg must be a Config, got {type(cfg).__name__}")
    unknown = sorted(set(run_params) - set(RUN_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown run parameter(s) {unknown}; expected some of {sorted(RUN_DEFAULTS)}")
    for n, v in run_params.items():  # the notebook's N_SUBSET etc., by their argument names
        _check_int(n, v, low=int(NOTEBOOK_PARAMETERS[n.upper()].low))
    default = Config().to_dict()
    settings = {**{n: v for n, v in cfg.to_dict().items() if _plain(v) != _plain(default[n])},
                **{n: run_params[n] for n in RUN_DEFAULTS  # in RUN_DEFAULTS' order: the name ignores argument order
                   if n in run_params and _plain(run_params[n]) != _plain(RUN_DEFAULTS[n])}}
    if not settings:
        return "default"
    name = "_".join(_name_part(n, v) for n, v in settings.items())
    if len(name) > RUN_NAME_MAX:
        name = f"{name[:RUN_NAME_MAX - 9]}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return name


def _check_writable(folder: Path) -> None:
    """Create ``folder`` (and parents) and prove a file can be written there; ``ValueError`` if not."""
    _check_writable_folder(f"output folder {str(folder)!r}", folder)


def _inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it, by location: both resolved (absolute, ``..`` and
    symbolic links followed, as far as they exist), however either is spelled."""
    p, f = Path(path).resolve(), Path(folder).resolve()
    return p == f or f in p.parents


def protected_folders(root: str | os.PathLike | None = None) -> list[Path]:
    """The committed default run's output folders (``figures/`` and ``results/``): under the working folder
    and under the repository holding this package (the notebook's folder), resolved."""
    roots = [Path.cwd() if root is None else Path(root), Path(__file__).resolve().parent.parent]
    folders = [Path(r) / d for r in roots for d in (DEFAULT_FIGURE_DIR, Path(DEFAULT_SUMMARY_PATH).parent)]
    return list(dict.fromkeys(f.resolve() for f in folders))


def output_paths(cfg: Config, figure_dir: str | os.PathLike | None = DEFAULT_FIGURE_DIR,
                 summary_path: str | os.PathLike = DEFAULT_SUMMARY_PATH, runs_dir: str | os.PathLike = RUNS_DIR,
                 **run_params) -> tuple[str, str]:
    """Where this run saves its figures and summary, checked writable (call it before training).

    The default configuration (``run_name(cfg, **run_params) == "default"``) keeps ``figure_dir`` and
    ``summary_path``. Any other configuration that would write into the default run's ``figures/`` or
    ``results/`` (``protected_folders``; compared by location, so an absolute path, ``..`` or a symbolic link to
    them counts too) writes to ``runs/<run_name>/figures`` and ``runs/<run_name>/summary.json`` (or the
    summary's own file name) instead, so it never overwrites the committed default run; other paths are kept.
    ``figure_dir`` empty or None (save no figures) stays as it is. Raises ``ValueError`` for a folder that
    cannot be created or written.
    """
    name = run_name(cfg, **run_params)
    _check_path("figure_dir", "" if figure_dir is None else figure_dir, "folder", allow_empty=True)
    _check_path("summary_path", summary_path, "file")
    figures = str(figure_dir) if figure_dir else ""
    summary = str(summary_path)
    if name != "default":
        run = Path(runs_dir) / name
        protected = protected_folders()
        if figures and any(_inside(figures, p) for p in protected):
            figures = str(run / "figures")
        if any(_inside(summary, p) for p in protected):
            summary = str(run / ("summary.json" if Path(summary).name == Path(DEFAULT_SUMMARY_PATH).name
                                 else Path(summary).name))
    for folder in ([Path(figures)] if figures else []) + [Path(summary).parent]:
        _check_writable(folder)
    return figures, summary


_CARRIAGE_RETURN = re.compile(r".*\r(?=[^\n])")  # text a later \r on the same line overwrote


def _coalesce_streams(outputs: list) -> list:
    """Merge consecutive stream outputs of the same name and apply carriage returns (as a terminal shows
    them, like nbconvert's ``coalesce_streams``); drop streams left empty."""
    merged = []
    for out in outputs:
        if out.get("output_type") == "stream":
            text = "".join(out["text"]) if isinstance(out["text"], list) else out["text"]
            if merged and merged[-1].get("output_type") == "stream" and merged[-1]["name"] == out["name"]:
                merged[-1]["text"] += text
                continue
            out = {**out, "text": text}
        merged.append(out)
    for out in merged:
        if out.get("output_type") == "stream":
            out["text"] = _CARRIAGE_RETURN.sub("", out["text"].replace("\r\n", "\n"))
    return [o for o in merged if not (o.get("output_type") == "stream" and not o["text"])]


def compact_notebook(path: str | os.PathLike) -> tuple[int, int]:
    """Rewrite an executed notebook in place with each cell's progress-bar updates collapsed to their last
    state (``_coalesce_streams``); everything else is kept. Returns the file size (bytes) before and after.

    Run it after papermill: ``papermill nb.ipynb nb.ipynb && python -c "import ksae_helpers as kh;
    kh.compact_notebook('nb.ipynb')"``.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        nb = json.loads(raw)
        cells = nb["cells"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"path must be a readable .ipynb notebook (JSON with 'cells'), got {str(path)!r}: "
                         f"{exc}") from exc
    for cell in cells:
        if cell.get("cell_type") == "code":
            cell["outputs"] = _coalesce_streams(cell.get("outputs", []))
    import nbformat  # comes with jupyter; writes the file exactly as Jupyter and papermill do

    data = nbformat.writes(nbformat.from_dict(nb), version=nbformat.NO_CONVERT).encode()
    atomic_write_bytes(path, data)
    return len(raw), len(data)


def randomization_table(rand: dict) -> list[tuple[str, str]]:
    """Rows "method: all pixels / object pixels" of the randomization check's similarity after the last
    stage that changes the model (the encoder: cascading, and the encoder alone: independent), next to
    the different-class reference on the same pixel sets."""
    stage = rand["stages"].index("encoder")
    rows = [("Spearman |maps| with the original (all pixels / object pixels)",
             "cascading to the encoder | encoder alone | different-class reference")]
    for m in rand["reference"]:
        cells = [rand["variants"][v][p][m][stage]["mean"] for v in RANDOMIZATION_VARIANTS for p in PIXEL_SETS]
        ref = [rand["reference"][m][p]["mean"] for p in PIXEL_SETS]
        rows.append((METHOD_LABELS.get(m, m), f"{cells[0]:.3f} / {cells[1]:.3f} | {cells[2]:.3f} / {cells[3]:.3f} | "
                     f"{ref[0]:.3f} / {ref[1]:.3f}"))
    return rows


UNIT_PURE = 0.9  # a unit is "class-pure" in the summary when at least this share of its firing images is one class


def unit_table_summary(units: dict) -> list[tuple[str, str]]:
    """(name, value) rows about the units from ``summary["units"]`` (``{"table": unit_table(...),
    "agreement": contribution_ablation_agreement(...)}``), for the notebook's text about the units."""
    if not isinstance(units, dict) or not isinstance(units.get("table"), list) or not units["table"]:
        raise ValueError(f"units must be a dict with a non-empty 'table' (rows of unit_table), got {units!r:.80}")
    table = units["table"]
    live = [row for row in table if row["majority_class"] is not None]
    freq = np.array([row["freq_test"] for row in table])
    pure = [row for row in live if row["purity"] >= UNIT_PURE]
    lowers = [row for row in live if row["ablation_effect"] < 0]
    rows = [("units", f"{len(table)}"), ("dead (no training or test image)", f"{sum(r['dead'] for r in table)}"),
            ("fire on no test image", f"{len(table) - len(live)}"),
            ("median firing frequency (test)", _percent(float(np.median(freq)))),
            (f"class-pure units (purity >= {UNIT_PURE:.0%})", f"{len(pure)} of {len(live)}"),
            ("zeroing lowers its class logit", f"{len(lowers)} of {len(live)}")]
    counts: dict[str, int] = {}
    for row in live:
        counts[row["majority_class"]] = counts.get(row["majority_class"], 0) + 1
    rows += [(f"units whose majority class is {name}", f"{n}") for name, n in sorted(counts.items())]
    agreement = units.get("agreement")
    if agreement:
        for name in ("pearson", "spearman"):
            lo, hi = agreement[name]["ci95"]
            rows.append((f"contribution vs ablation: {name}", f"{agreement[name]['value']:.3f} [{lo:.3f}, {hi:.3f}]"))
        rows.append(("contribution and ablation drop of the same sign", f"{agreement['same_sign']:.0%} of units"))
    return rows
