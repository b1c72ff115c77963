"""Chapter 6 experiments: registry configurations and smoke runs (thesis section 6.5)."""

import math

import pytest

from sokit.experiments import fig6, get, is_current, load, load_or_run, methods, result_path
from sokit.report import tables

FIGURES = ["fig6_1", "fig6_2", "fig6_3", "fig6_3_fashion"]


@pytest.mark.parametrize("name", FIGURES)
def test_profiles_follow_the_thesis_protocol(name):
    exp = get(name)
    assert set(exp.configs) - {"long"} == {"smoke", "quick", "full"}  # long once its search is stored
    if "long" in exp.configs:
        assert exp.configs["long"]["updates"] == fig6.LONG_UPDATES
    for profile, config in exp.configs.items():
        assert config["batch_size"] == 200
        n = fig6.SMOKE_AMORTIZATION if profile == "smoke" else 100
        for spec in config["methods"].values():
            if "amortization" in spec["kwargs"]:
                assert spec["kwargs"]["amortization"] == n
    assert exp.configs["full"]["updates"] == 300_000
    assert exp.configs["full"]["eval_subset"] is None


def test_method_lists_match_the_figures():
    assert list(get("fig6_1").configs["full"]["methods"]) == list(fig6.FIG6_1)
    assert list(get("fig6_2").configs["full"]["methods"]) == list(fig6.FIG6_2)
    for name in ("fig6_3", "fig6_3_fashion"):
        methods = get(name).configs["full"]["methods"]
        assert {"KFAC (Gauss-Newton)", "KFAC (natural gradient)"} <= set(methods)
        assert methods["KFAC (Gauss-Newton)"]["kwargs"]["curvature"] == "gauss_newton"
        assert methods["KFAC (natural gradient)"]["kwargs"]["curvature"] == "fisher"


@pytest.mark.parametrize("name", FIGURES)
def test_every_method_builds_its_optimizer(name):
    config = get(name).configs["full"]
    for label, spec in config["methods"].items():
        model, optimizer = methods.build(config, spec)
        assert hasattr(optimizer, "step") and hasattr(optimizer, "state_dict"), label


def test_unknown_optimizer_and_model_raise():
    with pytest.raises(ValueError, match="unknown optimizer"):
        methods.method("adam", lr=0.1)
    with pytest.raises(ValueError, match="unknown model"):
        methods.build_model({"model": "resnet"}, {"norm": None, "prescale": 1.0})


@pytest.mark.parametrize("name", ["fig6_1", "fig6_2", "fig6_3_fashion"])
def test_smoke_profile_runs_and_learns(name, tmp_path, monkeypatch):
    monkeypatch.setenv("SOKIT_RESULTS", str(tmp_path))
    record = load_or_run(name, "smoke")
    assert result_path(name, "smoke").exists()
    assert record["provenance"]["wall_clock_s"] > 0
    config = get(name).configs["smoke"]
    assert list(record["results"]) == list(config["methods"])
    for label, res in record["results"].items():
        assert not res["diverged"], label
        assert res["updates"][-1] == config["updates"], label
        curves = res["train_loss"] + res["test_loss"] + res["minibatch_loss"]
        assert all(math.isfinite(v) for v in curves), label
        assert res["train_loss"][-1] < res["train_loss"][0], (label, res["train_loss"])


def test_comparison_table_speedup_is_per_update():
    # thesis SGD: 1,589 s / 3e5 updates = 5.3 ms; ours: 1.589 s / 100 updates = 15.9 ms -> 0.33x
    assert tables.speedup(1.589, 100, 1589) == pytest.approx(1 / 3)
    assert tables.speedup(1.0, 0, 1589) is None and tables.speedup(1.0, 10, None) is None
    record = {"experiment": "fig6_1", "profile": "quick", "config": {"updates": 100},
              "provenance": {"device": "cpu", "device_type": "cpu", "cpu_threads": 1, "commit": "abc"},
              "results": {"SGD": {"train_loss": [5.0, 4.0], "test_loss": [6.0, 5.5], "wall_clock_s": 1.589,
                                  "updates": [50, 100], "diverged": False}}}
    table = tables.comparison_table(record)
    assert "| SGD | 4 | 5.5 | 2 | 2.11 | 4.46 | 1,589 | 0.33x |" in table


@pytest.mark.parametrize("task, name", [("autoencoder", "fig6_hparams"),
                                        ("classifier", "fig6_3_fashion_hparams"),
                                        ("autoencoder", "fig6_acp_alpha")])
def test_hparams_are_the_best_trials_of_the_stored_search(task, name):
    record = load(name, "quick")
    assert is_current(name, "quick"), f"no current search stored: python -m sokit run {name} --profile quick"
    alpha_searched = {"ACP, fixed alpha"} if task == "autoencoder" else set()
    labels = set(record["results"]) if name == "fig6_acp_alpha" else set(fig6.HPARAMS[task]) - alpha_searched
    assert labels <= set(record["results"])
    for label in labels:
        res = record["results"][label]
        lr, prescale = fig6.HPARAMS[task][label]
        assert lr == pytest.approx(res["best"]["lr"], rel=5e-3), label
        assert prescale == pytest.approx(res["best"]["prescale"], rel=5e-3), label
        if "alpha" in res["best"]:
            assert fig6.ACP_ALPHA[task] == pytest.approx(res["best"]["alpha"], rel=5e-3), label
        assert res["best_cost"] == min(t["cost"] for t in res["history"] if t["status"] == "ok")


def test_a_run_two_figures_share_is_trained_once(tmp_path, monkeypatch):
    monkeypatch.setenv("SOKIT_RESULTS", str(tmp_path))
    fig6_2 = load_or_run("fig6_2", "smoke")
    trained = []
    real = fig6.run_methods

    def spy(config, workdir=None, jobs=1):
        trained.extend(config["methods"])
        return real(config, workdir, jobs)

    monkeypatch.setattr(fig6, "run_methods", spy)
    fig6_1 = load_or_run("fig6_1", "smoke")
    assert trained == ["mean-only batch norm + SGD", "centered GD"]  # SGD and ACP come from fig6_2
    for label in ("SGD", "ACP, fixed alpha"):
        shared = fig6_1["results"][label]
        assert shared["shared_from"] == "fig6_2/smoke"
        assert shared["train_loss"] == fig6_2["results"][label]["train_loss"]
    assert list(fig6_1["results"]) == list(get("fig6_1").configs["smoke"]["methods"])
