"""Command line: ``python -m sokit {data fetch, train, run, list}``.

* ``python -m sokit data fetch mnist|fashion-mnist|cifar10``: put the verified files in the cache.
* ``python -m sokit train --updates 1000 --lr 0.1 --prescale 15``: one run, with a progress bar,
  written as JSON with its provenance.
* ``python -m sokit run sgd_autoencoder --profile quick``: a registered experiment, stored under
  ``results/<name>/<profile>.json``.
* ``python -m sokit list``: the registered experiments and which profiles are stored.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch

from sokit import data, experiments, models, train


def cmd_data(args: argparse.Namespace) -> int:
    folder = data.fetch(args.name, verbose=True)
    print(f"{args.name}: verified files in {folder}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    device = torch.device(args.device) if args.device else experiments.default_device()
    dataset = data.load(args.dataset, device=device)
    torch.manual_seed(args.seed)
    if args.model == "autoencoder":
        model, loss = models.autoencoder(args.prescale, args.norm), "mse"
    else:
        model, loss = models.cifar_mlp(args.prescale, args.norm), "cross_entropy"
    if dataset.train_x.shape[1] != model[0].in_features:
        raise SystemExit(f"model {args.model} takes {model[0].in_features} inputs but {args.dataset} has "
                         f"{dataset.train_x.shape[1]}; use --dataset mnist/fashion-mnist for the autoencoder, "
                         "cifar10 for the cifar_mlp")
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    config = {k: v for k, v in vars(args).items() if k not in ("func", "out", "checkpoint", "no_progress")}
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    result = train.train(model, optimizer, dataset, loss, args.updates, args.batch_size, seed=args.seed,
                         n_evals=args.n_evals, device=device, checkpoint=args.checkpoint,
                         progress=not args.no_progress, eval_subset=args.eval_subset)
    record = {"experiment": "cli_train", "profile": None, "config": config, "results": result,
              "provenance": experiments.provenance(device, started, time.perf_counter() - t0)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    status = f"diverged at update {result['diverged_at']}" if result["diverged"] else \
        f"train loss {result['train_loss'][-1]:.4g}, test loss {result['test_loss'][-1]:.4g}"
    print(f"{args.updates} updates in {result['wall_clock_s']:.1f} s of training: {status}; wrote {out}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    record = experiments.load_or_run(args.experiment, args.profile, rerun=args.rerun, jobs=args.jobs)
    path = experiments.result_path(args.experiment, record["profile"])
    prov = record["provenance"]
    print(f"{args.experiment} [{record['profile']}]: {path} (device {prov['device']}, "
          f"{prov['wall_clock_s']:.1f} s, commit {prov['commit'][:10]})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    for name, exp in experiments.registry().items():
        stored = [p for p in exp.configs if experiments.result_path(name, p).exists()]
        print(f"{name}: {exp.description}\n    profiles {', '.join(exp.configs)}; stored: {', '.join(stored) or 'none'}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sokit", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(required=True)

    d = sub.add_parser("data", help="datasets")
    dsub = d.add_subparsers(required=True)
    f = dsub.add_parser("fetch", help="fetch a dataset into the cache ($SOKIT_DATA or ~/.cache/sokit)")
    f.add_argument("name", choices=data.DATASETS)
    f.set_defaults(func=cmd_data)

    t = sub.add_parser("train", help="train one model with SGD and write its curves as JSON")
    t.add_argument("--model", choices=("autoencoder", "cifar_mlp"), default="autoencoder")
    t.add_argument("--dataset", choices=data.DATASETS, default="mnist")
    t.add_argument("--norm", choices=("batchnorm", "mean_only"), default=None)
    t.add_argument("--lr", type=float, default=0.1)
    t.add_argument("--momentum", type=float, default=0.0)
    t.add_argument("--prescale", type=float, default=15.0)
    t.add_argument("--updates", type=int, default=1000)
    t.add_argument("--batch-size", type=int, default=200)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--n-evals", type=int, default=20)
    t.add_argument("--eval-subset", type=int, default=None, help="evaluate on the first N examples only")
    t.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    t.add_argument("--checkpoint", default=None, help="checkpoint file; an existing one is resumed")
    t.add_argument("--out", default="train_result.json", help="where to write the JSON result")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("run", help="run (or load) a registered experiment")
    r.add_argument("experiment")
    r.add_argument("--profile", choices=experiments.PROFILES, default=None,
                   help="default: $SOKIT_PROFILE or smoke")
    r.add_argument("--rerun", action="store_true", help="run even when a matching result is stored")
    r.add_argument("--jobs", type=int, default=1,
                   help="methods trained at once, one process each (comparison figures only); "
                        "an interrupted run resumes from results/<name>/<profile>.work")
    r.set_defaults(func=cmd_run)

    ls = sub.add_parser("list", help="list the registered experiments")
    ls.set_defaults(func=cmd_list)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (data.DataError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
