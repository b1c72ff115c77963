"""The driver of ``scripts/gpu_session.sh``: one prepared, time-boxed GPU session.

``session`` runs, inside ``--time-box`` seconds from its start: the data check, the
step-overhead benchmark (alone on the device, captured as CUDA graphs), then the
full-profile runs of :data:`PLAN` as concurrent processes (one per method) while the
CUDA tests run beside them. At the time box every run still going gets SIGINT, as
Ctrl-C: it exits keeping its checkpoints, and the same command resumes it. Everything
goes under ``$OUT``; at the end it is packed into the few files the GPU machine sends
back (:func:`pack`). ``--dry-run``: the same plan at smoke size on the CPU.

No run is trained twice: a method that an earlier experiment of the plan trains with the
same data, model, budget and spec (Fig 6.1 shares SGD and ACP with a fixed alpha with
Fig 6.2) is left to it; the later experiment trains only its own methods (``own``, into
the work folder where ``sokit.experiments.fig6.run`` will look for them) and is stored
by ``python -m sokit run`` once the experiment it shares with is stored.

``prepare`` (on this machine, before the call): gzips the cached MNIST and Fashion-MNIST
into ``data/gpu/`` and downloads the wheels the GPU machine lacks into ``.whl/``.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

T_START = time.monotonic()  # the time box counts from here, before torch and sokit are imported

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sokit import data  # noqa: E402
from sokit.experiments import catalog, fig6, store  # noqa: E402
from sokit.experiments.methods import method  # noqa: E402
from sokit.experiments.provenance import git_commit, git_dirty, now  # noqa: E402
from sokit.experiments.runner import run_methods, slug  # noqa: E402

#: the experiments of a session, in the order in which they claim shared runs
PLAN = ("fig6_2", "fig6_1", "fig6_3_fashion", "sgd_autoencoder", "fig5_1", "table4_1")
DATASETS = ("mnist", "fashion-mnist")
PACKED = ROOT / "data" / "gpu"
WHEELS = ROOT / ".whl"
#: what the GPU machine lacks: optuna (imported by sokit.experiments) and its needs, ASDL (the benchmark's peer)
WHEEL_NAMES = ("optuna", "alembic", "sqlalchemy", "mako", "colorlog", "asdfghjkl")
CUDA_TESTS = ("tests/test_capturable*.py", "tests/test_graphs*.py")
#: what a run's identity is made of: everything sokit.experiments.runner.train_method reads, and the spec
TRAIN_KEYS = ("dataset", "model", "sizes", "loss", "batch_size", "seed", "updates", "n_evals", "eval_subset")
#: the GPU machine sends back at most 8 files of at most 16 MiB, 64 MiB in all
MAX_FILES, MAX_FILE, MAX_TOTAL = 8, 16 << 20, 64 << 20


class PlanError(RuntimeError):
    """The plan would train a run twice."""


@dataclass
class Job:
    """One process of the plan: ``kind`` "cli" (``python -m sokit run``), "own" (an
    experiment's own methods) or "compose" (the CLI once the shared runs are stored)."""

    experiment: str
    kind: str
    labels: list[str]
    jobs: int = 1
    shared_from: dict[str, str] = field(default_factory=dict)  # label -> experiment that trains it
    proc: subprocess.Popen | None = None
    rc: int | None = None
    stopped: bool = False


def identity(config: dict[str, Any], spec: dict[str, Any]) -> str:
    """What makes two training runs the same run."""
    return json.dumps({"config": {k: config.get(k) for k in TRAIN_KEYS}, "spec": spec}, sort_keys=True)


def training_runs(name: str, config: dict[str, Any]) -> dict[str, str]:
    """{label: identity} of the runs that ``name`` trains under ``config``."""
    if name == "sgd_autoencoder":  # one run, built by sokit.experiments.sgd_baseline.run
        spec = method(config["optimizer"], prescale=config["prescale"], lr=config["lr"])
        return {"SGD": identity(dict(config, loss="mse"), spec)}
    if not catalog.get(name).resumable:  # a search: one job, its own
        return {name: json.dumps({"experiment": name, "config": config}, sort_keys=True)}
    return {label: identity(config, spec) for label, spec in config["methods"].items()}


def plan(profile: str, dry_run: bool) -> list[Job]:
    """The session's jobs: each run once, one process per method (one per experiment in a dry run)."""
    seen: dict[str, str] = {}
    jobs: list[Job] = []
    for name in PLAN:
        config = catalog.get(name).config(profile)
        own, shared = [], {}
        for label, key in training_runs(name, config).items():
            if key in seen:
                shared[label] = seen[key]
            else:
                seen[key], own = name, [*own, label]
        width = 1 if dry_run else max(1, len(own))
        if not shared:
            jobs.append(Job(name, "cli", own, width if catalog.get(name).resumable else 1))
            continue
        for label, source in shared.items():  # fig6.run must find these stored, or it trains them again
            base = {k: v for k, v in catalog.get(source).config(profile).items() if k != "methods"}
            if name not in fig6.COMPARISONS or source not in fig6.COMPARISONS or \
                    base != {k: v for k, v in config.items() if k != "methods"}:
                raise PlanError(f"{name} would train {label!r} again: {source} trains the same run, "
                                "and only the comparison figures share stored runs")
        if own:
            jobs.append(Job(name, "own", own, width))
        jobs.append(Job(name, "compose", [], 1, shared))
    return jobs


def command(job: Job, profile: str) -> list[str]:
    if job.kind == "own":
        return [sys.executable, str(Path(__file__)), "own", job.experiment, "--profile", profile,
                "--jobs", str(job.jobs)]
    jobs = ["--jobs", str(job.jobs)] if job.jobs > 1 else []
    return [sys.executable, "-m", "sokit", "run", job.experiment, "--profile", profile, "--no-progress", *jobs]


def train_own(name: str, profile: str, jobs: int) -> int:
    """Train the methods of ``name`` that no earlier experiment of the plan trains, into the
    work folder where ``fig6.run`` looks for them once the shared runs are stored."""
    (job,) = [j for j in plan(profile, dry_run=False) if j.experiment == name and j.kind == "own"]
    config = json.loads(json.dumps(catalog.get(name).config(profile)))  # as fig6.run sees it
    todo = {label: config["methods"][label] for label in job.labels}
    try:
        with store.lock(name, profile):
            run_methods(dict(config, methods=todo), store.work_dir(name, profile), jobs)
    except KeyboardInterrupt:
        print(f"{name} [{profile}]: stopped; its own methods resume from {store.work_dir(name, profile)}",
              file=sys.stderr)
        return 130
    print(f"{name} [{profile}]: trained {sorted(todo)} (shared runs come from the plan's earlier experiments)")
    return 0


# ---------------------------------------------------------------- data and wheels

def prepare() -> None:
    """Here, before the call: the datasets gzipped into data/gpu/, the missing wheels into .whl/."""
    for name in DATASETS:
        data.fetch(name, verbose=True)
        folder = PACKED / name
        folder.mkdir(parents=True, exist_ok=True)
        for fname in data.MNIST_FILES:
            source, packed = data.cache_dir() / name / fname, folder / f"{fname}.gz"
            with open(source, "rb") as fin, gzip.open(packed, "wb", compresslevel=6) as fout:
                shutil.copyfileobj(fin, fout)
    pins = [f"{n}=={importlib.metadata.version(n)}" for n in WHEEL_NAMES]
    platforms = [a for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
                 for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(WHEELS), *pins],
                   check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip())
    (PACKED / "SOURCE.json").write_text(json.dumps({"commit": commit, "dirty": dirty, "prepared": now()}) + "\n")
    size = sum(f.stat().st_size for d in (PACKED, WHEELS) for f in d.rglob("*") if f.is_file())
    print(f"prepared {PACKED} and {WHEELS} ({size / 2**20:.0f} MiB): carry both (carry=[\"data/gpu\", \".whl\"])")


