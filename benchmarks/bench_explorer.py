"""The image explorer (``figures/explorer.html``) in headless Chromium against the issue's targets, on the
default trained pipeline: page <= 20 MB, page ready <= 3 s, one live update (forward, contributions, decoder
map) <= 30 ms, integrated gradients <= 300 ms; and its exactness: the page's logits, top-k set, reconstruction,
unit contributions and maps against the Python functions on test images (relative error of a quantity on one
image: max |page - Python| / max |Python|; the largest over the images is reported). Times are medians,
measured inside the page with ``performance.now()``.

Run from the repository root (loads the default checkpoint from checkpoints/, training it if absent):

    .venv/bin/python benchmarks/bench_explorer.py --json results/benchmarks/explorer.json \
        --screenshot docs/explorer.png
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ksae_helpers as kh  # noqa: E402

TARGETS = {"page_mib": 20.0, "ready_ms": 3000.0, "update_ms": 30.0, "ig_ms": 300.0}  # the bounds
QUANTITIES = ("logits", "recon", "contributions", "decoderMap", "ig", "gradient", "occlusion")
SCREENSHOT_SIZE = (1500, 1050)  # browser window for the README screenshot, pixels
SCREENSHOT_CONFIDENCE = (0.5, 0.8)  # the screenshot shows the first test image predicted with a probability in
# this range (so steering a unit visibly moves it), with its largest contributor turned down


def _driver(width: int = 1280, height: int = 900):
    from selenium import webdriver

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        raise SystemExit("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=chromedriver))
    driver.set_page_load_timeout(120)
    driver.set_script_timeout(600)
    return driver


def _open(driver, page: Path, hash_: str = "") -> float:
    """Load the page fresh; returns its ready time (ms since navigation started)."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get("about:blank")
    driver.get(page.resolve().as_uri() + hash_)
    WebDriverWait(driver, 120).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    errors = driver.execute_script("return window.__errors")
    if errors:
        raise RuntimeError(f"the page reported errors: {errors}")
    return driver.execute_script("return window.ksae.readyAt")


TIMING_SCRIPT = """
const [ids, repeats] = arguments, k = window.ksae, e = k.engine;
const out = {update: [], ig: [], gradient: [], occlusion: [], ui: [], ui_rebuild: []};
for (let rep = 0; rep < repeats; rep++) for (const id of ids) {
  const x = e.testImage(id);
  let t = performance.now();
  const r = k.raw(id, {maps: false});  // forward, top-k, contributions, reconstruction, decoder map
  out.update.push(performance.now() - t);
  t = performance.now(); e.integratedGradients(x, r.target, k.meta.k); out.ig.push(performance.now() - t);
  t = performance.now(); e.pixelGradient(x, r.target, k.meta.k); out.gradient.push(performance.now() - t);
  t = performance.now(); e.occlusion(x, r.target, k.meta.k); out.occlusion.push(performance.now() - t);
}
k.showImage(ids[0]);
const unit = k.state.last.code.idx[0];
for (let i = 0; i < 20; i++) {  // a slider move as the page does it: recompute, redraw in place (no IG)
  k.state.edits.set(unit, {scale: 0.1 * i}); k.state.moving = unit;
  let t = performance.now(); k.update({maps: false, inPlace: true}); out.ui.push(performance.now() - t);
  t = performance.now(); k.update({maps: false}); out.ui_rebuild.push(performance.now() - t);  // and re-sorted
}
return out;"""


def _rel(page, reference) -> float:
    reference = np.asarray(reference, dtype=np.float64)
    return float(np.abs(np.asarray(page) - reference).max() / max(np.abs(reference).max(), 1e-30))


def exactness(driver, pipeline, cfg, data, ids: list[int]) -> dict:
    """Largest relative error per quantity over ``ids`` (their true class explained), against float32 Python
    and float64 Python (the same float32 weights evaluated exactly); top-k sets that differ."""
    results = driver.execute_script("return arguments[0].map((i, n) => window.ksae.run(i, {target: arguments[1][n]}))",
                                    ids, data.y_test[ids].tolist())
    x, y = data.x_test[ids], data.y_test[ids]
    out = {}
    for name, model, xs in (("float32", pipeline, x), ("float64", copy.deepcopy(pipeline).double(), x.double())):
        ref = kh.explorer_reference(model, cfg, xs, y)
        errors = {q: [_rel(r[q], ref[q][i].detach().numpy()) for i, r in enumerate(results)] for q in QUANTITIES}
        out[name] = {q: max(e) for q, e in errors.items()}
        out[name]["images_over_1e-4"] = {q: int(sum(v > 1e-4 for v in e)) for q, e in errors.items()}
        out[name]["topk_sets_differing"] = sum(
            r["active"] != torch.nonzero(ref["z"][i] > 0).flatten().tolist() for i, r in enumerate(results))
    return out


