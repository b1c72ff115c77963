"""Write chapter 4 (experimental setup) and append Figure 2.2's section to chapter 2, with nbformat.

Usage: python scripts/make_chapter4_notebook.py   (from the repository root)

Chapter 4 is written whole. Chapter 2 belongs to ``scripts/make_core_notebooks.py``;
here we only append the Figure 2.2 cells, each tagged with the metadata
``{"sokit": "fig2_2"}``. Appending again first removes the cells with that tag, so
running this script twice leaves one copy. Notebooks are stored without outputs.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from notebook_cells import COLAB

ROOT = Path(__file__).resolve().parents[1]
TAG = "sokit"



def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str):
    return new_code_cell(text.strip("\n"))


CHAPTER_4 = [
    md(r"""
# 4. Experimental setup

Before comparing optimizers (chapters 5 and 6) we fix how they are compared: every
method gets its hyperparameters tuned with the same budget, by the same search, on the
same two benchmarks. This chapter presents the search the thesis uses, *biased random
search*, checks its claim against grid and random search (Table 4.I, Figure 4.1), and
describes the two benchmarks {cite}`george2017`.
"""),
    code(COLAB),
    code(r"""
import math

import numpy as np
import optuna
import torch
import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from sokit import experiments, models
from sokit.optuna_sampler import BiasedRandomSampler
from sokit.population import Population, train_population
from sokit.registry import search as search_experiments
from sokit.search import (BiasedRandomSearch, LogUniform, RandomSearch, Space, Uniform,
                          acceptance_probability, run_search)
"""),
    md(r"""
## 4.1 Biased random search

Grid search spends its budget on a lattice fixed in advance; random search
{cite}`bergstra2012random` draws every configuration independently, which explores
more distinct values of each hyperparameter but ignores what earlier experiments
revealed. Biased random search keeps the uniform proposals of random search and adds a
filter learned from the history $\mathcal{H}$ of finished experiments.

A *cost model* $\mathcal{M}$ predicts the final cost of a proposal $a$ from
$\mathcal{H}$. The thesis uses the simplest one, a 1-nearest-neighbour regressor: the
estimate is the cost of the closest experiment already run. With $c_{\min}$ and
$c_{\max}$ the best and worst costs in $\mathcal{H}$, the proposal is kept with
probability

$$
p = \frac{c_{\max} - c_{\text{estimate}}}{c_{\max} - c_{\min}},
$$

and otherwise thrown away and replaced by a fresh uniform draw (Algorithm 1 of the
thesis):

1. $\mathcal{H} \leftarrow [\,]$
2. repeat until the budget is spent:
   1. draw $a \sim U(\mathcal{D})$ until a draw is accepted: estimate
      $c = \mathcal{M}(\mathcal{H}, a)$, set $p$ as above, accept when $x < p$ for
      $x \sim U([0, 1])$;
   2. run the experiment with $a$, append $(a, \text{result})$ to $\mathcal{H}$.

Proposals whose nearest neighbour is the best experiment are always accepted, those
whose nearest neighbour is the worst never are, so the search spends more of its budget
where the landscape is known to be good while still sampling everywhere else now and
then. Distances are measured in the unit square, on a log scale for the learning rate.
In `sokit` the acceptance rule is `sokit.search.acceptance_probability`:
"""),
    code(r"""
c_seen = np.array([30.0, 27.0, 45.0])   # costs in the history
c_min, c_max = c_seen.min(), c_seen.max()
c_est = np.array([27.0, 45.0, 36.0])
p = acceptance_probability(c_est, c_min, c_max)
torch.testing.assert_close(torch.tensor(p), torch.tensor((c_max - c_est) / (c_max - c_min)))
torch.testing.assert_close(torch.tensor(p[:2]), torch.tensor([1.0, 0.0], dtype=torch.float64))
p
"""),
    md(r"""
On a cheap stand-in for the landscape of Figure 4.1, a bowl in
($\log_{10}$ learning rate, prescale) with its minimum at $(-2, 15)$, biased random
search finds lower costs than random search with the same budget and puts more of its
experiments near the minimum:
"""),
    code(r"""
space = Space({"lr": LogUniform(1e-7, 1e2), "prescale": Uniform(10, 20)})

def bowl(c):
    return (math.log10(c["lr"]) + 2) ** 2 + ((c["prescale"] - 15) / 2) ** 2

best = {"random": [], "biased random": []}
near = {"random": [], "biased random": []}
for seed in range(20):
    for name, cls in (("random", RandomSearch), ("biased random", BiasedRandomSearch)):
        h = run_search(cls(space, seed=seed), bowl, 50)
        best[name].append(h.best_cost())
        near[name].append(np.mean([abs(math.log10(c["lr"]) + 2) < 1.5 for c in h.configs()[10:]]))
