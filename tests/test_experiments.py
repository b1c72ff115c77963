"""The experiment registry and stored results with provenance."""

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

    exp = experiments.Experiment("toy_test", "a toy", {"smoke": {"x": 1}, "quick": {"x": 2}}, run)
    experiments.register(exp)
    yield exp, calls, tmp_path
    experiments._REGISTRY.pop("toy_test", None)


def test_load_or_run_stores_then_reuses(toy):
    exp, calls, root = toy
    rec = experiments.load_or_run("toy_test")
    assert rec["profile"] == "smoke" and rec["results"] == {"value": 2}
    stored = json.loads((root / "toy_test" / "smoke.json").read_text())
    assert stored == rec
    prov = stored["provenance"]
    for key in ("commit", "sokit_version", "torch_version", "device", "started", "wall_clock_s"):
        assert key in prov
    assert experiments.load_or_run("toy_test") == rec
    assert len(calls) == 1


def test_changed_config_is_rerun(toy):
    exp, calls, root = toy
    experiments.load_or_run("toy_test")
    path = root / "toy_test" / "smoke.json"
    rec = json.loads(path.read_text())
    rec["config"] = {"x": 99}
    path.write_text(json.dumps(rec))
    assert experiments.load_or_run("toy_test")["config"] == {"x": 1}
    assert len(calls) == 2


def test_rerun_env_and_profile_env(toy, monkeypatch):
    exp, calls, root = toy
    experiments.load_or_run("toy_test")
    monkeypatch.setenv("SOKIT_RERUN", "1")
    experiments.load_or_run("toy_test")
    assert len(calls) == 2
    monkeypatch.setenv("SOKIT_PROFILE", "quick")
    monkeypatch.delenv("SOKIT_RERUN")
    assert experiments.load_or_run("toy_test")["results"] == {"value": 4}
    monkeypatch.setenv("SOKIT_PROFILE", "huge")
    with pytest.raises(ValueError, match="not a profile"):
        experiments.load_or_run("toy_test")


def test_unknown_names_and_profiles_are_explained(toy):
    with pytest.raises(KeyError, match="known experiments"):
        experiments.load_or_run("no_such_experiment")
    with pytest.raises(ValueError, match="has no profile 'full'"):
        experiments.load_or_run("toy_test", profile="full")
    with pytest.raises(ValueError, match="unknown profiles"):
        experiments.Experiment("bad", "", {"medium": {}}, lambda c: {})


def test_registry_imports_registry_package():
    exps = experiments.registry()
    assert all(isinstance(e, experiments.Experiment) for e in exps.values())


def test_results_dir_defaults_to_repository(monkeypatch):
    monkeypatch.delenv("SOKIT_RESULTS", raising=False)
    assert experiments.results_dir().name == "results"
    assert (experiments.results_dir().parent / "sokit" / "__init__.py").exists()


def test_three_panel_draws_every_run():
    import matplotlib

    matplotlib.use("Agg")
    from sokit import plotting

    run = {"updates": [1, 10, 100], "seconds": [0.1, 1.0, 10.0], "train_loss": [50.0, 20.0, 10.0],
           "test_loss": [51.0, 22.0, 12.0], "diverged": False}
    diverged = {**run, "diverged": True, "updates": [1, 10], "seconds": [0.1, 1.0],
                "train_loss": [50.0, 80.0], "test_loss": [50.0, 90.0]}
    fig = plotting.three_panel({"a": run, "b": {"results": diverged}}, "title")
    axes = fig.axes
    assert len(axes) == 3 and all(ax.get_xscale() == "log" == ax.get_yscale() for ax in axes)
    assert list(axes[0].lines[0].get_xdata()) == [1, 10, 100]
    assert list(axes[2].lines[0].get_ydata()) == [51.0, 22.0, 12.0]
    assert len(axes[0].lines) == 3  # two curves and the divergence mark
    with pytest.raises(ValueError, match="at least one run"):
        plotting.three_panel({})
    fig = plotting.with_thesis_figure("2nd", {"a": run})
    assert len(fig.axes) == 4


def test_resumable_experiment_gets_its_work_folder_and_jobs_then_it_is_removed(toy):
    exp, calls, root = toy
    seen = []

    def run(config, workdir=None, jobs=1):
        assert workdir.name == "smoke.work"
        workdir.mkdir(parents=True)
        (workdir / "method.pt").write_text("checkpoint")
        seen.append(jobs)
        return {"value": 0}

    experiments.register(experiments.Experiment("toy_test", "a toy", {"smoke": {"x": 1}}, run))
    experiments.run_experiment("toy_test", "smoke", jobs=3)
    assert seen == [3]
    assert (root / "toy_test" / "smoke.json").exists()
    assert not (root / "toy_test" / "smoke.work").exists()


def test_jobs_for_a_one_job_experiment_is_refused(toy):
    with pytest.raises(ValueError, match="runs as one job"):
        experiments.run_experiment("toy_test", "smoke", jobs=2)


def test_pick_profile_prefers_the_largest_stored_matching_profile(toy, monkeypatch):
    exp, calls, root = toy
    assert experiments.pick_profile("toy_test") == "smoke"
    experiments.run_experiment("toy_test", "quick")
    assert experiments.pick_profile("toy_test") == "quick"
    assert experiments.load_or_run("toy_test")["profile"] == "quick"
    path = root / "toy_test" / "quick.json"
    rec = json.loads(path.read_text())
    rec["config"] = {"x": 5}  # a stale result of another configuration is not shown
    path.write_text(json.dumps(rec))
    assert experiments.pick_profile("toy_test") == "smoke"
    monkeypatch.setenv("SOKIT_PROFILE", "quick")
    assert experiments.pick_profile("toy_test") == "quick"
