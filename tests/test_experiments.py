"""The experiment registry and stored results with provenance."""

import copy
import dataclasses
import json

import pytest

from sokit import experiments


@pytest.fixture
def toy(tmp_path, monkeypatch):
    monkeypatch.setenv("SOKIT_RESULTS", str(tmp_path))
    monkeypatch.delenv("SOKIT_RERUN", raising=False)
    monkeypatch.delenv("SOKIT_PROFILE", raising=False)
    calls = []

    def run(config):
        calls.append(config)
        return {"value": config["x"] * 2}

    exp = experiments.Experiment("toy_test", "a toy", {"smoke": {"x": 1}, "quick": {"x": 2}}, run,
                                 notes="how x was chosen")
    yield exp, calls, tmp_path


def test_load_or_run_stores_then_reuses(toy):
    exp, calls, root = toy
    rec = experiments.load_or_run(exp)
    assert rec["profile"] == "smoke" and rec["results"] == {"value": 2}
    stored = json.loads((root / "toy_test" / "smoke.json").read_text())
    assert stored == rec
    prov = stored["provenance"]
    for key in ("commit", "sokit_version", "torch_version", "device", "started", "wall_clock_s"):
        assert key in prov
    assert experiments.load_or_run(exp) == rec
    assert len(calls) == 1


def test_changed_config_is_rerun(toy):
    exp, calls, root = toy
    experiments.load_or_run(exp)
    path = root / "toy_test" / "smoke.json"
    rec = json.loads(path.read_text())
    rec["config"] = {"x": 99}
    path.write_text(json.dumps(rec))
    assert experiments.load_or_run(exp)["config"] == {"x": 1}
    assert len(calls) == 2


def test_rerun_env_and_profile_env(toy, monkeypatch):
    exp, calls, root = toy
    experiments.load_or_run(exp)
    monkeypatch.setenv("SOKIT_RERUN", "1")
    experiments.load_or_run(exp)
    assert len(calls) == 2
    monkeypatch.setenv("SOKIT_PROFILE", "quick")
    monkeypatch.delenv("SOKIT_RERUN")
    assert experiments.load_or_run(exp)["results"] == {"value": 4}
    monkeypatch.setenv("SOKIT_PROFILE", "huge")
    with pytest.raises(ValueError, match="not a profile"):
        experiments.load_or_run(exp)


def test_unknown_names_and_profiles_are_explained(toy):
    with pytest.raises(KeyError, match="known experiments"):
        experiments.load_or_run("no_such_experiment")
    with pytest.raises(ValueError, match="has no profile 'full'"):
        experiments.load_or_run(toy[0], profile="full")
    with pytest.raises(ValueError, match="unknown profiles"):
        experiments.Experiment("bad", "", {"medium": {}}, lambda c: {})


def test_the_catalog_lists_every_experiment_once():
    exps = experiments.registry()
    assert list(exps) == [e.name for e in experiments.EXPERIMENTS]
    assert all(isinstance(e, experiments.Experiment) for e in exps.values())


def test_editing_a_note_keeps_a_stored_result_and_changing_a_number_does_not(toy):
    exp, calls, root = toy
    experiments.load_or_run(exp)
    reworded = dataclasses.replace(exp, notes="x was chosen differently, as we now explain")
    assert experiments.is_current(reworded, "smoke")
    assert experiments.load_or_run(reworded)["notes"] == "how x was chosen"  # loaded, not rerun
    assert len(calls) == 1
    changed = dataclasses.replace(exp, configs={**exp.configs, "smoke": {"x": 3}})
    assert not experiments.is_current(changed, "smoke")
    assert experiments.load_or_run(changed)["results"] == {"value": 6}
    assert len(calls) == 2


def test_stored_fig6_result_survives_a_reworded_note_but_not_a_new_learning_rate():
    fig6_2 = experiments.get("fig6_2")
    assert experiments.is_current(fig6_2, "quick"), "results/fig6_2/quick.json should match its config"
    assert experiments.is_current(dataclasses.replace(fig6_2, notes="rewritten"), "quick")
    quick = copy.deepcopy(fig6_2.configs["quick"])
    quick["methods"]["SGD"]["kwargs"]["lr"] *= 2
    assert not experiments.is_current(dataclasses.replace(fig6_2, configs={**fig6_2.configs, "quick": quick}),
                                      "quick")


def test_a_corrupt_result_names_its_file_and_rerun_replaces_it(toy):
    exp, calls, root = toy
    experiments.load_or_run(exp)
    path = root / "toy_test" / "smoke.json"
    path.write_text(path.read_text()[:40])
    with pytest.raises(experiments.StoreError, match=r"smoke\.json is not valid JSON.*--rerun"):
        experiments.load_or_run(exp)
    assert experiments.load_or_run(exp, rerun=True)["results"] == {"value": 2}
    assert experiments.load_or_run(exp)["results"] == {"value": 2}


def test_results_folder_is_checked_writable_before_running(toy, monkeypatch):
    exp, calls, root = toy
    blocker = root / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SOKIT_RESULTS", str(blocker))
    with pytest.raises(experiments.StoreError, match="SOKIT_RESULTS"):
        experiments.load_or_run(exp)
    assert calls == []  # nothing trained before the failure


def test_results_dir_defaults_to_repository(monkeypatch):
    monkeypatch.delenv("SOKIT_RESULTS", raising=False)
    assert experiments.results_dir().name == "results"
    assert (experiments.results_dir().parent / "sokit" / "__init__.py").exists()


def test_resumable_experiment_gets_its_work_folder_and_jobs_then_it_is_removed(toy):
    exp, calls, root = toy
    seen = []

    def run(config, workdir=None, jobs=1):
        assert workdir.name == "smoke.work"
        workdir.mkdir(parents=True)
        (workdir / "method.pt").write_text("checkpoint")
        seen.append(jobs)
        return {"value": 0}

    resumable = experiments.Experiment("toy_test", "a toy", {"smoke": {"x": 1}}, run, resumable=True)
    experiments.run_experiment(resumable, "smoke", jobs=3)
    assert seen == [3]
    assert (root / "toy_test" / "smoke.json").exists()
    assert not (root / "toy_test" / "smoke.work").exists()


def test_jobs_for_a_one_job_experiment_is_refused(toy):
    with pytest.raises(ValueError, match="runs as one job"):
        experiments.run_experiment(toy[0], "smoke", jobs=2)


def test_pick_profile_prefers_the_largest_stored_matching_profile(toy, monkeypatch):
    exp, calls, root = toy
    assert experiments.pick_profile(exp) == "smoke"
    experiments.run_experiment(exp, "quick")
    assert experiments.pick_profile(exp) == "quick"
    assert experiments.load_or_run(exp)["profile"] == "quick"
    path = root / "toy_test" / "quick.json"
    rec = json.loads(path.read_text())
    rec["config"] = {"x": 5}  # a stale result of another configuration is not shown
    path.write_text(json.dumps(rec))
    assert experiments.pick_profile(exp) == "smoke"
    monkeypatch.setenv("SOKIT_PROFILE", "quick")
    assert experiments.pick_profile(exp) == "quick"