for name in best:
    print(f"{name:>14}: best cost {np.mean(best[name]):.3f} +- {np.std(best[name]):.3f}, "
          f"share of experiments near the minimum {np.mean(near[name]):.2f}")
assert np.mean(best["biased random"]) < np.mean(best["random"])
"""),
    md(r"""
The same algorithm is available as an Optuna sampler {cite}`akiba2019optuna`,
`sokit.optuna_sampler.BiasedRandomSampler`, so it can drive any Optuna study; with
Optuna's relational-database storage (PostgreSQL, SQLite) several processes or machines
can share one study. Parameters that every trial shares are sampled jointly, as in
Algorithm 1:
"""),
    code(r"""
optuna.logging.set_verbosity(optuna.logging.WARNING)

def objective(trial):
    lr = trial.suggest_float("lr", 1e-7, 1e2, log=True)
    prescale = trial.suggest_float("prescale", 10, 20)
    return bowl({"lr": lr, "prescale": prescale})

study = optuna.create_study(sampler=BiasedRandomSampler(seed=0))
study.optimize(objective, n_trials=40)
print(f"best {study.best_value:.3f} at {study.best_params}; "
      f"{study.sampler.rejections} proposals rejected")
"""),
    md(r"""
### Many experiments at once: population training

Each experiment of Table 4.I is short (100 SGD iterations), so run one at a time they
are dominated by fixed per-step costs. `sokit.population` stacks $P$ copies of the
network, with their own learning rates, prescales and seeds, into weights of shape
$(P, n_\text{out}, n_\text{in})$ and trains them together with batched matrix products
(one CUDA graph per step on a GPU). A member whose loss or step stops being finite is
frozen and reported; the others go on. The population computes exactly what separate
runs compute:
"""),
    code(r"""
sizes = [6, 5, 4, 6]
members = []
for i, prescale in enumerate([1.0, 4.0, 16.0]):
    torch.manual_seed(i)
    members.append(models.mlp(sizes, "sigmoid", "sigmoid", prescale=prescale).double())
lrs = [0.1, 0.5, 2.0]
pop = Population.from_models(members, lrs)
g = torch.Generator().manual_seed(0)
batches = [(x, x) for x in (torch.rand(8, 6, generator=g, dtype=torch.float64) for _ in range(10))]
together = train_population(pop, batches, updates=10)["minibatch_loss"]
for i, (m, lr) in enumerate(zip(members, lrs)):
    opt = torch.optim.SGD(m.parameters(), lr=lr)
    for t, (x, y) in enumerate(batches):
        opt.zero_grad()
        loss = ((m(x) - y) ** 2).sum(1).mean()
        loss.backward()
        opt.step()
        torch.testing.assert_close(together[t, i], loss.detach())
together[-1]
"""),
    md(r"""
### Table 4.I: grid, random and biased random search

The thesis ran 100 searches of 100 experiments each; an experiment is 100 SGD
iterations of the autoencoder of section 4.2 from a fresh initialization, tuning two
hyperparameters, $\log_{10}$ of the learning rate in $[-7, 2]$ and the prescale in
$[10, 20]$. A search's result is the lowest final training loss among its experiments;
the table gives its mean and standard deviation over the searches. We add Optuna's
Tree-structured Parzen Estimator (TPE) as a modern baseline. The searches run side by
side: in round $r$ every search proposes its $r$-th experiment, knowing the results of
rounds $< r$, and all proposals are trained as one population. Experiment $r$ of
search $s$ uses the same initialization seed and minibatches for every method.
"""),
    code(r"""
record = experiments.load_or_run("table4_1")
cfg, prov = record["config"], record["provenance"]
print(f"profile {record['profile']}: {cfg['searches']} searches x {cfg['experiments']} experiments x "
      f"{cfg['iterations']} SGD iterations, batch {cfg['batch']}, cost on {cfg['n_eval']} training examples")
print(f"device: {prov['device']} ({prov['device_type']}), wall-clock {prov['wall_clock_s']:.0f} s, "
      f"commit {prov['commit'][:8]}")
rows = search_experiments.table4_1_rows(record)
lines = ["| method | ours: mean | ours: std | thesis: mean | thesis: std |", "|---|---|---|---|---|"]
for r in rows:
    th = (f"{r['thesis mean']:.2f} | {r['thesis std']:.2f}" if r["thesis mean"] is not None else "- | -")
    lines.append(f"| {r['method']} | {r['mean']:.2f} | {r['std']:.2f} | {th} |")
display(Markdown("\n".join(lines)))
"""),
    md(r"""
