"""scripts/gpu_session.sh: its plan trains every run once, and its dry run (the same plan at smoke
size on the CPU) writes results, checkpoints and a summary under $OUT within two minutes."""

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_session  # noqa: E402

from sokit.experiments import catalog, fig6, runner, store  # noqa: E402


@pytest.mark.parametrize("profile", ["smoke", "full"])
def test_plan_trains_every_run_once(profile):
    jobs = gpu_session.plan(profile, dry_run=False)
    launched = [(j.experiment, label) for j in jobs if j.kind != "compose" for label in j.labels]
    keys = [gpu_session.training_runs(name, catalog.get(name).config(profile))[label] for name, label in launched]
    assert len(keys) == len(set(keys))
    assert {j.experiment for j in jobs} == set(gpu_session.PLAN)
    own = [j for j in jobs if j.experiment == "fig6_1"]
    assert [j.kind for j in own] == ["own", "compose"]
    assert own[0].labels == ["mean-only batch norm + SGD", "centered GD"]
    assert own[1].shared_from == {"SGD": "fig6_2", "ACP, fixed alpha": "fig6_2"}
    for job in jobs:  # one process per method
        if job.kind != "compose" and catalog.get(job.experiment).resumable:
            assert job.jobs == len(job.labels)


def test_plan_refuses_a_run_that_no_stored_result_can_share(monkeypatch):
    monkeypatch.setattr(gpu_session, "PLAN", ("sgd_autoencoder", "fig6_2", "sgd_autoencoder"))
    with pytest.raises(gpu_session.PlanError, match="sgd_autoencoder would train 'SGD' again"):
        gpu_session.plan("smoke", dry_run=True)


def test_own_methods_go_where_fig6_run_looks_for_them(monkeypatch, tmp_path):
    """Once fig6_2 is stored, fig6.run trains fig6_1's other methods with the configuration (and so
    the work folder stamp) under which the plan's own job trained them: it finds them finished."""
    monkeypatch.setenv("SOKIT_RESULTS", str(tmp_path))
    calls = []
    monkeypatch.setattr(gpu_session, "run_methods", lambda config, workdir, jobs: calls.append((config, workdir)))
    monkeypatch.setattr(fig6, "run_methods", lambda config, workdir, jobs: calls.append((config, workdir)) or
                        {label: {} for label in config["methods"]})
    assert gpu_session.train_own("fig6_1", "smoke", 1) == 0
    config = catalog.get("fig6_1").config("smoke")
    monkeypatch.setattr(fig6, "shared_runs", lambda c: {"SGD": {}, "ACP, fixed alpha": {}})
    fig6.run(config, store.work_dir("fig6_1", "smoke"))
    (mine, mine_dir), (theirs, their_dir) = calls
    assert runner.config_key(mine) == runner.config_key(theirs) and mine_dir == their_dir


def test_dry_run(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, OUT=str(out), OMP_NUM_THREADS="1")
    t0 = time.monotonic()
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_session.sh"), "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - t0
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert elapsed < 120, f"the dry run took {elapsed:.0f} s"
    assert (out / "summary.md").read_text().startswith("# GPU session")
    with tarfile.open(out / "results.tar.gz") as tar:
        names = tar.getnames()
        summary = json.load(tar.extractfile("summary.json"))
    assert set(summary["experiments"]) == set(gpu_session.PLAN)
    for name, e in summary["experiments"].items():
        assert e["status"] == "stored" or e["status"].startswith(("stopped at the time box", "not started")), e
        if catalog.get(name).resumable and e["status"] != "stored" and e["trains"]:
            assert (out / "results" / name / "smoke.work" / "config.sha256").exists()
    # a run that finished was stored (and its work folder removed); one stopped early checkpointed
    trained = [p for p in (out / "results").rglob("smoke.work/*") if p.suffix in (".pt", ".json")]
    stored = [p for p in (out / "results").glob("*/smoke.json")]
    assert trained or stored, "no method checkpointed, finished or was stored"
    for p in (out / "results").rglob("*"):
        if p.is_file() and p.suffix not in (".pt", ".lock"):
            assert str(p.relative_to(out)) in names
    assert {str(p.relative_to(out)) for p in (out / "results").rglob("*.pt")} == \
        set(summary["checkpoints_returned"]) | set(summary["checkpoints_left_behind"])
    assert any(line.startswith("| fig6_1 |") for line in (out / "summary.md").read_text().splitlines())
