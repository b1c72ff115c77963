"""Equal tuning within a figure (issue 12 item 4): the same search budget for every method."""

from __future__ import annotations

import math

import pytest
import torch

from sokit.experiments import fig6, fig6_tuning, get, load_or_run

SEARCHES = {"fig6_search": {**fig6.FIG6_2, **fig6.FIG6_1}, "fig6_3_fashion_search": fig6.FIG6_3}


@pytest.mark.parametrize("name", list(SEARCHES))
def test_every_method_of_a_figure_gets_the_same_budget_and_its_own_knobs(name):
    config = get(name).configs["long"]
    assert list(config["methods"]) == list(SEARCHES[name])
    assert config["updates"] * 10 >= fig6.LONG_UPDATES  # trials at least a tenth of the runs they tune
    budgets = {label: config["trials"] * config["updates"] for label in config["methods"]}
    assert len(set(budgets.values())) == 1  # one budget (trials x updates) for every method
    seeds = {label: fig6_tuning.searcher_seed(config, label) for label in config["methods"]}
    assert len(set(seeds.values())) == len(seeds), "two methods share a searcher seed"
    for label, spec in config["methods"].items():
        dims = set(fig6_tuning.space(config, label).dims)
        own = {"acp": {"eps"}, "nnn": {"eps"}, "kfac": {"damping"}}.get(spec["optimizer"], set())
        if label == "ACP, fixed alpha":
            own |= {"alpha"}
        assert dims == {"lr", "prescale"} | own, label
        assert not own & set(spec["kwargs"]), f"{label}: a searched knob is also fixed in its spec"


def test_trials_too_short_for_the_runs_they_tune_are_refused():
    with pytest.raises(ValueError, match="too short"):
        fig6_tuning.equal_budget("x_search", "autoencoder", "mnist", "autoencoder", fig6.FIG6_1, trials=2,
                                 updates=100, tuned_for=10_000)


def test_equal_budget_search_smoke_runs_and_searches_the_knobs(tmp_path, monkeypatch):
    monkeypatch.setenv("SOKIT_RESULTS", str(tmp_path))
    record = load_or_run("fig6_3_fashion_search", "smoke")
    first = record["results"]["ACP, fixed alpha"]
    assert len(first["history"]) == 2
    assert {"lr", "prescale", "eps", "alpha"} == set(first["history"][0]["config"])
    costs = [t["cost"] for t in first["history"]]
    assert all(c is None or math.isfinite(c) for c in costs)


def test_an_interrupted_search_continues_with_the_methods_not_yet_searched(tmp_path, monkeypatch):
    config = get("fig6_3_fashion_search").configs["smoke"]
    first, second = list(config["methods"])
    calls = []

    def fake(config, label, data):
        calls.append(label)
        if label == second and len(calls) == 2:
            raise KeyboardInterrupt  # stopped while searching the second method
        return {"history": [], "best": None, "best_cost": None, "rejections": 0}

    monkeypatch.setattr(fig6_tuning, "search_method", fake)
    with pytest.raises(KeyboardInterrupt):
        fig6_tuning.run_resumable(config, tmp_path / "work")
    out = fig6_tuning.run_resumable(config, tmp_path / "work")
    assert calls == [first, second, second] and list(out) == [first, second]


def test_a_search_in_parallel_processes_gives_the_sequential_search(tmp_path):
    """Both with one thread per search (two workers share two threads): other thread counts
    round differently, and the costs would differ in their last digits."""
    config = get("fig6_search").configs["smoke"]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        sequential = fig6_tuning.run_resumable(config, tmp_path / "one")
        torch.set_num_threads(2)
        parallel = fig6_tuning.run_resumable(config, tmp_path / "two", jobs=2)
    finally:
        torch.set_num_threads(threads)
    assert list(parallel) == list(config["methods"]) and parallel == sequential
    assert all(len(r["history"]) == 2 for r in parallel.values())
    assert sorted(p.name for p in (tmp_path / "two").glob("*.json")) == sorted(
        p.name for p in (tmp_path / "one").glob("*.json"))  # each method kept as it finished


def test_the_probe_search_draws_other_proposals_for_the_methods_left_behind():
    probe, search = get("fig6_probe_search").configs["long"], get("fig6_search").configs["long"]
    assert list(probe["methods"]) == list(fig6_tuning.BEHIND)
    assert probe["updates"] == search["updates"] and probe["trials"] == 2 * search["trials"]
    for label in fig6_tuning.BEHIND:
        assert probe["methods"][label] == search["methods"][label] and probe["knobs"][label] == search["knobs"][label]
        assert fig6_tuning.searcher_seed(probe, label) != fig6_tuning.searcher_seed(search, label)