The thesis's numbers come from 100 searches of 100 experiments of 100 iterations (it
does not give the minibatch size; our full profile uses 200, as in chapter 6). The smoke
profile, which runs only when no larger result is stored, trains for a handful of
iterations on a thousand images, so its losses are far higher and its ranking is noise. The quick profile is a small but faithful
miniature; the full profile (`python -m sokit run table4_1 --profile full`) is the
thesis's scale and is meant for a GPU.

### Figure 4.1: where each search spends its budget

The thesis's figure (below) shows one search of each kind over the landscape
interpolated by the 1-nearest-neighbour model from that search's own experiments
(low loss in blue, high loss in yellow).

![Figure 4.1 of the thesis](../figures/hp_search.png)

Ours, from the stored `fig4_1` result:
"""),
    code(r"""
fig_record = experiments.load_or_run("fig4_1")
print(f"profile {fig_record['profile']}, device {fig_record['provenance']['device']}, "
      f"{fig_record['config']['experiments']} experiments of {fig_record['config']['iterations']} iterations")
fig = search_experiments.plot_fig4_1(fig_record)
plt.show()
"""),
    md(r"""
## 4.2 A standard benchmark: the MNIST autoencoder

The main benchmark encodes each $28 \times 28$ MNIST digit (pixels scaled to $[0, 1]$)
into 30 numbers and decodes it back, with layers 784-1000-500-250-30-250-500-1000-784
{cite}`hinton2006reducing`: sigmoid units, a linear code layer and a sigmoid output.
The loss is the squared reconstruction error $\lVert f(x) - x \rVert_2^2$ summed over
the 784 pixels and averaged over examples; every loss value in this book for the
autoencoder is in that unit. The benchmark measures the training loss after a fixed
number of updates and after a fixed wall-clock time: a method whose update costs more
must make up for it with better updates. It is an old benchmark (sigmoids, a fully
connected network, a quadratic loss), but deep (8 layers) and wide enough
($1000 \times 784$) to make curvature matter, and it allows comparisons with the
literature {cite}`martens2010hf`.
"""),
    code(r"""
ae = models.autoencoder(prescale=15.0)
linears = [m for m in ae if isinstance(m, torch.nn.Linear)]
sizes = [linears[0].in_features] + [m.out_features for m in linears]
n_params = sum(p.numel() for p in ae.parameters())
assert sizes == [784, 1000, 500, 250, 30, 250, 500, 1000, 784]
assert n_params == sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
print(ae)
print(f"{n_params:,} parameters")
"""),
    md(r"""
## 4.3 A classification task: the CIFAR-10 MLP

The second benchmark classifies $32 \times 32$ colour images (3072 inputs) into 10
classes with 8 hidden ReLU layers of 100 units and a softmax output trained with the
multiclass cross-entropy. The network overfits early; like the thesis we look at its
training loss, since the question is how fast an optimizer lowers it. CIFAR-10 can only
be downloaded; where it is missing, the book says so beside the affected result.
"""),
    code(r"""
mlp = models.cifar_mlp()
linears = [m for m in mlp if isinstance(m, torch.nn.Linear)]
sizes = [linears[0].in_features] + [m.out_features for m in linears]
assert sizes == [3072] + [100] * 8 + [10]
assert sum(isinstance(m, torch.nn.ReLU) for m in mlp) == 8
print(f"{sum(p.numel() for p in mlp.parameters()):,} parameters")
"""),
    md(r"""
## Closing note: our Table 4.I beside the thesis's

The thesis reports grid 27.23 $\pm$ 0.42, random 27.02 $\pm$ 0.28 and biased random
26.61 $\pm$ 0.13 (mean $\pm$ standard deviation over 100 searches of the best final
training loss). The cell below lists every stored profile of `table4_1` whose
configuration matches the registered one, with the device that produced it, and checks
the thesis's ordering on each. The smoke profile (a handful of iterations on a thousand
images) only shows that the pipeline runs; read the ordering from the quick and full
profiles.
"""),
    code(r"""
exp = experiments.get("table4_1")
for profile in experiments.PROFILES:
    rec = experiments.load("table4_1", profile)
    if rec is None or rec["config"] != exp.configs[profile]:
        print(f"{profile}: no stored result")
        continue
    m, c = rec["results"]["methods"], rec["config"]
    print(f"{profile} ({c['searches']} searches x {c['experiments']} experiments x {c['iterations']} iterations, "
          f"{rec['provenance']['device']}):")
    for key, label in search_experiments.METHOD_LABELS.items():
        thesis = search_experiments.THESIS_TABLE4_1.get(key)
        ref = f"thesis {thesis[0]:.2f} +- {thesis[1]:.2f}" if thesis else ""
        print(f"  {label:<22} {m[key]['mean']:8.2f} +- {m[key]['std']:6.2f}   {ref}")
    print(f"  biased random below random: {m['biased_random']['mean'] < m['random']['mean']}; "
          f"random below grid: {m['random']['mean'] < m['grid']['mean']}")
