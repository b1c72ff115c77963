"""Faults a tester found, each turned into a test: crafted and corrupt files, a read-only
results folder, concurrent runs, Ctrl-C, provenance over resumes, an installed package."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import sokit
from sokit import checkpoint, experiments, models
from sokit.experiments import runner, store

provenance = importlib.import_module("sokit.experiments.provenance")  # the package exports a function so named

REPO = Path(sokit.__file__).resolve().parent.parent


def sokit_cli(*args, env=None, timeout=600, prefix=()):
    return subprocess.run([*prefix, sys.executable, "-m", "sokit", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


class Payload:
    """Unpickling this runs a shell command (here: it creates ``marker``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def crafted_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"run": {}, "model": Payload(marker)}, path)
    return path


# ----------------------------------------------------------- 1. nothing is unpickled
def test_a_crafted_checkpoint_is_refused_naming_the_file_and_runs_nothing(tmp_path):
    live = crafted_checkpoint(tmp_path / "live.pt", tmp_path / "ran_live")
    torch.load(live, weights_only=False)  # the payload is real: an unsafe load runs it
    assert (tmp_path / "ran_live").exists()

    marker = tmp_path / "ran"
    path = crafted_checkpoint(tmp_path / "crafted.pt", marker)
    with pytest.raises(checkpoint.CheckpointError, match=rf"{path}.*not unpickled, nothing in it ran"):
        checkpoint.load(path, torch.device("cpu"), {})
    model = models.mlp([784, 8, 784], "sigmoid", "sigmoid")
    from sokit import data, train
    mnist = data.load("mnist").subset(100, 100)
    with pytest.raises(checkpoint.CheckpointError, match=str(path)):
        train.train(model, torch.optim.SGD(model.parameters(), lr=0.1), mnist, "mse", 4, batch_size=20,
                    checkpoint=path, progress=False)
    p = sokit_cli("train", "--updates", "4", "--eval-subset", "100", "--device", "cpu", "--no-progress",
                  "--checkpoint", str(path), "--out", str(tmp_path / "out.json"))
    assert p.returncode == 2 and str(path) in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not marker.exists()


def test_tests_and_package_load_checkpoints_with_weights_only():
    for path in [*REPO.glob("sokit/**/*.py"), *REPO.glob("tests/test_runner.py")]:
        text = path.read_text()
        assert "pickle.load" not in text and "weights_only=False" not in text, path


# ------------------------------------------------- 2a. a read-only results folder
def _read_only_prefix() -> tuple[str, ...]:
    """As root, drop the capability that lets root write into a read-only folder."""
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv (util-linux): a read-only folder cannot be simulated")
    return ("setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner")


@pytest.mark.parametrize("name", ["table4_1", "fig6_2"])  # one job / resumable with its work folder
def test_a_read_only_results_folder_fails_before_training(tmp_path, name):
    results = tmp_path / "results"
    results.mkdir()
    results.chmod(0o555)
    try:
        start = time.monotonic()
        p = sokit_cli("run", name, "--profile", "smoke", env={"SOKIT_RESULTS": str(results)},
                      prefix=_read_only_prefix())
        took = time.monotonic() - start
    finally:
        results.chmod(0o755)
    assert p.returncode == 2, p.stderr
    assert f"cannot write results into {results / name}" in p.stderr and "SOKIT_RESULTS" in p.stderr
    assert "Traceback" not in p.stderr and "training" not in p.stdout
    assert list(results.iterdir()) == [] and took < 60


def test_an_unwritable_results_folder_stops_both_kinds_of_experiment_before_they_run(tmp_path, monkeypatch):
    calls = []
    plain = experiments.Experiment("toy_plain", "", {"smoke": {"x": 1}}, lambda c: calls.append(c) or {})
    resumable = experiments.Experiment("toy_resumable", "", {"smoke": {"x": 1}},
                                       lambda c, workdir, jobs: calls.append(c) or {}, resumable=True)
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("SOKIT_RESULTS", str(tmp_path / "file"))
    for exp in (plain, resumable):
        with pytest.raises(store.StoreError, match="cannot write results into"):
            experiments.run_experiment(exp, "smoke")
    assert calls == []