@pytest.mark.parametrize("task, name", [("autoencoder", "fig6_search"), ("classifier", "fig6_3_fashion_search")])
def test_the_long_profile_uses_the_best_trials_of_the_stored_equal_budget_search(task, name):
    from sokit.experiments import is_current, load

    record = load(name, "long")
    if not fig6.TUNED[task]:
        assert record is None, f"{name} is stored: copy its best trials into fig6.TUNED[{task!r}]"
        return
    assert is_current(name, "long"), f"fig6.TUNED[{task!r}] needs a current stored {name} (long)"
    for label, best in fig6.TUNED[task].items():
        stored = record["results"][label]["best"]
        assert best == stored, label  # exactly: the best trials can sit on the edge of stability


def test_fig5_1_search_gives_every_method_the_same_budget_a_tenth_of_the_long_run():
    from sokit.experiments import fig5

    config = get("fig5_1_search").configs["long"]
    assert list(config["methods"]) == list(fig5.SEARCHED)
    assert config["updates"] * 10 >= fig5.LONG_UPDATES
    seeds = {label: fig6_tuning.searcher_seed(config, label) for label in config["methods"]}
    assert len(set(seeds.values())) == len(seeds)
    for label in config["methods"]:
        assert set(fig6_tuning.space(config, label).dims) == {"lr", "prescale"}, label


def test_fig5_1_long_uses_the_stored_search_exactly(tmp_path, monkeypatch):
    from sokit.experiments import fig5, is_current, load

    record = load("fig5_1_search", "long")
    if not fig5.TUNED:
        assert record is None, "fig5_1_search is stored: copy its best trials into fig5.TUNED"
        assert "long" not in get("fig5_1").configs
        return
    assert is_current("fig5_1_search", "long")
    assert {label: r["best"] for label, r in record["results"].items()} == fig5.TUNED
    methods = get("fig5_1").configs["long"]["methods"]
    assert methods["SGD at UBP's learning rate"]["kwargs"]["lr"] == fig5.TUNED["UBP (Gauss-Newton)"]["lr"]


def test_fig5_1_prescale_swaps_only_the_prescales_of_the_long_profile():
    """The probe's UBP differs from the long profile's "SGD at UBP's learning rate" by the
    update rule alone, and its SGD from the long profile's SGD by the prescale alone."""
    long = get("fig5_1").configs["long"]
    probe = get("fig5_1_prescale").configs["long"]
    assert {k: v for k, v in probe.items() if k != "methods"} == {k: v for k, v in long.items() if k != "methods"}
    ubp, sgd = probe["methods"]["UBP (Gauss-Newton) at SGD's prescale"], probe["methods"]["SGD at UBP's prescale"]
    control = long["methods"]["SGD at UBP's learning rate"]
    assert (ubp["prescale"], ubp["kwargs"]["lr"]) == (control["prescale"], control["kwargs"]["lr"])
    assert ubp["kwargs"]["hessian"] == long["methods"]["UBP (Gauss-Newton)"]["kwargs"]["hessian"]
    assert sgd["kwargs"] == long["methods"]["SGD"]["kwargs"]
    assert sgd["prescale"] == long["methods"]["UBP (Gauss-Newton)"]["prescale"] != long["methods"]["SGD"]["prescale"]


def test_fig5_1_setback_reruns_the_probes_ubp_arm_with_the_monitor_only():
    """Same config as the probe (but the shorter run and its evaluations), same UBP spec but
    monitor=True: the same trajectory, with the relative corrections kept."""
    probe = get("fig5_1_prescale").configs["long"]
    setback = get("fig5_1_setback").configs["long"]
    other = ("methods", "updates", "n_evals")
    assert {k: v for k, v in setback.items() if k not in other} == {k: v for k, v in probe.items() if k not in other}
    ((label, spec),) = setback["methods"].items()
    want = probe["methods"][label]
    assert spec["kwargs"] == {**want["kwargs"], "monitor": True}
    assert {k: v for k, v in spec.items() if k != "kwargs"} == {k: v for k, v in want.items() if k != "kwargs"}
    assert 1_540 < setback["updates"] < probe["updates"]


def test_fig5_1_search_smoke_runs_ubp_trials(tmp_path, monkeypatch):
    monkeypatch.setenv("SOKIT_RESULTS", str(tmp_path))
    record = load_or_run("fig5_1_search", "smoke")
    assert list(record["results"]) == ["SGD", "UBP (Gauss-Newton)"]
    ubp = record["results"]["UBP (Gauss-Newton)"]["history"]
    assert len(ubp) == 2 and all(t["status"] in ("ok", "diverged") for t in ubp), ubp
