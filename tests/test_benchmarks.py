"""The FVU-vs-budget script measures what it says (tiny budget: a few hundred images, one or two epochs)."""

import importlib.util
import inspect
import json
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ksae
import ksae.config
import ksae_helpers as kh
from ksae import variants_report

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fvu_vs_budget_rows_follow_the_grid(capsys, tmp_path):
    fvu_vs_budget = _load("fvu_vs_budget")
    rows = fvu_vs_budget.main(["--epochs", "1", "3", "--batch-sizes", "64", "--train-subset", "512",
                               "--device", "cpu", "--threads", "1", "--out", str(tmp_path / "fvu.json")])
    record = json.loads((tmp_path / "fvu.json").read_text())
    assert record["rows"] == rows and record["device"].startswith("CPU")
    assert [(r["ae_epochs"], r["batch_size"], r["lr"]) for r in rows] == [(1, 64, 1e-3), (3, 64, 1e-3)]
    for r in rows:
        assert 0.0 < r["fvu"] < 1.0 and 0.0 < r["val_fvu"] < 1.0
        assert r["mean_l0"] <= 50.0
        assert 0 <= r["dead_units"] <= 1024
        assert r["seconds"] > 0
    assert rows[1]["val_fvu"] < rows[0]["val_fvu"]  # three epochs on the same images fit them better than one
    out = capsys.readouterr().out
    assert "target val FVU <= 0.05" in out and out.count("missed") == 2


def test_fvu_vs_budget_seeds_k_and_all_training_images(tmp_path):
    """``--n-vals 0`` trains on every training image and has no validation FVU; ``--append`` keeps earlier rows."""
    fvu_vs_budget = _load("fvu_vs_budget")
    out = tmp_path / "fvu.json"
    common = ["--epochs", "1", "--batch-sizes", "64", "--device", "cpu", "--threads", "1", "--out", str(out)]
    first = fvu_vs_budget.main(common + ["--ks", "8", "--seeds", "0", "1", "--n-vals", "1000", "0",
                                         "--train-subset", "300"])
    assert [(r["k"], r["seed"], r["val_fvu"] is None) for r in first] == [(8, 0, False), (8, 1, False),
                                                                           (8, 0, True), (8, 1, True)]
    assert first[0]["fvu"] != first[1]["fvu"]  # another seed, another autoencoder
    assert all(r["n_train"] == 300 and r["mean_l0"] <= 8 for r in first)
    second = fvu_vs_budget.main(common + ["--ks", "4", "--train-subset", "300", "--append"])
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(first + second))


def test_fvu_vs_budget_rejects_bad_epochs():
    fvu_vs_budget = _load("fvu_vs_budget")
    with pytest.raises(ValueError, match="ae_epochs"):
        fvu_vs_budget.main(["--epochs", "0", "--train-subset", "256", "--device", "cpu"])


def test_k_sweep_runs_two_k_on_small_data(tmp_path):
    """CI's tiny sweep: two k, a few hundred images, one epoch each; the JSON holds one honest row per k."""
    k_sweep = _load("k_sweep")
    out = tmp_path / "k.json"
    result = k_sweep.main(["--ks", "4", "16", "--epochs", "1", "1", "--train-subset", "600", "--n-per-class", "2",
                           "--device", "cpu", "--ckpt-dir", str(tmp_path / "ckpt"), "--out", str(out)])
    saved = json.loads(out.read_text())
    assert [r["k"] for r in saved["rows"]] == [4, 16] and saved["epochs"] == [1, 1]
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    for r in saved["rows"]:
        assert r["mean_l0"] <= r["k"] and 0.0 < r["fvu"] < 1.0 and 0.0 < r["test_accuracy"] <= 1.0
        assert 0 <= r["dead_units"] <= 1024 and r["train_seconds"]["ae"] > 0
        assert all(0.0 <= r[f"deletion_auc_{m}"] <= 1.0 for m in ("integrated", "decoder", "random"))
    rows = saved["rows"]
    assert rows[1]["fvu"] < rows[0]["fvu"]  # more active units reconstruct better


