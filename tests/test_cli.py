"""The command line: train the autoencoder from the CLI, run a registered experiment, list."""

import json
import os
import subprocess
import sys

from sokit import experiments


def sokit(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "sokit", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_cli_trains_the_autoencoder_and_writes_results(tmp_path):
    out = tmp_path / "run.json"
    p = sokit("train", "--updates", "4", "--eval-subset", "300", "--n-evals", "3", "--device", "cpu",
              "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert "train mse" in p.stderr and "100%" in p.stderr  # the progress bar
    assert f"wrote {out}" in p.stdout
    record = json.loads(out.read_text())
    res = record["results"]
    assert res["updates"][-1] == 4 and len(res["minibatch_loss"]) == 4 and not res["diverged"]
    assert record["config"]["method"]["kwargs"]["lr"] == 0.1 and record["provenance"]["torch_version"]


def test_cli_trains_with_any_registered_optimizer(tmp_path):
    out = tmp_path / "kfac.json"
    p = sokit("train", "--optimizer", "kfac", "--lr", "0.001", "--option", "amortization=2",
              "--option", "curvature=gauss_newton", "--updates", "3", "--batch-size", "20",
              "--eval-subset", "100", "--n-evals", "2", "--device", "cpu", "--no-progress", "--out", str(out))
    assert p.returncode == 0, p.stderr
    spec = json.loads(out.read_text())["config"]["method"]
    assert spec == {"optimizer": "kfac", "norm": None, "prescale": 15.0,
                    "kwargs": {"lr": 0.001, "amortization": 2, "curvature": "gauss_newton", "loss": "mse"}}


def test_cli_run_stores_a_registered_experiment(tmp_path):
    p = sokit("run", "sgd_autoencoder", "--profile", "smoke", env={"SOKIT_RESULTS": str(tmp_path)})
    assert p.returncode == 0, p.stderr
    assert "training ..." in p.stdout and "stored" in p.stdout
    again = sokit("run", "sgd_autoencoder", "--profile", "smoke", env={"SOKIT_RESULTS": str(tmp_path)})
    assert "training" not in again.stdout and "loaded" in again.stdout
    record = json.loads((tmp_path / "sgd_autoencoder" / "smoke.json").read_text())
    assert record["experiment"] == "sgd_autoencoder" and record["profile"] == "smoke"
    assert record["results"]["updates"][-1] == record["config"]["updates"]
    listing = sokit("list", env={"SOKIT_RESULTS": str(tmp_path)})
    assert "sgd_autoencoder" in listing.stdout and "stored: smoke" in listing.stdout
    assert len(listing.stdout.splitlines()) == len(experiments.registry())  # one line each
    assert "fig6_2" in sokit("run", "--help").stdout


def test_cli_errors_name_the_problem():
    p = sokit("run", "no_such_experiment")
    assert p.returncode == 2 and "known experiments" in p.stderr
    p = sokit("train", "--model", "cifar_mlp", "--dataset", "mnist", "--updates", "1", "--device", "cpu")
    assert p.returncode != 0 and "takes 3072 inputs" in p.stderr


def test_every_flag_has_help_text():
    import argparse

    from sokit.__main__ import parser

    def walk(p, path):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction):
                yield path, action

    seen = list(walk(parser(), "sokit"))
    assert {path for path, _ in seen} >= {"sokit train", "sokit run", "sokit data fetch", "sokit list"}
    missing = [(path, action.dest) for path, action in seen if not action.help]
    assert missing == []
    assert "--rerun" in sokit("run", "--help").stdout and "clears the checkpoints" in sokit("run", "--help").stdout
