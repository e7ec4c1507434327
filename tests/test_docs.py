"""The committed docs are what ``python -m ksae.docs`` writes, and what it writes comes from the committed JSON.

``docs/results.md``, ``docs/performance.md`` and README's generated blocks hold no hand-typed number: a test here
fails when a committed doc differs from the generator's output (run ``python -m ksae.docs`` and commit), and the
other tests plant a change in a copy of each input file and check that the output follows it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ksae import docs

ROOT = Path(__file__).resolve().parent.parent
GENERATED = (docs.RESULTS_DOC, docs.PERFORMANCE_DOC, docs.README)


@pytest.fixture(scope="module")
def committed() -> dict[str, str]:
    return docs.render(ROOT)


@pytest.mark.parametrize("path", GENERATED)
def test_committed_docs_are_what_the_generator_writes(committed, path):
    assert (ROOT / path).read_text() == committed[path], (
        f"{path} differs from what `python -m ksae.docs` writes: run it from the repository root and commit")


def test_readme_block_is_generated_and_readme_stays_short(committed):
    readme = committed[docs.README]
    begin, end = docs.BLOCK_BEGIN.format(name="findings"), docs.BLOCK_END.format(name="findings")
    assert readme.index(begin) < readme.index(end)
    assert len(readme.splitlines()) <= 180


@pytest.fixture
def repo(tmp_path) -> Path:
    """A copy of what the generator reads: README.md and results/."""
    shutil.copytree(ROOT / docs.RESULTS_DIR, tmp_path / docs.RESULTS_DIR)
    shutil.copy(ROOT / docs.README, tmp_path / docs.README)
    return tmp_path


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _fail_one_seed(d):  # integrated gradients (signed) fails the zero-substrate deletion test in seed 1 only
    for row in d["per_seed"]["1"]["rows"]:
        if (row["ordering"], row["test"]) == ("integrated/signed", "faithful_zero"):
            row["passes"] = False


PLANTED = [  # (file under results/, how it is changed, generated file, text that must appear there)
    ("summary.json", lambda d: d["classifier"].update(test_accuracy=0.1234), docs.README, "test accuracy 12.34 %"),
    ("summary.json", lambda d: d["autoencoder"].update(fvu=0.4321), docs.RESULTS_DOC, "| Test FVU | 0.4321 |"),
    ("summary.json", lambda d: d["timings_s"].update(validation=432.1), docs.PERFORMANCE_DOC,
     "| validation | 432.1 s |"),
    ("k_sweep.json", lambda d: d["rows"][0].update(fvu=0.9876), docs.README, "test FVU 0.9876 →"),
    ("recipe_checks.json", lambda d: d["rows"][0]["without"].update(val_fvu=0.6543), docs.RESULTS_DOC, "FVU 0.6543"),
    ("verdicts_across_seeds.json", lambda d: d["per_seed"]["1"].update(test_accuracy=0.5), docs.README,
     "test accuracy 50.00–"),
    ("verdicts_across_seeds.json", _fail_one_seed, docs.README,
     "depends on the seed on zero: Integrated gradients (signed)."),
    ("fvu_55k_vs_60k.json", lambda d: d["rows"][3].update(fvu=0.0111), docs.RESULTS_DOC,
     "| 50 | 0 | 60000 | — | 0.0111 |"),
    ("controls.json", lambda d: d["models"]["pca"].update(test_accuracy=0.4321), docs.RESULTS_DOC,
     "| PCA (k components) | 43.21 % |"),
    ("controls.json", lambda d: d["claims"]["agreement"].update(held=True), docs.README,
     "logit; Pearson correlation of unit contribution and ablation drop; not held"),
    ("device_runs/h100_cuda_graph_training.json", lambda d: d["modes"]["graphs"].update(ae_seconds=123.4),
     docs.PERFORMANCE_DOC, "| graphs | True | 123.4 |"),
    ("device_runs/h100_summary_cached.json", lambda d: d["timings_s"].update(units=77.7), docs.PERFORMANCE_DOC,
     "77.7 s"),
]


@pytest.mark.parametrize("file, edit, doc, text", PLANTED, ids=[f"{p[0]}-{i}" for i, p in enumerate(PLANTED)])
def test_a_planted_change_in_the_json_changes_the_output(repo, committed, file, edit, doc, text):
    _edit_json(repo / docs.RESULTS_DIR / file, edit)
    written = docs.render(repo)
    assert text not in committed[doc]
    assert text in written[doc]


def test_verdicts_that_do_not_hold_in_every_seed_are_not_stated_as_holding(repo, committed):
    _edit_json(repo / docs.RESULTS_DIR / "verdicts_across_seeds.json", _fail_one_seed)
    holds = docs.verdict_groups(docs.seed_rows(docs.load_inputs(repo / docs.RESULTS_DIR))[0])["holds"]
    beats_random = [keys for (family, _), keys in holds.items() if family == "faithful_"]
    assert beats_random and all("integrated/signed" not in keys for keys in beats_random)


def test_seeds_of_another_configuration_are_not_used(repo):
    _edit_json(repo / docs.RESULTS_DIR / "verdicts_across_seeds.json", lambda d: d["config"].update(k=20))
    assert "the default run only" in docs.render(repo)[docs.README]


def test_text_files_and_new_device_runs_are_read(repo):
    runs = repo / docs.RESULTS_DIR / docs.DEVICE_RUNS
    log = runs / "h100_phases.txt"
    log.write_text(log.read_text().replace("scratch  rc=0  25.6 s", "scratch  rc=0  98.7 s"))
    (runs / "planted_run.jsonl").write_text(json.dumps({"variant": {"ae_epochs": 7}, "fvu": 0.3141}) + "\n")
    performance = docs.render(repo)[docs.PERFORMANCE_DOC]
    assert "98.7" in performance and "planted_run.jsonl" in performance and "0.3141" in performance


def test_check_names_the_stale_file_and_writing_fixes_it(repo, capsys):
    assert docs.main(["--root", str(repo)]) == 0  # writes docs/ into the copy
    assert docs.main(["--root", str(repo), "--check"]) == 0
    _edit_json(repo / docs.RESULTS_DIR / "k_sweep.json", lambda d: d["rows"][-1].update(dead_units=99))
    capsys.readouterr()
    assert docs.main(["--root", str(repo), "--check"]) == 1
    err = capsys.readouterr().err
    assert docs.RESULTS_DOC in err and docs.README in err and docs.PERFORMANCE_DOC not in err
    assert docs.main(["--root", str(repo)]) == 0
    assert docs.main(["--root", str(repo), "--check"]) == 0


def test_inputs_from_another_folder(repo, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("inputs")
    shutil.move(str(repo / docs.RESULTS_DIR), str(elsewhere / "results"))
    assert docs.main(["--root", str(repo), "--check"]) == 2  # no results/ under the root
    assert docs.main(["--root", str(repo), "--results", str(elsewhere / "results")]) == 0
    assert (repo / docs.RESULTS_DOC).read_text() == docs.render(ROOT)[docs.RESULTS_DOC]


def test_readme_without_markers_is_an_error(repo):
    readme = repo / docs.README
    readme.write_text(readme.read_text().replace(docs.BLOCK_END.format(name="findings"), ""))
    with pytest.raises(ValueError, match="markers"):
        docs.render(repo)
    assert docs.main(["--root", str(repo), "--check"]) == 2
