"""sokit.runner: methods trained in worker processes, resumed after an interruption."""

from __future__ import annotations

import json

import pytest
import torch

from sokit import models
from sokit.experiments import runner

#: set by a test to make a method's optimizer die (an interrupted job), in this process only
CRASH: dict[str, int] = {}


class Interrupt(Exception):
    pass


class DiesAt(torch.optim.SGD):
    """SGD that raises at a given update, as a killed process would stop."""

    def __init__(self, params, lr: float, at: int) -> None:
        super().__init__(params, lr=lr)
        self.at, self.done = at, 0

    def step(self, closure=None):
        if self.done == self.at:
            raise Interrupt
        self.done += 1
        return super().step(closure)


def build(config, spec):
    model = models.mlp([784, 8, 784], "sigmoid", "sigmoid", prescale=1.0)
    if spec["label"] in CRASH:
        return model, DiesAt(model.parameters(), spec["lr"], CRASH[spec["label"]])
    return model, torch.optim.SGD(model.parameters(), lr=spec["lr"])


def config(updates: int = 12) -> dict:
    return {"dataset": "mnist", "loss": "mse", "seed": 0, "batch_size": 20, "updates": updates,
            "n_evals": 4, "eval_subset": 100,
            "methods": {name: {"label": name, "lr": lr} for name, lr in (("slow", 0.1), ("fast", 1.0))}}


def test_methods_in_worker_processes_match_one_process():
    one = runner.run_methods(config(), build=build)
    two = runner.run_methods(config(), build=build, jobs=2)
    assert list(two) == ["slow", "fast"]
    for label in one:
        assert one[label]["updates"] == two[label]["updates"]
        torch.testing.assert_close(torch.tensor(two[label]["train_loss"]),
                                   torch.tensor(one[label]["train_loss"]), rtol=1e-5, atol=0)
    assert one["fast"]["train_loss"] != one["slow"]["train_loss"]


def test_an_interrupted_run_resumes_and_equals_an_uninterrupted_one(tmp_path):
    cfg = config(updates=40)
    straight = runner.run_methods(cfg, build=build)
    work = tmp_path / "work"
    CRASH["fast"] = 30
    try:
        with pytest.raises(Interrupt):
            runner.run_methods(cfg, work, build=build)
    finally:
        CRASH.clear()
    assert (work / f"{runner.slug('slow')}.json").exists()  # finished: not trained again
    saved = torch.load(work / f"{runner.slug('fast')}.pt", weights_only=True)
    assert 0 < saved["step"] <= 30
    resumed = runner.run_methods(cfg, work, build=build)
    for label in straight:
        for key in ("updates", "train_loss", "test_loss", "minibatch_loss"):
            assert resumed[label][key] == straight[label][key], (label, key)


def test_a_work_folder_of_another_configuration_is_cleared(tmp_path):
    work = tmp_path / "work"
    runner.prepare_workdir(work, config(12))
    (work / "stale.pt").write_text("x")
    runner.prepare_workdir(work, config(12))
    assert (work / "stale.pt").exists()  # same configuration: kept for resuming
    runner.prepare_workdir(work, config(13))
    assert not (work / "stale.pt").exists()
    assert (work / "config.sha256").read_text().strip() == runner.config_key(config(13))


def test_slugs_are_file_names_and_keep_labels_apart():
    a, b = runner.slug("ACP, fixed alpha"), runner.slug("ACP; fixed alpha")
    assert a != b and all(c.isalnum() or c == "_" for c in a + b)
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        runner.run_methods(config(), build=build, jobs=0)
    json.dumps(config())  # configs stay JSON


def test_each_method_has_a_progress_bar_labelled_with_its_legend_label(capfd, monkeypatch):
    monkeypatch.setenv("SOKIT_PROGRESS", "1")
    runner.run_methods(config(), build=build)
    err = capfd.readouterr().err
    assert "slow (1/2): 100%" in err and "fast (2/2): 100%" in err
    monkeypatch.setenv("SOKIT_PROGRESS", "0")
    runner.run_methods(config(), build=build)
    assert "slow" not in capfd.readouterr().err
    monkeypatch.delenv("SOKIT_PROGRESS")
    assert runner.show_progress() is False  # pytest's stderr is no terminal


def test_the_progress_bar_counts_evaluation_time_so_its_estimate_is_the_time_left():
    from sokit.evaluation import eval_schedule
    from sokit.train import Progress

    updates, per_update, per_eval = 10_000, 1e-3, 0.5  # early evaluations dominate the first minutes
    schedule = eval_schedule(updates, 20, "log")
    bar = Progress(updates, 0, len(schedule), 0, eval_examples=20_000, batch_size=200, desc="ETA test")
    total = updates * per_update + len(schedule) * per_eval
    elapsed = 0.0
    for step in range(1, updates + 1):
        bar.update()
        elapsed += per_update
        if step in schedule:
            elapsed += per_eval
            bar.evaluated(per_eval, per_update, train=1.0, test=1.0)
            # the fraction shown is the fraction of the time spent (exactly, with steady costs)
            assert abs(bar.bar.n / bar.bar.total - elapsed / total) < 1e-9
            if step == schedule[0]:
                assert bar.bar.n / bar.bar.total > 10 * step / updates  # counting updates: far too little
    bar.close()
    assert bar.bar.n == bar.bar.total