def test_verdicts_across_seeds_on_two_tiny_seeds(tmp_path):
    """The seeds benchmark on two tiny models: one verdict row per ordering x test per seed, stability computed
    from them (a row is stable exactly when both seeds agree)."""
    bench = _load("verdicts_across_seeds")
    out = tmp_path / "v.json"
    bench.main(["--seeds", "0", "1", "--epochs", "2", "4", "--train-subset", "2000", "--n-per-class", "2",
                "--threshold", "0.0", "--n-subset", "10", "--n-completeness", "4", "--n-randomization", "4",
                "--device", "cpu", "--ckpt-dir", str(tmp_path / "ckpt"), "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["seeds"] == [0, 1] and set(saved["per_seed"]) == {"0", "1"}
    rows0, rows1 = saved["per_seed"]["0"]["rows"], saved["per_seed"]["1"]["rows"]
    assert [(r["ordering"], r["test"]) for r in rows0] == [(r["ordering"], r["test"]) for r in rows1]
    for entry in saved["stability"]:
        assert entry["stable"] == (entry["passes"]["0"] == entry["passes"]["1"])
    assert len(saved["stability"]) == len(rows0)
    assert set(saved["statements"]) == {"holds", "fails", "flips"}
    assert {r["ordering"].split("/")[0] for r in rows0} == set(kh.METHOD_LABELS)  # both families, every method
    run = saved["per_seed"]["0"]
    assert list(run["attribution_seconds"]) == list(kh.METHOD_LABELS)
    assert run["agreement"]["families"] == {f: list(m) for f, m in kh.METHOD_FAMILIES.items()}
    assert run["rankings"]["zero"]["signed"][0] in {r["ordering"] for r in rows0} | set(kh.control_maps(
        torch.zeros(1, 784)))
    with pytest.raises(SystemExit):
        bench.main(["--seeds", "0"])


def test_cuda_graph_benchmark_on_cpu_runs_the_eager_mode(tmp_path, data):
    """On a CPU the benchmark trains once (eager; no graphs mode without CUDA) and reports honest numbers:
    the validation FVU and accuracy it prints are the ones the same training gives through ``train_models``."""
    bench = _load("cuda_graph_training")
    out = tmp_path / "g.json"
    result = bench.main(["--epochs", "1", "1", "--train-subset", "1500", "--device", "cpu", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert list(saved["modes"]) == ["eager"] and "graphs_vs_eager" not in saved
    row = saved["modes"]["eager"]
    assert row["cuda_graphs"] is False and saved["epochs"] == [1, 1]
    assert row["ae_seconds"] > 0 and row["clf_seconds"] > 0
    _, _, history = kh.train_models(kh.Config(train_subset=1500, ae_epochs=1, clf_epochs=1), data, torch.device("cpu"))
    assert row["val_fvu"] == history["ae"]["val_fvu"][-1] and row["val_accuracy"] == history["clf"]["val_acc"][-1]
    steps = -(-1500 // 256)  # train_subset images per epoch, in batches of 256
    assert row["ae_ms_per_step"] == pytest.approx(1e3 * row["ae_seconds"] / steps)
    assert result["modes"] == saved["modes"]


def test_bench_figures_times_every_figure_the_notebook_draws():
    import re

    notebook = json.loads((ROOT / "fashion_mnist_interpretability.ipynb").read_text())
    drawn = {name for cell in notebook["cells"] if cell["cell_type"] == "code"
             for name in re.findall(r"kh\.((?:plot|render)_\w+)", "".join(cell["source"]))}
    timed = set(re.findall(r"kh_mod\.((?:plot|render)_\w+)", (ROOT / "benchmarks" / "bench_figures.py").read_text()))
    drawn.discard("render_figures")  # draws plot functions the notebook names, each timed on its own here
    assert drawn and drawn == timed, f"notebook only: {drawn - timed}; benchmark only: {timed - drawn}"
    assert all(callable(getattr(kh, name, None)) for name in timed)


def test_bench_validation_times_the_suite_and_the_previous_content(tmp_path, data):
    """Two images per class of a one-epoch default-size model; the reference is this commit's own code."""
    bench = _load("bench_validation")
    cfg = kh.Config(ae_epochs=1, clf_epochs=1, train_subset=600)
    kh.load_or_train(cfg, data, torch.device("cpu"), tmp_path)
    out = tmp_path / "times.json"
    result = bench.main(["--checkpoint", str(tmp_path / cfg.checkpoint_name()), "--samples-per-class", "2",
                         "--repeats", "1", "--reference", "HEAD", "--json", str(out)])
    assert 1 <= result["n_images"] <= 20 and json.loads(out.read_text()) == result  # classes may fall short
    assert set(result["suite"]) == {"cross_method", "faithfulness", "object_focus", "completeness", "randomization",
                                    "unit_deletion", "total"}
    assert set(result["previous_content"]) == {"deletion_insertion", "object_focus", "completeness",
                                               "randomization", "total"}
    for part in ("suite", "previous_content"):
        times = result[part]
        assert times["total"] == pytest.approx(sum(v for k, v in times.items() if k != "total"))
        assert times["faithfulness" if part == "suite" else "deletion_insertion"] > 0
    assert result["reference"]["revision"] == "HEAD" and result["reference"]["total"] > 0
    assert result["ratio"] == pytest.approx(result["reference"]["total"] / result["previous_content"]["total"])
    with pytest.raises(ValueError, match="repeats"):
        bench.main(["--repeats", "0"])


def test_recipe_checks_only_replaces_its_rows_in_check_order(tmp_path):
    recipe_checks = _load("recipe_checks")
    choices = [check[0] for check in recipe_checks.CHECKS.values()]
    path = tmp_path / "recipe.json"
    assert recipe_checks.merged(str(path), [{"choice": choices[3], "kept": True}]) == [{"choice": choices[3],
                                                                                       "kept": True}]
    path.write_text(json.dumps({"rows": [{"choice": c, "kept": True} for c in (choices[4], choices[0], "retired")]}))
    rows = recipe_checks.merged(str(path), [{"choice": choices[4], "kept": False}, {"choice": choices[2], "kept": 1}])
    assert rows == [{"choice": choices[0], "kept": True}, {"choice": choices[2], "kept": 1},
                    {"choice": choices[4], "kept": False}, {"choice": "retired", "kept": True}]


PRE_SPLIT_REVISION = "07ecf4b"  # the last commit whose ksae_helpers.py was all the code (no ksae package)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "commit.gpgsign=false", *args], cwd=repo, check=True, capture_output=True,
                          text=True).stdout.strip()


def _package_modules() -> dict:
    return {name: module for name, module in sys.modules.items() if name == "ksae" or name.startswith("ksae.")}


@pytest.fixture
def planted_repo(tmp_path):
    """A git repository of two commits: a copy of the current facade, ``ksae`` package and templates; then the
    same with ``Config.k``'s default, a module constant and the template changed (the planted difference)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy2(ROOT / "ksae_helpers.py", repo / "ksae_helpers.py")
    shutil.copytree(ROOT / "ksae", repo / "ksae", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "templates", repo / "templates")
    _git(repo, "init", "-q")
    _git(repo, "config", "user.name", "Test")
    _git(repo, "config", "user.email", "test@example.com")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "current code")
    first = _git(repo, "rev-parse", "HEAD")
    planted_k = kh.Config().k + 3
    config = repo / "ksae" / "config.py"
    text, n = re.subn(r"^(    k: int = )\d+", rf"\g<1>{planted_k}", config.read_text(), count=1, flags=re.M)
    assert n == 1, "Config.k's default line moved: update this test"
    config.write_text(text + "\nPLANTED_CONSTANT = 'second'\n")
    template = repo / "templates" / "unit_browser.html"
    template.write_text(template.read_text() + "<!-- planted -->\n")
    _git(repo, "commit", "-q", "-a", "-m", "planted difference")
    return repo, first, _git(repo, "rev-parse", "HEAD"), planted_k


def test_load_reference_imports_the_revisions_own_package(planted_repo):
    """Two revisions of another repository load their own ``ksae`` package (the planted default, constant and
    template differ), and the working tree's ``ksae`` modules are the same objects afterwards."""
    bench_figures = _load("bench_figures")
    repo, first_rev, second_rev, planted_k = planted_repo
    k, before = kh.Config().k, _package_modules()
    first = bench_figures.load_reference(first_rev, root=repo)
    second = bench_figures.load_reference(second_rev, root=repo)
    assert first.Config().k == k and second.Config().k == planted_k
    config_of = {ref: sys.modules[ref.Config.__module__] for ref in (first, second)}
    assert not hasattr(config_of[first], "PLANTED_CONSTANT") and config_of[second].PLANTED_CONSTANT == "second"
    assert "<!-- planted -->" not in first.UNIT_BROWSER_TEMPLATE.read_text()
    assert "<!-- planted -->" in second.UNIT_BROWSER_TEMPLATE.read_text()
    assert Path(first.__file__).parent != Path(second.__file__).parent  # each revision its own tree
    for ref in (first, second):
        tree = Path(ref.__file__).resolve().parent
        assert not tree.is_relative_to(ROOT)
        assert Path(config_of[ref].__file__).resolve() == tree / "ksae" / "config.py"
        assert ref.UNIT_BROWSER_TEMPLATE.resolve() == tree / "templates" / "unit_browser.html"
        assert ref.Config is not kh.Config and config_of[ref] is not ksae.config
        assert pickle.loads(pickle.dumps(ref.plot_k_sweep)) is ref.plot_k_sweep  # as forked figure workers see it
    assert kh.Config().k == k and kh.Config is ksae.config.Config
    assert sys.modules["ksae"] is ksae and sys.modules["ksae.config"] is ksae.config
    after = _package_modules()
    assert after.keys() == before.keys() and all(after[name] is before[name] for name in before)


def test_load_reference_of_the_pre_split_revision_is_its_own_single_file():
    """``ksae_helpers.py`` as of the commit before the split, read from this repository's history: one file,
    not in the working tree, its classes its own."""
    if subprocess.run(["git", "cat-file", "-e", f"{PRE_SPLIT_REVISION}^{{commit}}"], cwd=ROOT,
                      capture_output=True).returncode:
        pytest.skip(f"revision {PRE_SPLIT_REVISION} is not in this clone's history (a shallow clone?)")
    before = _package_modules()
    reference = _load("bench_figures").load_reference(PRE_SPLIT_REVISION)
    path = Path(reference.__file__).resolve()
    assert path.name == "ksae_helpers.py" and not path.is_relative_to(ROOT)
    assert Path(inspect.getfile(reference.Config)).resolve() == path and reference.Config is not kh.Config
    assert Path(inspect.getfile(reference.plot_completeness)).resolve() == path
    assert reference.UNIT_BROWSER_TEMPLATE.resolve() == path.parent / "templates" / "unit_browser.html"
    assert reference.UNIT_BROWSER_TEMPLATE.is_file()
    after = _package_modules()
    assert after.keys() == before.keys() and all(after[name] is before[name] for name in before)


def test_controls_tiny_run_writes_every_representation_and_refuses_mismatches(tmp_path):
    """CI's tiny controls run: one row per representation, the real models (a rerun loads the same cached models),
    and a ValueError for an unknown name or a cached control trained with another recipe."""
    controls = _load("controls")
    out, ckpt = tmp_path / "controls.json", tmp_path / "ckpt"
    args = ["--tiny", "--device", "cpu", "--ckpt-dir", str(ckpt), "--out", str(out)]
    result = controls.main(args)
    saved = json.loads(out.read_text())
    assert list(saved["models"]) == list(kh.REPRESENTATIONS) and saved["models"] == result["models"]
    rows, k = saved["models"], saved["config"]["k"]
    assert rows["sae"]["mean_l0"] <= k and rows["pca"]["mean_l0"] == k and rows["pixels"]["fvu"] is None
    assert rows["dense"]["d_code"] == saved["config"]["d_hidden"] and rows["dense"]["mean_l0"] > k
    assert rows["shuffled"]["fvu"] == rows["sae"]["fvu"]  # the SAE's own code
    assert rows["untrained"]["fvu"] > rows["sae"]["fvu"]  # the untrained dictionary reconstructs worse
    assert set(saved["claims"]) == {"pure_share", "lowers_share", "agreement", "deletion_gap"}
    assert all(isinstance(c["held"], bool) for c in saved["claims"].values())
    assert saved["images"]["n_images"] == sum(saved["images"]["per_class"].values()) > 0
    stability, cfg = saved["stability"], kh.Config(**controls.TINY)
    assert stability["reference"] == 0 and stability["seeds"] == [1, 2] and len(stability["min_cosine"]) == cfg.d_hidden
    atoms = kh.seed_dictionaries(cfg, None, torch.device("cpu"), [0, 1, 2], ckpt)  # the seeds' own checkpoints
    for seed in (1, 2):
        match, cosine = kh.match_atoms(atoms[0], atoms[seed])
        assert stability["matched"][str(seed)] == match.tolist()
        assert stability["cosine"][str(seed)] == pytest.approx(cosine.tolist(), abs=1e-12)
    assert kh.stability_for_config(out, cfg) == stability
    assert kh.stability_for_config(out, kh.Config(**{**controls.TINY, "ae_epochs": 3})) is None  # another model
    again = controls.main(args)  # every model cached: the same rows
    assert again["models"] == json.loads(json.dumps(result["models"]))
    with pytest.raises(ValueError, match=r"unknown \['sparse'\]"):
        controls.main(args + ["--representations", "pca", "sparse"])
    cfg = kh.Config(**controls.TINY)
    path = ckpt / f"control_pca_{cfg.checkpoint_name()}"
    payload = torch.load(path, weights_only=True)
    payload["config"]["lr"] = 0.5
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"lr: expected 0\.005, got 0\.5"):
        controls.main(args)


def test_variants_tiny_run_measures_every_part_and_a_rerun_only_loads(variants_tiny):
    """CI's tiny variants study: every kind at every target on the frontier (top-k's L0 is its k), the recurrence
    rows and their controls, the planted dictionary per coherence; a rerun trains nothing and gives the same."""
    result, ckpt, out, module = variants_tiny
    targets = [int(t) for t in module.TINY_TARGETS]
    assert result["targets"] == targets and result["stability_target"] == 4
    for kind in result["kinds"]:
        assert list(result["frontier"][kind]) == [str(t) for t in targets]
        assert "accuracy" in result["frontier"][kind]["4"] and "accuracy" not in result["frontier"][kind]["2"]
        for t in targets:
            row = result["frontier"][kind][str(t)]
            assert 0 < row["fvu"] < 1 and row["fvu_ci95"][0] <= row["fvu"] <= row["fvu_ci95"][1]
            assert 0 <= row["dead_units"] <= row["d_code"] and 0 <= row["dense_units"] <= row["d_code"]
    for t in targets:  # top-k's L0 is k (less where ReLU zeroes a kept unit)
        assert 0.99 * t <= result["frontier"]["topk"][str(t)]["test_l0"] <= t
    assert {"topk", "topk_L0_2", "topk_3x_epochs"} <= set(result["stability"])
    long = result["stability"]["topk_3x_epochs"]
    assert long["ae_epochs"] == 3 * module.TINY["ae_epochs"] and long["target"] == 4
    for st in result["stability"].values():
        stats = st["trained"]["statistics"]
        assert len(stats["shared"]["per_reference"]) == 3 and set(st["controls"]) == {"untrained", "random_images"}
        assert sum(st["trained"]["histograms"]["decoder"]) == result["config"]["d_hidden"]
        assert st["controls"]["untrained"]["statistics"]["median_decoder"]["value"] < stats["median_decoder"]["value"]
    assert [r["seed"] for r in result["by_seed"]["topk"]] == [0, 1, 2] and "accuracy" in result["by_seed"]["topk"][2]
    assert set(result["answer"]) == {"topk_L0_2", "topk_3x_epochs"} | (set(result["kinds"]) - {"topk"})
    planted = result["planted"]
    assert list(planted) == list(kh.PLANTED_COHERENCES)
    worst = [planted[c]["generator"]["max_abs_cosine"] for c in planted]
    assert worst == sorted(worst)
    for entry in planted.values():
        for row in entry["kinds"].values():
            assert 0 < row["recovery"]["mcc"] <= 1 and row["recovery"]["score"] == pytest.approx(
                row["recovery"]["mcc"] - entry["baseline_mcc"])
    assert result["models"]["trained_now"] == result["models"]["models"] > 0
    again = module.main(["--tiny", "--device", "cpu", "--ckpt-dir", str(ckpt), "--out", str(out.with_name("b.json"))])
    assert again["models"]["trained_now"] == 0 and again["models"]["models"] == result["models"]["models"]
    for key in ("frontier", "stability", "answer", "planted", "anchors", "calibration"):
        assert json.loads(json.dumps(again[key])) == result[key], key
    text = kh.variants_markdown(result)
    assert "**Against top-k**" in text and "A planted dictionary" in text
    assert variants_report.readme_bullet(result).startswith("- **Which sparse autoencoder?**")
    assert variants_report.readme_bullet({"variants": result}) == variants_report.readme_bullet(result)


def test_shortcut_tiny_run_scores_what_its_gates_certify_and_reruns_from_the_cache(shortcut_tiny):
    """CI's tiny planted-shortcut run: a scored variant has every method of METHOD_LABELS scored for the sparse-code
    pipeline and all but decoder-weighted for the pixel classifier, a failed gate scores nothing; a rerun with
    --cached-only trains nothing and gives the same numbers; the pages are written, the screenshot (with a browser)
    shows the marker unit removed."""
    result, folder = shortcut_tiny["result"], shortcut_tiny["folder"]
    saved = json.loads((folder / "shortcut.json").read_text())
    assert saved["per_seed"] == json.loads(json.dumps(result["per_seed"]))
    assert saved["markers"]["M"]["above_threshold_share"] == pytest.approx(0.0125)
    for v in kh.SHORTCUT_VARIANTS:
        run = saved["per_seed"][v]["0"]
        gate = run["gate"]
        assert gate["passed"] == (gate["value"] >= gate["threshold"]) and run["scored"] == gate["passed"]
        assert saved["summary"][v]["gates"] == {"0": gate["passed"]}
        if not gate["passed"]:
            assert "localisation" not in run and "units" not in run
            continue
        loc = run["localisation"]
        assert list(loc["models"]["shortcut"]) == list(kh.METHOD_LABELS)
        assert list(loc["models"]["pixel"]) == [m for m in kh.METHOD_LABELS if m != "decoder"]
        assert loc["n_images"] == 12 and loc["chance"]["M"] == pytest.approx(16 / 784)
        removal = run["units"]["removal"]
        assert set(removal["scorers"]) == {"contribution", "contribution_vs_clean", "activation"}
        assert all(removal["random"][n]["ratio"]["n"] <= 8 for n in ("1", "2", "5", "10"))
        assert ("shift" in run["units"]) == (v == "biased")
    files = sorted(p.name for p in (folder / "ckpt").iterdir())
    again = shortcut_tiny["module"].main(shortcut_tiny["args"][:-4] + ["--cached-only", "--out",
                                                                        str(folder / "again.json")])
    assert sorted(p.name for p in (folder / "ckpt").iterdir()) == files  # nothing trained
    def timeless(d):  # the same numbers but the run's own timings
        return {k: timeless(v) for k, v in d.items() if k != "seconds"} if isinstance(d, dict) else d

    assert timeless(json.loads(json.dumps(again["per_seed"]))) == timeless(saved["per_seed"])
    pages = folder / "pages"
    assert (pages / kh.EXPLORER_PAGE).stat().st_size > 0 and (pages / kh.UNIT_BROWSER_PAGE).stat().st_size > 0
    shot = saved["pages"].get("screenshot")
    if "--screenshot" in shortcut_tiny["args"] and isinstance(shot, dict):
        assert shot["button"] == "undo" and shot["unit"] == saved["per_seed"]["certified"]["0"]["units"][
            "recovery"]["M"]["closest_unit"]
        assert shot["after"]["shirt_probability"] < shot["before"]["probability"]  # removing M's unit lowers Shirt
        assert (folder / "shortcut_explorer.png").stat().st_size > 0


def test_shortcut_classifier_epochs_are_chosen_by_the_stated_rule_on_validation(shortcut_tiny, tmp_path):
    """The budget's classifier epochs: the fewest candidates whose SAE and pixel heads stay within the default heads'
    seed spread on the validation split; those heads are the biased variant's twins of the run (cached)."""
    module = shortcut_tiny["module"]
    cfg = kh.Config(**{**module.TINY, "clf_epochs": 4})
    data = kh.load_fashion_mnist(download=False, verbose=False)
    torch.set_num_threads(1)
    got = module.choose_clf_epochs(cfg, data, torch.device("cpu"), tmp_path, True, candidates=(1, 2))
    va, tol = got["validation_accuracy"], got["tolerance"]
    assert tol == pytest.approx(max(got["default_seeds_validation_accuracy"].values())
                                - min(got["default_seeds_validation_accuracy"].values()))
    ok = [e for e in (1, 2) if all(abs(va[str(e)][n] - va["4"][n]) <= tol for n in ("sae", "pixels"))]
    assert got["chosen"] == (min(ok) if ok else 4)
    twins = sorted(p.name for p in tmp_path.glob("shortcut_twin_clean*.pt"))  # epochs 1 and 2 (4: the default pair)
    assert len(twins) == 2 and "_clf1_" in twins[0] and "_clf2_" in twins[1]


def test_perturbation_benchmark_on_a_tiny_model(tmp_path):
    """Every method timed, the perturbation family against Captum (the deterministic ones equal it), the shortcut
    against the forward, and the sampling error falling with the sample count."""
    bench = _load("bench_perturbation")
    out = tmp_path / "p.json"
    bench.main(["--epochs", "1", "1", "--train-subset", "1000", "--images", "10", "--captum-images", "1",
                "--convergence-images", "1", "--ckpt-dir", str(tmp_path / "ckpt"), "--json", str(out)])
    saved = json.loads(out.read_text())
    assert list(saved["methods"]) == list(kh.METHOD_LABELS) and all(r["ms_per_image"] > 0
                                                                   for r in saved["methods"].values())
    for m in ("occlusion", "feature_ablation"):
        assert saved["methods"][m]["rel_diff_to_captum"] < 1e-5  # float32, no sampling
    assert all(saved["methods"][m]["shortcut_max_rel_diff"] < 1e-3  # float32 rounding (LIME's fit amplifies it)
               for m in kh.METHOD_FAMILIES["perturbation"])
    lime = [r["rel_error_mean"] for r in saved["sampling_error"] if r["method"] == "LIME"]
    assert lime[-1] < lime[0] and sum(r["default"] for r in saved["sampling_error"]) == 3


def test_variant_training_times_every_kind_interleaved_with_the_librarys_loop(tmp_path, data):
    """CI's tiny run: every kind trained one epoch on 600 images, epochs interleaved; each row holds its time and
    its ratio to top-k; the top-k it trains is train_autoencoder's, bit for bit; a second run reads the cache."""
    bench = _load("variant_training")
    args = ["--epochs", "2", "--train-subset", "600", "--device", "cpu", "--ckpt-dir", str(tmp_path)]
    out = bench.main(args + ["--json", str(tmp_path / "v.json")])
    rows = out["rows"]
    assert [r["sae_kind"] for r in rows] == list(kh.SAE_KINDS) and out["all_timed_in_one_run"]
    assert json.loads((tmp_path / "v.json").read_text())["rows"] == json.loads(json.dumps(rows))
    for r in rows:
        assert r["seconds_per_epoch"] == pytest.approx((r["first_epoch_seconds"] + r["last_epoch_seconds"]) / 2)
        assert r["seconds_per_epoch"] > 0 and 0 < r["val_fvu"] < 2
        assert r["time_ratio_vs_topk"] == pytest.approx(r["seconds_per_epoch"] / rows[0]["seconds_per_epoch"])
        assert r["within_bound"] == (r["time_ratio_vs_topk"] <= bench.TIME_BOUND)
    assert rows[0]["val_mean_l0"] == 50 and rows[0]["time_ratio_vs_topk"] == 1
    cfg = kh.Config(ae_epochs=2, train_subset=600)
    reference, _ = kh.train_autoencoder_on_split(cfg, data, torch.device("cpu"))
    cached = torch.load(tmp_path / f"variant_ae_{cfg.checkpoint_name()}", weights_only=True)["sae"]
    assert all(torch.equal(cached[k], v) for k, v in reference.state_dict().items())
    again = bench.main(args)
    assert not again["all_timed_in_one_run"] and [r["seconds"] for r in again["rows"]] == [r["seconds"] for r in rows]
