"""The committed docs are what ``python -m ksae.docs`` writes, and what it writes comes from the committed JSON.

``docs/results.md``, ``docs/performance.md`` and README's generated blocks hold no hand-typed number: a test here
fails when a committed doc differs from what the committed results give (run ``python -m ksae.docs`` and commit),
and the other tests plant a change in a copy of each input file and check that the output follows it. A run of the
notebook rewrites ``results/summary.json`` (when, where, how long): the docs still describe the committed results,
so the check stays green (``docs.stale``: against git's HEAD, or without git ignoring what only a run changes).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ksae import docs, findings

ROOT = Path(__file__).resolve().parent.parent
GENERATED = (docs.RESULTS_DOC, docs.PERFORMANCE_DOC, docs.README)


@pytest.fixture(scope="module")
def committed() -> dict[str, str]:
    return docs.render(ROOT)


@pytest.fixture(scope="module")
def stale() -> list[str]:
    return docs.stale(ROOT)


@pytest.mark.parametrize("path", GENERATED)
def test_committed_docs_are_what_the_committed_results_give(stale, path):
    assert path not in stale, (
        f"{path} differs from what `python -m ksae.docs` writes from the committed results: run it from the "
        "repository root and commit")


def _findings(readme: str) -> list[str]:
    begin, end = docs.BLOCK_BEGIN.format(name="findings"), docs.BLOCK_END.format(name="findings")
    assert readme.index(begin) < readme.index(end)
    return readme[readme.index(begin) + len(begin):readme.index(end)].strip().splitlines()


def test_readme_findings_are_short_bullets_with_a_number_and_a_link_each(committed):
    readme, bullets = committed[docs.README], _findings(committed[docs.README])
    assert len(readme.splitlines()) <= 180
    assert 0 < len(bullets) <= findings.README_MAX_BULLETS == 12
    headings = {findings._anchor(h[3:]) for h in committed[docs.RESULTS_DOC].splitlines() if h.startswith("## ")}
    for bullet in bullets:
        assert bullet.startswith("- **") and re.search(r"\d", bullet), bullet
        links = re.findall(r"\]\(([^)]+)\)", bullet)
        assert links, f"no link to a figure or table: {bullet[:60]}"
        for link in links:
            assert (ROOT / link.split("#")[0]).is_file(), link
            assert "#" not in link or link in headings, f"{link}: no such section in {docs.RESULTS_DOC}"


def test_the_registry_leaves_room_for_the_studies_bullets(committed):
    studies = [fn for fn in findings.README_BULLETS if fn.__name__.endswith("_report.readme_bullet")]
    assert len(studies) == 3 and len(findings.README_BULLETS) <= findings.README_MAX_BULLETS
    with pytest.raises(ValueError, match="at most 12 bullets"):
        findings.findings_block({"bullets": 13}, bullets=[lambda d, i=i: f"- {i}" for i in range(13)])


def test_a_study_bullet_is_skipped_while_its_results_are_absent():
    planted = findings._study("no_such_report", "summary")
    assert planted(docs.load_inputs(ROOT / docs.RESULTS_DIR)) is None  # its module is absent
    assert findings._study("findings", "no_such_results")({}) is None  # its results are absent


@pytest.fixture
def repo(tmp_path) -> Path:
    """A copy of what the generator reads: README.md and results/."""
    shutil.copytree(ROOT / docs.RESULTS_DIR, tmp_path / docs.RESULTS_DIR)
    shutil.copy(ROOT / docs.README, tmp_path / docs.README)
    return tmp_path


def _edit_json(path: Path, edit, indent: int | None = None) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=indent))


def _a_run(summary: dict) -> None:
    """What a re-run of the notebook changes in summary.json on the same machine: when, and how long."""
    summary["created"] = "2031-01-01T00:00:00+0000"
    summary["timings_s"] = {phase: 2.5 * s for phase, s in summary["timings_s"].items()}
    for substrate in summary["validation"]["faithfulness"]["substrates"].values():
        substrate["seconds"] += 1.0
    summary["validation"]["seconds"] = {k: s + 1.0 for k, s in summary["validation"]["seconds"].items()}
    summary["figures"]["total"] += 1.0


def _another_machine(summary: dict) -> None:
    """A run elsewhere: its timings, and numbers that differ from the committed ones."""
    _a_run(summary)
    summary["device"] = "another machine"
    summary["classifier"]["test_accuracy"] = 0.5


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                   check=True, capture_output=True)


@pytest.fixture
def written(repo) -> Path:
    """The copy with its docs written: a checkout whose committed docs are fresh (no git)."""
    assert docs.main(["--root", str(repo)]) == 0
    return repo


@pytest.fixture
def git_repo(written) -> Path:
    """The copy as a git repository, docs and results committed."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    _git(written, "init", "-q")
    _git(written, "add", "-A")
    _git(written, "commit", "-q", "-m", "results and docs")
    return written