# ------------------------------- 2b. corrupt files in the work folder; --rerun gets past them
def _tiny_build(config, spec):
    model = models.mlp([784, 8, 784], "sigmoid", "sigmoid", prescale=1.0)
    return model, torch.optim.SGD(model.parameters(), lr=spec["lr"])


def _tiny_run(config, workdir=None, jobs=1):
    return runner.run_methods(config, workdir, jobs, build=_tiny_build)


TINY = {"dataset": "mnist", "loss": "mse", "seed": 0, "batch_size": 20, "updates": 8, "n_evals": 3,
        "eval_subset": 100, "methods": {"a": {"label": "a", "lr": 0.1}, "b": {"label": "b", "lr": 1.0}}}


def test_corrupt_work_files_name_themselves_and_rerun_clears_the_work_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SOKIT_RESULTS", str(tmp_path))
    monkeypatch.delenv("SOKIT_RERUN", raising=False)
    exp = experiments.Experiment("toy_work", "", {"smoke": TINY}, _tiny_run, resumable=True)
    work = store.work_dir(exp.name, "smoke")
    runner.prepare_workdir(work, TINY)
    pt = work / f"{runner.slug('a')}.pt"
    pt.write_bytes(b"\x80\x04 not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match=rf"checkpoint {pt} cannot be read.*--rerun"):
        experiments.load_or_run(exp)
    done = work / f"{runner.slug('a')}.json"
    done.write_text('{"updates": [1, 2')  # truncated
    with pytest.raises(store.StoreError, match=rf"{done} is not valid JSON.*--rerun"):
        experiments.load_or_run(exp)
    record = experiments.load_or_run(exp, rerun=True)
    assert record["results"]["a"]["updates"][-1] == 8 and not work.exists()


def interrupted_before_training(monkeypatch) -> None:
    """Leave sgd_autoencoder's work folder as Ctrl-C does just before its method trains."""

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(runner, "train_method", stop)
        with pytest.raises(KeyboardInterrupt):
            experiments.run_experiment("sgd_autoencoder", "smoke")


def test_the_cli_names_a_corrupt_checkpoint_or_json_and_rerun_gets_past_them(tmp_path, monkeypatch):
    monkeypatch.setenv("SOKIT_RESULTS", str(tmp_path))
    env = {"SOKIT_RESULTS": str(tmp_path)}
    work = store.work_dir("sgd_autoencoder", "smoke")

    interrupted_before_training(monkeypatch)
    assert (work / "config.sha256").exists()
    marker = tmp_path / "ran"
    pt = crafted_checkpoint(work / f"{runner.slug('SGD')}.pt", marker)
    p = sokit_cli("run", "sgd_autoencoder", "--profile", "smoke", env=env)
    assert p.returncode == 2 and f"checkpoint {pt} cannot be read" in p.stderr and "--rerun" in p.stderr
    assert "Traceback" not in p.stderr and not marker.exists()
    p = sokit_cli("run", "sgd_autoencoder", "--profile", "smoke", "--rerun", env=env)
    assert p.returncode == 0 and "stored" in p.stdout, p.stderr
    assert not marker.exists() and not work.exists()

    interrupted_before_training(monkeypatch)
    done = work / f"{runner.slug('SGD')}.json"
    done.write_text('{"updates": [1, 2,')
    (tmp_path / "sgd_autoencoder" / "smoke.json").unlink()  # a result to compute: the work folder is read
    p = sokit_cli("run", "sgd_autoencoder", "--profile", "smoke", env=env)
    assert p.returncode == 2 and f"{done} is not valid JSON" in p.stderr and "Traceback" not in p.stderr
    p = sokit_cli("run", "sgd_autoencoder", "--profile", "smoke", "--rerun", env=env)
    assert p.returncode == 0 and "stored" in p.stdout, p.stderr


# ----------------------------------------------------------- 2c. one run at a time
HOLD = textwrap.dedent("""
    import pathlib, sys, time
    from sokit.experiments import store
    name, profile, held = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
    with store.lock(name, profile):
        held.write_text("held")
        time.sleep(600)
""")


def test_a_second_run_of_the_same_experiment_and_profile_refuses_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("SOKIT_RESULTS", str(tmp_path))
    env = {**os.environ, "SOKIT_RESULTS": str(tmp_path)}
    held = tmp_path / "held"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, "sgd_autoencoder", "smoke", str(held)], env=env)
    try:
        deadline = time.monotonic() + 120
        while not held.exists():
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        lock = tmp_path / "sgd_autoencoder" / "smoke.lock"
        p = sokit_cli("run", "sgd_autoencoder", "--profile", "smoke", env={"SOKIT_RESULTS": str(tmp_path)})
        assert p.returncode == 2 and "already running" in p.stderr, p.stderr
        assert f"process {holder.pid} holds the lock {lock}" in p.stderr and "Traceback" not in p.stderr
        assert not (tmp_path / "sgd_autoencoder" / "smoke.json").exists()
        calls = []
        toy = experiments.Experiment("sgd_autoencoder", "", {"smoke": {"x": 1}}, lambda c: calls.append(c) or {})
        start = time.monotonic()
        with pytest.raises(store.StoreError, match=f"process {holder.pid}"):
            experiments.run_experiment(toy, "smoke")
        assert time.monotonic() - start < 1 and calls == []
    finally:
        holder.kill()  # a killed holder frees the lock (flock goes with the process)
        holder.wait(timeout=60)
    experiments.run_experiment(toy, "smoke")
    assert calls == [{"x": 1}] and not lock.exists()