"""),
    md(r"""
**Where we agree with the thesis and where we do not.** In the stored `quick` profile (5
searches of 16 experiments of 15 iterations each, against the thesis's 100 of 100 of 100)
biased random search beats plain random search on the mean and is far more consistent:
one of the five random searches found nothing below 94 (its 16 draws missed the band of
workable learning rates), which inflates random search's mean and spread.
That much agrees with the thesis. Unlike the thesis, the grid comes out best: with 16
experiments a 4 x 4 grid always puts points in the band of workable learning rates, and
15 iterations leave every good run near the same plateau, where the autoencoder
reconstructs the mean digit (all means between 55 and 68), so the
differences are small next to the noise of a single search. The biased search needs a
landscape worth biasing towards, which a larger budget provides. The cell below asserts
these claims for the `quick` profile.
"""),
    code(r"""
rec = experiments.load("table4_1", "quick")
if rec is not None and rec["config"] == exp.configs["quick"]:
    m = rec["results"]["methods"]
    assert m["biased_random"]["mean"] < m["random"]["mean"], m
    assert m["biased_random"]["std"] < m["random"]["std"] / 5, m
    assert m["grid"]["mean"] == min(v["mean"] for v in m.values()), m
    assert all(55 < v["mean"] < 68 for v in m.values()), m
"""),
]


FIG_2_2 = [
    md(r"""
### Figure 2.2: hyperparameters interact

Tuning one hyperparameter at a time assumes that the best value of one does not depend
on the others. Figure 2.2 of the thesis shows that this fails for the learning rate
and the scale of the initial weights: after a random search over both (log scales),
with SGD on the autoencoder and everything else fixed, the good configurations lie in a
*tilted valley*, a band that is parallel to neither axis {cite}`george2017`. The
larger the initial weights, the larger the learning rate that still trains well, so a
learning rate tuned for one initialization is wrong for another.

![Figure 2.2 of the thesis](../figures/hp_search_correl.png)

Our version: a random search over the learning rate and the prescale $\alpha$ (initial
weights $\sim \mathcal{N}(0, \alpha / n_\text{in})$), coloured by $\log_{10}$ of the
final training loss, over the landscape interpolated by the 1-nearest-neighbour model
of section 4.1. The thesis does not say what its colour scale is; ours is stated.
"""),
    code(r"""
from sokit import experiments
from sokit.registry import search as search_experiments
import matplotlib.pyplot as plt
import numpy as np

fig22 = experiments.load_or_run("fig2_2")
c, prov = fig22["config"], fig22["provenance"]
print(f"profile {fig22['profile']}: {c['experiments']} experiments of {c['iterations']} SGD iterations, "
      f"batch {c['batch']}; device {prov['device']}")
search_experiments.plot_fig2_2(fig22)
plt.show()
"""),
    md(r"""
A number for the tilt: among the better half of the experiments, the correlation
between $\log_{10}$ learning rate and $\log_{10}$ prescale. A valley parallel to an axis
gives a correlation near zero.
"""),
    code(r"""
trials = [t for t in fig22["results"]["histories"]["random"] if t["cost"] is not None]
costs = np.array([t["cost"] for t in trials])
good = costs <= np.median(costs)
log_lr = np.log10([t["config"]["lr"] for t in trials])[good]
log_prescale = np.log10([t["config"]["prescale"] for t in trials])[good]
print(f"correlation over the better half ({good.sum()} experiments): {np.corrcoef(log_lr, log_prescale)[0, 1]:+.2f}")
"""),
]


def write_chapter4(path: Path) -> None:
    nb = new_notebook(cells=CHAPTER_4)
    for i, cell in enumerate(nb.cells):
        cell.id = f"ch4-{i}"
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.validate(nb)
    nbformat.write(nb, path)


def append_fig2_2(path: Path) -> None:
    """Append (or replace) the cells tagged ``{"sokit": "fig2_2"}`` at the end of chapter 2."""
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run scripts/make_core_notebooks.py first")
    nb = nbformat.read(path, as_version=4)
    nb.cells = [c for c in nb.cells if c.metadata.get(TAG) != "fig2_2"]
    for i, cell in enumerate(FIG_2_2):
        cell.metadata[TAG] = "fig2_2"
        cell.id = f"fig2-2-{i}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    nbformat.write(nb, path)


def main() -> None:
    write_chapter4(ROOT / "chapters" / "04_experimental_setup.ipynb")
    append_fig2_2(ROOT / "chapters" / "02_optimization.ipynb")


if __name__ == "__main__":
    main()
