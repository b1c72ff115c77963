"""Several worker processes share one Optuna study on a real local PostgreSQL server.

The test starts its own server (``initdb`` + ``pg_ctl`` from the Debian package
``postgresql``) in a temporary folder on a free localhost port, and stops it after.
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
        pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) not found: install the Debian package "
                    "`postgresql` (apt-get install -y postgresql); this test starts its own local server")
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
    run = lambda *a: subprocess.run(as_user + list(a), check=True, capture_output=True, text=True, timeout=120)
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
