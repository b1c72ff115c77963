"""Several worker processes share one Optuna study on a real local PostgreSQL server, and
a worker killed mid-trial leaves a trial that the heartbeat fails and the sampler ignores.

The tests start their own server (``initdb`` + ``pg_ctl`` from the Debian package
``postgresql``, installed by ``bash scripts/setup.sh``) in a temporary folder on a free
localhost port, and stop it after. Without PostgreSQL they fail, naming that command.
"""

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap

import optuna
import pytest

from sokit.optuna_search import BiasedRandomSampler

pytestmark = pytest.mark.postgres

WORKER = textwrap.dedent("""
    import math, sys, optuna
    from sokit.optuna_search import BiasedRandomSampler
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url, name, worker, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

    def objective(trial):
        x = trial.suggest_float("lr", 1e-7, 1e2, log=True)
        y = trial.suggest_float("prescale", 10, 20)
        trial.set_user_attr("worker", worker)
        return (math.log10(x) + 2) ** 2 + ((y - 15) / 2) ** 2

    study = optuna.load_study(study_name=name, storage=url, sampler=BiasedRandomSampler(seed=worker))
    study.optimize(objective, n_trials=n)
""")


def _postgres_bin() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found and shutil.which("initdb"):
        found = [shutil.which("initdb")]
    if not found:
        pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) not found: run `bash scripts/setup.sh` "
                    "(it installs the Debian package postgresql); this test starts its own local server")
    return os.path.dirname(found[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    bindir = _postgres_bin()
    root = os.geteuid() == 0  # the server refuses to run as root: run it as `postgres`
    as_user = ["runuser", "-u", "postgres", "--"] if root else []
    base = tempfile.mkdtemp(prefix="sokit-pg-")
    data, sock = os.path.join(base, "data"), os.path.join(base, "sock")
    os.mkdir(sock)
    if root:
        shutil.chown(base, "postgres")
        shutil.chown(sock, "postgres")
    port = _free_port()
    def run(*a):
        return subprocess.run(as_user + list(a), check=True, capture_output=True, text=True, timeout=120)
    try:
        run(f"{bindir}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
        run(f"{bindir}/pg_ctl", "-D", data, "-l", os.path.join(base, "server.log"), "-w", "-t", "60",
            "-o", f"-p {port} -k {sock} -c listen_addresses=127.0.0.1", "start")
    except subprocess.CalledProcessError as e:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {e.stderr}")
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(as_user + [f"{bindir}/pg_ctl", "-D", data, "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


def test_workers_share_one_study_on_postgres(postgres_url):
    name = "sokit-biased-random"
    optuna.create_study(study_name=name, storage=postgres_url, sampler=BiasedRandomSampler(seed=0))
    requested = [12, 9, 15]
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, postgres_url, name, str(i), str(n)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i, n in enumerate(requested)]
    for w in workers:
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
    trials = optuna.load_study(study_name=name, storage=postgres_url).trials
    assert len(trials) == sum(requested)
    assert sorted(t.number for t in trials) == list(range(sum(requested)))  # none lost, none duplicated
    assert len({t._trial_id for t in trials}) == sum(requested)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    per_worker = [sum(t.user_attrs["worker"] == i for t in trials) for i in range(len(requested))]
    assert per_worker == requested
    assert all(1e-7 <= t.params["lr"] <= 1e2 and 10 <= t.params["prescale"] <= 20 for t in trials)


HANGS = textwrap.dedent("""
    import pathlib, sys, time, optuna
    from sokit.optuna_search import BiasedRandomSampler, heartbeat_storage
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url, name, started = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])

    def objective(trial):
        trial.suggest_float("lr", 1e-7, 1e2, log=True)
        trial.suggest_float("prescale", 10, 20)
        started.write_text(str(trial.number))
        time.sleep(600)  # killed here, mid-trial

    storage = heartbeat_storage(url, heartbeat_interval=1, grace_period=3)
    study = optuna.load_study(study_name=name, storage=storage, sampler=BiasedRandomSampler(seed=7))
    study.optimize(objective, n_trials=1)
""")


def test_a_killed_workers_trial_fails_after_the_grace_period_and_is_not_fitted(postgres_url, tmp_path):
    import math
    import signal
    import time

    from sokit.optuna_search import REPORTED, heartbeat_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = "sokit-heartbeat"
    storage = heartbeat_storage(postgres_url, heartbeat_interval=1, grace_period=3)
    sampler = BiasedRandomSampler(seed=0)
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler)

    def objective(trial):
        x = trial.suggest_float("lr", 1e-7, 1e2, log=True)
        y = trial.suggest_float("prescale", 10, 20)
        if trial.number == 0:
            return math.nan  # a diverged run: reported by a live worker
        return (math.log10(x) + 2) ** 2 + ((y - 15) / 2) ** 2

    study.optimize(objective, n_trials=4)
    started = tmp_path / "started"
    worker = subprocess.Popen([sys.executable, "-c", HANGS, postgres_url, name, str(started)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not started.exists():
            assert worker.poll() is None, worker.communicate()[1]
            assert time.monotonic() < deadline, "the worker never started its trial"
            time.sleep(0.2)
        killed = int(started.read_text())
        time.sleep(1.5)  # a heartbeat or two recorded
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.communicate(timeout=60)
    def trial(n):
        return optuna.load_study(study_name=name, storage=postgres_url).trials[n]
    assert trial(killed).state == optuna.trial.TrialState.RUNNING  # nobody has noticed yet
    time.sleep(4.5)  # past the grace period since the last heartbeat
    study.optimize(objective, n_trials=1)  # the next trial's start fails stale trials first
    crashed, diverged = trial(killed), trial(0)
    assert crashed.state == diverged.state == optuna.trial.TrialState.FAIL
    assert REPORTED not in crashed.system_attrs and diverged.system_attrs[REPORTED] is True
    fitted, costs = sampler.fitted(study, ["lr", "prescale"])
    numbers = [t.number for t in fitted]
    assert killed not in numbers  # a crash says nothing about its hyperparameters
    assert 0 in numbers and costs[numbers.index(0)] == costs.max()  # divergence: the worst cost
    assert len(numbers) == len(study.trials) - 1


def test_without_postgresql_the_test_fails_naming_the_setup_command(monkeypatch):
    monkeypatch.setattr(glob, "glob", lambda pattern: [])
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match=r"bash scripts/setup\.sh"):
        _postgres_bin()