def test_run_then_test_without_git(written):
    """A copy without git (a tarball, a container): a run rewrites summary.json (when, how long, indented); the
    committed docs are still fresh. A result that changed is not."""
    _edit_json(written / docs.RESULTS_DIR / "summary.json", _a_run, indent=1)
    assert docs.stale(written) == [] and docs.main(["--root", str(written), "--check"]) == 0
    _edit_json(written / docs.RESULTS_DIR / "summary.json", lambda d: d["classifier"].update(test_accuracy=0.5))
    assert {docs.RESULTS_DOC, docs.README} <= set(docs.stale(written))


def test_run_then_test_with_git(git_repo):
    """In a clone, the docs are checked against the committed results: a run on another machine (other numbers)
    leaves them fresh; regenerating them after the run is fresh too."""
    _edit_json(git_repo / docs.RESULTS_DIR / "summary.json", _another_machine, indent=1)
    assert docs.stale(git_repo) == [] and docs.main(["--root", str(git_repo), "--check"]) == 0
    assert docs.main(["--root", str(git_repo)]) == 0 and docs.stale(git_repo) == []


def test_committed_docs_that_disagree_with_committed_results_are_stale(git_repo, capsys):
    _edit_json(git_repo / docs.RESULTS_DIR / "k_sweep.json", lambda d: d["rows"][-1].update(dead_units=99))
    _git(git_repo, "commit", "-q", "-am", "a new k sweep, docs not regenerated")
    assert docs.stale(git_repo) == [docs.RESULTS_DOC, docs.README]
    assert docs.main(["--root", str(git_repo), "--check"]) == 1
    assert docs.README in capsys.readouterr().err
    _edit_json(git_repo / docs.RESULTS_DIR / "summary.json", _a_run)  # a run after it does not hide it
    assert docs.stale(git_repo) == [docs.RESULTS_DOC, docs.README]


def _fail_one_seed(d):  # integrated gradients (signed) fails the zero-substrate deletion test in seed 1 only
    for row in d["per_seed"]["1"]["rows"]:
        if (row["ordering"], row["test"]) == ("integrated/signed", "faithful_zero"):
            row["passes"] = False


PLANTED = [  # (file under results/, how it is changed, generated file, text that must appear there)
    ("summary.json", lambda d: d["classifier"].update(test_accuracy=0.1234), docs.README, "gets 12.34 % of the"),
    ("summary.json", lambda d: d["autoencoder"].update(fvu=0.4321), docs.RESULTS_DOC, "| Test FVU | 0.4321 |"),
    ("summary.json", lambda d: d["timings_s"].update(validation=432.1), docs.PERFORMANCE_DOC,
     "| validation | 432.1 s |"),
    ("k_sweep.json", lambda d: d["rows"][0].update(fvu=0.9876), docs.README, "test FVU 0.9876 →"),
    ("recipe_checks.json", lambda d: d["rows"][0]["without"].update(val_fvu=0.6543), docs.RESULTS_DOC, "FVU 0.6543"),
    ("verdicts_across_seeds.json", lambda d: d["per_seed"]["1"].update(test_accuracy=0.5), docs.README,
     "(50.00–"),
    ("verdicts_across_seeds.json", _fail_one_seed, docs.README,
     "For Integrated gradients (signed): beats the random order on blur, road; depends on the seed on zero."),
    ("verdicts_across_seeds.json", _fail_one_seed, docs.RESULTS_DOC,
     "depends on the seed on zero: Integrated gradients (signed)."),
    ("fvu_55k_vs_60k.json", lambda d: d["rows"][3].update(fvu=0.0111), docs.RESULTS_DOC,
     "| 50 | 0 | 60000 | — | 0.0111 |"),
    ("controls.json", lambda d: d["models"]["pca"].update(test_accuracy=0.4321), docs.RESULTS_DOC,
     "| PCA (k components) | 43.21 % |"),
    ("controls.json", lambda d: d["claims"]["agreement"].update(held=True), docs.README,
     "units), more than in every control"),
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
    written = docs.render(repo)
    assert "the default run only" in written[docs.RESULTS_DOC]
    assert "in the default run (the seeds file has another configuration)" in written[docs.README]


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


def test_a_seeds_file_differing_only_in_another_kinds_knob_is_this_run_s():
    """The seeds file matches the default run when they differ only in a knob the default kind never reads (relu_l1's
    l1_coef); a field the kind reads (k) makes it another configuration."""
    data = docs.load_inputs(ROOT / "results")
    data["seeds"] = json.loads(json.dumps(data["seeds"]))
    data["seeds"]["config"]["l1_coef"] = 0.123
    assert findings.seeds_of_this_run(data) is not None
    data["seeds"]["config"]["k"] = data["summary"]["config"]["k"] + 1
    assert findings.seeds_of_this_run(data) is None