# ------------------------------------------------------------------------ 2d. Ctrl-C
def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.parametrize("jobs", [2, 1])
def test_ctrl_c_stops_within_seconds_keeps_the_checkpoints_and_says_how_to_resume(tmp_path, jobs):
    work = tmp_path / "fig6_2" / "smoke.work"
    proc = subprocess.Popen([sys.executable, "-m", "sokit", "run", "fig6_2", "--profile", "smoke",
                             "--jobs", str(jobs)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "SOKIT_RESULTS": str(tmp_path)})
    deadline = time.monotonic() + 180
    while not (work / "config.sha256").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never created its work folder"
        time.sleep(0.2)
    time.sleep(2.0)
    workers = _children(proc.pid)
    proc.send_signal(signal.SIGINT)
    start = time.monotonic()
    out, err = proc.communicate(timeout=60)
    took = time.monotonic() - start
    assert took < 10, f"took {took:.1f} s to stop"
    assert proc.returncode == 130, err
    assert f"run `python -m sokit run fig6_2 --profile smoke` to continue from {work}" in err
    assert "Traceback" not in err, err
    assert work.exists() and (work / "config.sha256").exists()
    assert len(json.loads((work / "invocations.json").read_text())["invocations"]) == 1
    assert not (tmp_path / "fig6_2" / "smoke.lock").exists()
    time.sleep(2.0)
    assert [w for w in workers if Path(f"/proc/{w}").exists() and
            "Z" not in Path(f"/proc/{w}/stat").read_text().rsplit(")", 1)[1].split()[0]] == []