def screenshot(driver, page: Path, path: Path, probs: np.ndarray) -> None:
    """The README's picture: a test image with its largest contributor being steered (dose-response drawn).
    ``probs: [N, C]``: the test images' class probabilities (picks the image)."""
    from PIL import Image

    top = probs.max(1)
    image = int(np.flatnonzero((top >= SCREENSHOT_CONFIDENCE[0]) & (top <= SCREENSHOT_CONFIDENCE[1]))[0])
    driver.set_window_size(*SCREENSHOT_SIZE)
    _open(driver, page, f"#image-{image}")
    driver.execute_script("""const k = window.ksae, r = k.state.last;
        const order = Array.from(r.code.idx.keys()).sort((a, b) => r.contributions[b] - r.contributions[a]);
        const unit = r.code.idx[order[0]];
        k.state.edits.set(unit, {scale: 0.5}); k.state.moving = unit; k.update({maps: false, inPlace: true});""")
    png = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    png.quantize(colors=kh.PNG_COLORS).save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", default="checkpoints", help="folder of the default checkpoint")
    parser.add_argument("--images", type=int, default=50, help="test images timed and compared")
    parser.add_argument("--loads", type=int, default=5, help="fresh page loads timed")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the images")
    parser.add_argument("--out", default="", help="folder for the page (default: a temporary folder)")
    parser.add_argument("--json", default="", help="write the results here (e.g. results/benchmarks/explorer.json)")
    parser.add_argument("--screenshot", default="", help="also save a PNG screenshot here (e.g. docs/explorer.png)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device("cpu")
    cfg = kh.Config()
    data = kh.load_fashion_mnist("data", verbose=False)
    sae, clf, _, _ = kh.load_or_train(cfg, data, device, args.checkpoints)
    pipeline = kh.SparseCodePipeline(sae, clf).eval()
    page = Path(args.out or tempfile.mkdtemp()) / kh.EXPLORER_PAGE
    t0 = time.perf_counter()
    kh.write_explorer(pipeline, data, page, cfg)
    write_s = time.perf_counter() - t0
    ids = np.linspace(0, len(data.x_test) - 1, args.images).round().astype(int).tolist()
    driver = _driver()
    try:
        ready = [_open(driver, page) for _ in range(args.loads)]
        times = driver.execute_script(TIMING_SCRIPT, ids, args.repeats)
        exact = exactness(driver, pipeline, cfg, data, ids)
        if args.screenshot:
            with torch.no_grad():
                probs = pipeline(data.x_test).softmax(1).numpy()
            screenshot(driver, page, Path(args.screenshot), probs)
        chromium = driver.capabilities.get("browserVersion", "")
    finally:
        driver.quit()
    measured = {"page_mib": page.stat().st_size / 2**20, "ready_ms": statistics.median(ready),
                "update_ms": statistics.median(times["update"]), "ig_ms": statistics.median(times["ig"])}
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "load_average": list(os.getloadavg()),
        "created": date.today().isoformat(), "chromium": chromium, "images": len(ids),
        "write_explorer_s": write_s,
        "targets": {name: {"measured": value, "target": TARGETS[name], "met": value <= TARGETS[name]}
                    for name, value in measured.items()},
        "medians_ms": {"gradient": statistics.median(times["gradient"]),
                       "occlusion": statistics.median(times["occlusion"]),
                       "slider_move_with_redraw": statistics.median(times["ui"]),
                       "update_with_table_rebuilt": statistics.median(times["ui_rebuild"])},
        "max_relative_error": exact,
    }
    print(json.dumps(result, indent=1))
    if args.json:
        kh.atomic_write_bytes(args.json, (json.dumps(result, indent=1) + "\n").encode())


if __name__ == "__main__":
    main()