def ensure_data(log) -> None:
    """Every dataset of the plan in the cache, unpacked from data/gpu/ where it is missing."""
    for name in DATASETS:
        problem = data.cache_problem(name)
        if problem is None:
            continue
        packed = [PACKED / name / f"{f}.gz" for f in data.MNIST_FILES]
        if not all(p.exists() for p in packed):
            raise SystemExit(f"{name} is not in the cache ({problem}) and {PACKED / name} lacks its .gz files: "
                             "run `bash scripts/gpu_session.sh --prepare` on a machine that has the data, "
                             "and pass carry=[\"data/gpu\", \".whl\"] to the run tool")
        folder = data.cache_dir() / name
        folder.mkdir(parents=True, exist_ok=True)
        for p in packed:
            with gzip.open(p, "rb") as fin, open(folder / p.stem, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        if data.cache_problem(name) is not None:
            raise SystemExit(f"{name}: the files unpacked from {PACKED / name} fail their check: "
                             f"{data.cache_problem(name)}")
        log(f"data: {name} unpacked from {PACKED / name} into {folder}")


# ---------------------------------------------------------------- the session

class Session:
    def __init__(self, out: Path, time_box: float, dry_run: bool) -> None:
        self.t0 = T_START
        self.out, self.time_box, self.dry_run = out, time_box, dry_run
        self.profile = "smoke" if dry_run else "full"
        self.margin = 20.0 if dry_run else 45.0  # for stopping the runs and packing
        self.grace = 10.0 if dry_run else 30.0  # seconds a run gets to exit after SIGINT
        self.results = out / "results"
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.log_file = open(out / "session.log", "a")
        self.env = dict(os.environ, SOKIT_RESULTS=str(self.results), PYTHONUNBUFFERED="1",
                        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        if dry_run:
            self.env["CUDA_VISIBLE_DEVICES"] = ""
        # about 20 training processes share the cores; their work is on the GPU (one CPU thread each)
        self.train_env = dict(self.env, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        os.environ["SOKIT_RESULTS"] = str(self.results)  # for this process's own reads of the store
        source = PACKED / "SOURCE.json"  # the GPU machine's copy has no .git: the commit prepare saw
        self.summary: dict[str, Any] = {"started": now(), "profile": self.profile, "time_box_s": time_box,
                                        "dry_run": dry_run, "git": git_commit(), "git_dirty": git_dirty(),
                                        "prepared_from": json.loads(source.read_text()) if source.exists() else None}

    def log(self, line: str) -> None:
        line = f"[{time.monotonic() - self.t0:6.1f} s] {line}"
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def left(self) -> float:
        """Seconds until the runs must stop."""
        return self.time_box - self.margin - (time.monotonic() - self.t0)

    def spawn(self, cmd: list[str], name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        self.log(f"start {name}: {' '.join(cmd)}")
        out = open(self.logs / f"{name}.log", "w")
        return subprocess.Popen(cmd, cwd=ROOT, env=env or self.env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # our SIGINT reaches it alone, as Ctrl-C would

    def seed_results(self) -> None:
        """Stored results of the plan from the checkout: they load instead of rerunning, and
        an experiment that shares runs with a stored one is composed from it."""
        for name in PLAN:
            src = ROOT / "results" / name / f"{self.profile}.json"
            if src.exists() and not store.result_path(name, self.profile).exists():
                store.result_path(name, self.profile).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, store.result_path(name, self.profile))
                self.log(f"seeded {name} [{self.profile}] from the checkout's results/")

    def benchmark(self) -> subprocess.Popen | None:
        """On the GPU: the benchmark alone on the device, waited for. In a dry run (where its
        timings mean nothing) it runs beside the training, and the process is returned."""
        args = ["--quick", "--device", "cpu", "--only", "matmul floor", "SGD"] if self.dry_run else \
            ["--device", "cuda", "--rounds", "20", "--note", "GPU session (scripts/gpu_session.sh), alone on the GPU"]
        script = str(ROOT / "benchmarks" / "step_overhead.py")
        proc = self.spawn([sys.executable, script, *args, "--out", str(self.out)], "benchmark")
        if self.dry_run:
            return proc
        limit = min(180.0, max(self.left() / 3, 1.0))
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            self.log(f"benchmark: stopped after {limit:.0f} s")
            proc.kill()
        self.bench_done(proc.wait())
        return None

    def bench_done(self, rc: int | None) -> None:
        self.summary["benchmark"] = {"rc": rc, "files": sorted(p.name for p in self.out.glob("step_overhead_*"))}
        self.log(f"benchmark: exit {rc}")

    def tests(self) -> tuple[subprocess.Popen | None, list[str]]:
        files = sorted(str(p.relative_to(ROOT)) for pattern in CUDA_TESTS for p in ROOT.glob(pattern))
        if not files:
            self.log(f"tests: no file matches {' '.join(CUDA_TESTS)}")
            return None, files
        extra = ["--collect-only"] if self.dry_run else []
        return self.spawn([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra, *files],
                          "tests"), files

    def ready(self, job: Job, jobs: list[Job]) -> bool:
        """Whether a compose job may start: its shared runs are stored and its own methods done."""
        own_done = all(j.rc == 0 for j in jobs if j.experiment == job.experiment and j.kind == "own")
        return own_done and all(self.stored(src) for src in set(job.shared_from.values()))

    def stored(self, name: str) -> bool:
        return store.matches(store.load(name, self.profile), catalog.get(name).config(self.profile))

    def train(self, jobs: list[Job], bench: subprocess.Popen | None) -> None:
        for job in jobs:
            if self.stored(job.experiment):
                self.log(f"{job.experiment} ({job.kind}): stored already, nothing to run")
            elif job.kind != "compose":
                job.proc = self.spawn(command(job, self.profile), f"{job.experiment}-{job.kind}", self.train_env)
        tests, files = self.tests()
        while self.left() > 0:
            for job in jobs:
                if job.proc is not None and job.rc is None and job.proc.poll() is not None:
                    job.rc = job.proc.returncode
                    self.log(f"{job.experiment} ({job.kind}): exit {job.rc}")
                if job.kind == "compose" and job.proc is None and not self.stored(job.experiment) and \
                        self.ready(job, jobs):
                    job.proc = self.spawn(command(job, self.profile), f"{job.experiment}-{job.kind}", self.train_env)
            active = [j for j in jobs if j.proc is not None and j.rc is None]
            if not active and all(p is None or p.poll() is not None for p in (tests, bench)):
                break  # a compose job not ready now never will be: nothing runs that could store its runs
            time.sleep(0.5)
        running = [p for p in [*(j.proc for j in jobs if j.rc is None), tests, bench]
                   if p is not None and p.poll() is None]
        if running:
            self.log(f"time box: SIGINT to {len(running)} process(es)")
        for proc in running:
            os.killpg(proc.pid, signal.SIGINT)
        until = time.monotonic() + self.grace
        for job in jobs:
            if job.proc is not None and job.rc is None:
                job.stopped = True
                job.rc = self.reap(job.proc, until)
        self.summary["tests"] = {"files": files, "rc": None if tests is None else self.reap(tests, until),
                                 "collect_only": self.dry_run}
        if bench is not None:
            self.bench_done(self.reap(bench, until))
        self.log("training: every process has exited")

    @staticmethod
    def reap(proc: subprocess.Popen, until: float) -> int | None:
        """The exit status of ``proc``, killed (with its process group) if it runs past ``until``;
        None if it is still not gone 5 s after that (the session ends anyway)."""
        try:
            return proc.wait(timeout=max(0.0, until - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            return proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            return None

    def report(self, jobs: list[Job]) -> None:
        experiments = {}
        for name in PLAN:
            mine = [j for j in jobs if j.experiment == name]
            shared = {k: v for j in mine for k, v in j.shared_from.items()}
            config = catalog.get(name).config(self.profile)
            if self.stored(name):
                status = "stored"
            elif any(j.stopped for j in mine):
                status = "stopped at the time box" + ("" if catalog.get(name).resumable else
                                                       " (not resumable: starts over next time)")
            elif any(j.rc not in (None, 0) for j in mine):
                status = f"failed (exit {[j.rc for j in mine if j.rc not in (None, 0)]}; see logs/)"
            else:
                status = "not started: waits for " + ", ".join(sorted(set(shared.values())))
            experiments[name] = {"status": status, "trains": [lbl for j in mine for lbl in j.labels],
                                 "shared_from": shared, "exit": {j.kind: j.rc for j in mine},
                                 "methods": self.progress(name, config, shared)}
        self.summary["experiments"] = experiments

    def progress(self, name: str, config: dict[str, Any], shared: dict[str, str]) -> dict[str, Any]:
        """Per method: finished, or how far its checkpoint got (a resumed run continues from there)."""
        if not catalog.get(name).resumable:
            return {}
        labels = ["SGD"] if name == "sgd_autoencoder" else list(config["methods"])
        out = {}
        for label in labels:
            source = shared.get(label, name)
            work = store.work_dir(source, self.profile)
            done, ckpt = work / f"{slug(label)}.json", work / f"{slug(label)}.pt"
            if done.exists():
                result = store.read_json(done)
                out[label] = {"finished": True, "train_loss": result["train_loss"][-1:] or None}
            elif ckpt.exists():
                saved = torch.load(ckpt, map_location="cpu", weights_only=True)
                out[label] = {"finished": False, "step": saved["step"], "updates": saved["run"]["updates"],
                              "train_loss": saved["curve"]["train_loss"][-1:] or None,
                              "checkpoint": str(ckpt.relative_to(self.out))}
            else:
                out[label] = {"finished": self.stored(source)}
        return out

    def pack(self, keep_tree: bool) -> None:
        """results.tar.gz (every result, finished method, log and the summary), then as many
        checkpoints as the files sent back can hold (smallest first), in 16 MiB parts."""
        self.summary["wall_clock_s"] = time.monotonic() - self.t0
        checkpoints = sorted(self.results.rglob("*.pt"), key=lambda p: p.stat().st_size)
        loose = ["summary.md", "session.log", "results.tar.gz", *self.summary["benchmark"]["files"]]
        used = sum((self.out / f).stat().st_size for f in loose if (self.out / f).exists()) + (2 << 20)
        budget = min((MAX_FILES - len(loose)) * (MAX_FILE - 4096) - (20 << 10), MAX_TOTAL - used)  # tar's end blocks
        chosen, size = [], 0
        for p in checkpoints:
            if size + p.stat().st_size + 4096 <= budget:
                chosen.append(p)
                size += p.stat().st_size + 4096
        self.summary["checkpoints_returned"] = [str(p.relative_to(self.out)) for p in chosen]
        self.summary["checkpoints_left_behind"] = [str(p.relative_to(self.out)) for p in checkpoints if p not in chosen]
        with tarfile.open(self.out / "results.tar.gz", "w:gz") as tar:
            for path in sorted(self.results.rglob("*")):
                if path.is_file() and path.suffix not in (".pt", ".lock"):
                    tar.add(path, arcname=str(path.relative_to(self.out)))
            for path in sorted(self.logs.glob("*.log")):
                tar.add(path, arcname=str(path.relative_to(self.out)))
            summary = json.dumps(self.summary, indent=1).encode()
            info = tarfile.TarInfo("summary.json")
            info.size = len(summary)
            tar.addfile(info, fileobj=io.BytesIO(summary))
        if chosen:
            with tempfile.TemporaryFile() as tmp:
                with tarfile.open(fileobj=tmp, mode="w") as tar:
                    for p in chosen:
                        tar.add(p, arcname=str(p.relative_to(self.out)))
                tmp.seek(0)
                i = 0
                while chunk := tmp.read(MAX_FILE - 4096):
                    (self.out / f"checkpoints.tar.{i:02d}").write_bytes(chunk)
                    i += 1
        (self.out / "summary.md").write_text(markdown(self.summary))
        if not keep_tree:  # the machine sends back only the packed files
            away = Path(tempfile.mkdtemp(prefix="gpu_session_tree_"))
            for path in (self.results, self.logs):
                if path.exists():
                    shutil.move(str(path), str(away / path.name))
            self.log(f"the unpacked tree is in {away} (not sent back)")


def markdown(summary: dict[str, Any]) -> str:
    lines = [f"# GPU session, {summary['started']} ({summary['profile']} profile"
             f"{', dry run on the CPU' if summary['dry_run'] else ''})", "",
             f"Time box {summary['time_box_s']:.0f} s, {summary['wall_clock_s']:.0f} s used. Commit "
             f"{summary['git']} (dirty: {summary['git_dirty']}); data and wheels prepared from "
             f"{summary['prepared_from']}.", ""]
    bench = summary.get("benchmark", {})
    lines.append(f"* benchmark: exit {bench.get('rc')}, files {', '.join(bench.get('files', [])) or 'none'}")
    tests = summary.get("tests", {})
    lines.append(f"* CUDA tests{' (collected only)' if tests.get('collect_only') else ''}: "
                 f"{', '.join(tests.get('files', [])) or 'no test file found'}; exit {tests.get('rc')}")
    lines += ["", "| experiment | status | trains here | shared from | methods |", "|---|---|---|---|---|"]
    for name, e in summary.get("experiments", {}).items():
        methods = "; ".join(
            f"{label}: " + ("done" if m.get("finished") else f"{m['step']}/{m['updates']}" if "step" in m else "-")
            for label, m in e["methods"].items())
        shared = ", ".join(f"{k} ({v})" for k, v in e["shared_from"].items())
        lines.append(f"| {name} | {e['status']} | {', '.join(e['trains'])} | {shared} | {methods} |")
    returned, behind = summary.get("checkpoints_returned", []), summary.get("checkpoints_left_behind", [])
    lines += ["", f"Checkpoints sent back: {len(returned)} (in checkpoints.tar.*); left on the machine "
              f"(over the 64 MiB that comes back): {len(behind)}.", "",
              "Restore into the checkout: `tar -xzf results.tar.gz` and `cat checkpoints.tar.* | tar -x` in a "
              "scratch folder, then copy its `results/` over the checkout's; `python -m sokit run <exp> --profile "
              f"{summary['profile']}` resumes from the checkpoints that came back."]
    return "\n".join(lines) + "\n"


def session(out: Path, time_box: float, dry_run: bool, keep_tree: bool) -> int:
    s = Session(out, time_box, dry_run)
    s.log(f"gpu session: profile {s.profile}, time box {time_box:.0f} s, OUT {out}, "
          f"device {'cpu (dry run)' if dry_run else 'cuda' if torch.cuda.is_available() else 'cpu'}")
    ensure_data(s.log)
    jobs = plan(s.profile, dry_run)
    s.log("plan: " + "; ".join(f"{j.experiment} {j.kind} {j.labels or list(j.shared_from)} x{j.jobs}" for j in jobs))
    s.seed_results()
    s.train(jobs, s.benchmark())
    s.report(jobs)
    s.pack(keep_tree)
    s.log("summary:\n" + markdown(s.summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("session", help="the time-boxed session (what gpu_session.sh runs)")
    s.add_argument("--time-box", type=float, default=None, help="seconds (default 540; dry run 100)")
    s.add_argument("--dry-run", action="store_true", help="the same plan at smoke size on the CPU")
    s.add_argument("--keep-tree", action="store_true",
                   help="leave results/ and logs/ under $OUT after packing (default in a dry run)")
    o = sub.add_parser("own", help="train an experiment's own methods (a job of the plan)")
    o.add_argument("experiment")
    o.add_argument("--profile", required=True)
    o.add_argument("--jobs", type=int, default=1)
    sub.add_parser("prepare", help="here: data/gpu/ and .whl/ for the run tool's carry")
    args = p.parse_args(argv)
    if args.cmd == "own":
        return train_own(args.experiment, args.profile, args.jobs)
    if args.cmd == "prepare":
        prepare()
        return 0
    if not os.environ.get("OUT"):
        raise SystemExit("set OUT to the folder that collects the session's files")
    time_box = args.time_box or (100.0 if args.dry_run else 540.0)
    return session(Path(os.environ["OUT"]), time_box, args.dry_run, args.keep_tree or args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