# ---------------------------------------------------------- 2e. provenance over resumes
def test_provenance_covers_every_invocation_of_a_resumed_run(tmp_path, monkeypatch):
    monkeypatch.setenv("SOKIT_RESULTS", str(tmp_path))
    tries = []

    def run(config, workdir, jobs):
        workdir.mkdir(parents=True, exist_ok=True)
        tries.append(time.monotonic())
        time.sleep(0.3)
        if len(tries) < 3:
            raise KeyboardInterrupt
        return {"value": 1}

    exp = experiments.Experiment("toy_resumes", "", {"smoke": {"x": 1}}, run, resumable=True)
    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            experiments.run_experiment(exp, "smoke")
    saved = json.loads((store.work_dir(exp.name, "smoke") / "invocations.json").read_text())["invocations"]
    assert len(saved) == 2
    record = experiments.run_experiment(exp, "smoke")
    prov = record["provenance"]
    assert prov["invocations"] == 3 and prov["started"] == saved[0]["started"]
    assert prov["wall_clock_s"] >= 0.9 and prov["wall_clock_s"] >= sum(i["wall_clock_s"] for i in saved)
    assert prov["cpu_seconds"] >= sum(i["cpu_seconds"] for i in saved)
    assert prov["commit"] == provenance.git_commit() and prov["dirty"] in (True, False)
    assert not store.work_dir(exp.name, "smoke").exists()
    # a rerun starts over: its provenance is its own
    assert experiments.run_experiment(exp, "smoke", fresh=True)["provenance"]["invocations"] == 1


# ------------------------------------------------------ 2f. a non-editable install
def test_an_installed_package_stores_results_in_the_working_directory(tmp_path, monkeypatch):
    site = tmp_path / "site-packages" / "sokit"
    site.mkdir(parents=True)
    monkeypatch.setattr(store, "PACKAGE_DIR", site)
    monkeypatch.delenv("SOKIT_RESULTS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert store.repository_root() is None
    assert store.results_dir() == tmp_path / "results"
    assert provenance.git_commit() == "unknown (installed package)" and provenance.git_dirty() is None
    prov = provenance.provenance(torch.device("cpu"), provenance.now(), 1.0)
    assert prov["commit"] == "unknown (installed package)" and prov["sokit_version"] == sokit.__version__
    monkeypatch.setenv("SOKIT_RESULTS", str(tmp_path / "elsewhere"))
    assert store.results_dir() == tmp_path / "elsewhere"
    # a copy of the book without .git (e.g. an unpacked archive) is still a checkout
    (site.parent / "_toc.yml").write_text("root: intro\n")
    monkeypatch.delenv("SOKIT_RESULTS")
    assert store.results_dir() == site.parent / "results" and provenance.git_commit() == "unknown"


def test_the_thesis_figures_ship_with_the_package(monkeypatch, tmp_path):
    from sokit.report import plots

    monkeypatch.setattr(store, "PACKAGE_DIR", tmp_path / "site-packages" / "sokit")  # not a checkout
    for name in ("2nd", "centering", "cifar10", "uab"):
        path = plots.thesis_figure_path(name)
        assert path.parent == plots.THESIS_FIGURES and path.is_relative_to(REPO / "sokit")
        assert path.read_bytes() == (REPO / "figures" / f"{name}.png").read_bytes()  # the book's, unchanged
    with pytest.raises(FileNotFoundError, match="the package ships"):
        plots.thesis_figure_path("mlp")  # only the checkout's figures/ has it
    monkeypatch.undo()
    assert plots.thesis_figure_path("mlp") == REPO / "figures" / "mlp.png"
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["sokit"]
    shipped = {p for pattern in patterns for p in (REPO / "sokit").glob(pattern)}
    assert set(plots.THESIS_FIGURES.glob("*.png")) <= shipped
    assert set((REPO / "sokit" / "thesis_curves").glob("*.csv")) <= shipped


# ------------------------------------------------------------- 8. one set-up command
def test_the_readme_commands_and_ci_share_one_fast_idempotent_setup():
    readme = (REPO / "README.md").read_text()
    assert "bash scripts/setup.sh && bash scripts/build_book.sh" in readme
    assert "bash scripts/setup.sh && python -m pytest --nbval-lax" in readme
    assert "bash scripts/setup.sh" in (REPO / ".ci" / "run").read_text()
    start = time.monotonic()  # everything is present where the tests run: nothing to install
    p = subprocess.run(["bash", str(REPO / "scripts" / "setup.sh")], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "SOKIT_SETUP_APT": "0", "PIP_NO_INDEX": "1", "PYTHON": sys.executable})
    assert p.returncode == 0 and "setup: ready" in p.stdout, p.stderr
    assert "installing" not in p.stdout and time.monotonic() - start < 30
