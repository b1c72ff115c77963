"""Write chapters 1 and 2 (neural networks; optimization) with nbformat.

Usage: python scripts/make_core_notebooks.py   (from the repository root)

The notebooks are stored without outputs. Every derivation cell ends in an assertion
(torch.testing.assert_close), so a wrong statement fails nbval. Cells written here
carry the metadata ``{"sokit_generator": "core"}``; cells that other scripts append to
a chapter (e.g. chapter 2's Figure 2.2 section) lack it and are kept, in order, after
ours when this script runs again.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from notebook_cells import COLAB

ROOT = Path(__file__).resolve().parents[1]
MARK = "sokit_generator"



def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str):
    return new_code_cell(text.strip("\n"))


def write(path: Path, cells) -> None:
    """Write our cells, then the cells of an existing notebook that another script added."""
    ours = [cells[0], code(COLAB), *cells[1:]]
    for cell in ours:
        cell.metadata[MARK] = "core"
    theirs = []
    if path.exists():
        old = nbformat.read(path, as_version=4)
        theirs = [c for c in old.cells if c.metadata.get(MARK) != "core"]
    nb = new_notebook(cells=ours + theirs)
    for i, cell in enumerate(ours):  # stable ids: regenerating gives the same file
        cell.id = f"core-{i}"
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.validate(nb)
    nbformat.write(nb, path)


# ---------------------------------------------------------------------------------
# Chapter 1

CHAPTER_1 = [
    md(r"""
# 1. Neural networks

This chapter sets up the objects that every later chapter optimizes: a parametric
function $f_\theta$, a loss $l$ that scores its output, and the two networks of the
thesis's experiments, the multilayer perceptron and the MNIST autoencoder
({cite}`george2017`, chapter 1). Each definition below is a few lines of `sokit` and is
checked against the formula it implements.
"""),
    code(r"""
import matplotlib.pyplot as plt
import torch
from torch import nn

from sokit import data, experiments, losses, models, train

torch.manual_seed(0)
"""),
    md(r"""
## Learning is minimizing a risk

A task comes with a loss ({cite}`george2017`, section 1.2) $l(f_\theta(x), y)$ that is small when the prediction is good.
The quantity we would like to minimize is the risk, the expected loss under the
data-generating distribution $p$,

$$\mathcal{R}(\theta, p) = \mathbb{E}_{(x, y) \sim p}\left[l(f_\theta(x), y)\right],$$

but we only see a finite training set $\mathcal{D}$ of $n$ examples, so we minimize its
sample average instead, the empirical risk

$$R(\theta, \mathcal{D}) = \frac{1}{n} \sum_{(x, y) \in \mathcal{D}} l(f_\theta(x), y).$$

A model that drives $R$ to zero by memorizing $\mathcal{D}$ may still do badly on new
data (overfitting). That is why every experiment of this book reports the loss on a
held-out test set next to the training loss.
"""),
    md(r"""
## The multilayer perceptron

A perceptron computes $y = f(\langle w, x \rangle + b)$: a weighted sum of the inputs,
shifted by a bias and passed through a nonlinearity $f$. The multilayer perceptron
(MLP) stacks vector versions of it. Layer $l$ maps the previous representation
$h_{l-1}$ (with $h_0 = x$) to

$$a_l = W_l h_{l-1} + b_l, \qquad h_l = f_l(a_l),$$

where $a_l$ is the pre-activation and $f_l$ acts elementwise. Two layers give
$y(x) = f_2(W_2 f_1(W_1 x + b_1) + b_2)$. The intermediate $h_l$ are the hidden
representations: training shapes them into features that serve the task.

![A multilayer perceptron](../figures/mlp.png)

`sokit.models.mlp` builds such a network as an `nn.Sequential`. We check that a small
one computes exactly the two-layer formula above.
"""),
    code(r"""
net = models.mlp([4, 5, 3], activation="sigmoid", out_activation="linear")
W1, b1, W2, b2 = net[0].weight, net[0].bias, net[2].weight, net[2].bias
x = torch.randn(4)

by_hand = W2 @ torch.sigmoid(W1 @ x + b1) + b2
torch.testing.assert_close(net(x), by_hand)
net
"""),
    md(r"""
### Initialization

The weights start random: $W_l$ has independent entries drawn from
$\mathcal{N}(0, \alpha / n_{in})$, where $n_{in}$ is the layer's input width and the
scale $\alpha$, which the thesis calls the *prescale*, is a hyperparameter tuned like
the learning rate ({cite}`george2017`, section 2.4.2). Biases start at zero. With
$\alpha$ fixed, the variance of $a_l$ at initialization does not grow with the width
of the layer below. The empirical variance of a large layer's weights is close to
$\alpha / n_{in}$:
"""),
    code(r"""
prescale = 15.0
layer = models.autoencoder(prescale=prescale)[0]   # 784 -> 1000
print(f"n_in = {layer.in_features}, empirical variance {layer.weight.var().item():.5f}, "
      f"prescale / n_in = {prescale / layer.in_features:.5f}")
torch.testing.assert_close(layer.weight.var(), torch.tensor(prescale / layer.in_features), rtol=0.01, atol=0)
assert torch.count_nonzero(layer.bias) == 0
"""),
    md(r"""
## The autoencoder

An autoencoder is trained to output its own input. The encoder compresses $x$ into a
short code, the decoder rebuilds $x$ from the code, and the whole network is trained
end to end on the reconstruction error, so the code is whatever representation makes
reconstruction possible. The thesis's benchmark ({cite}`george2017`, section 4.2,
after {cite}`hinton2006reducing`) is the deep autoencoder on $28 \times 28$ MNIST digits

$$784 \to 1000 \to 500 \to 250 \to 30 \to 250 \to 500 \to 1000 \to 784,$$

with sigmoid units, a linear 30-unit code layer and a sigmoid output, so each output
pixel is in $(0, 1)$ like the input pixels.
"""),
    code(r"""
ae = models.autoencoder(prescale=15.0)
linears = [m for m in ae if isinstance(m, nn.Linear)]
for l in linears:
    print(f"{l.in_features:5d} -> {l.out_features:5d}   weights {l.weight.numel():>9,}   biases {l.bias.numel():>5,}")
n_params = sum(p.numel() for p in ae.parameters())
print(f"{n_params:,} parameters")
widths = models.AUTOENCODER_SIZES
assert n_params == sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
"""),
    md(r"""
## Losses

For **regression** the thesis uses the quadratic error
$l(f, y) = \|f - y\|_2^2$, which for the autoencoder (target $y = x$) sums the squared
error over the 784 pixels. Averaged over examples, this is the "MSE" of the thesis's
figures, and `sokit.losses.mse_sum` computes exactly that.

For **classification** the network outputs one score per class, a softmax turns them
into probabilities, and the loss is the cross-entropy $l(f, y) = -\log f_y$, minus the
log of the probability given to the correct class. Unlike the 0-1 error, it is
differentiable; its gradient with respect to the scores is the predicted probability
vector minus the one-hot target.
"""),
    code(r"""
f, y = torch.rand(5, 784), torch.rand(5, 784)
per_example = ((f - y) ** 2).sum(dim=1)
torch.testing.assert_close(losses.mse_sum(f, y), per_example.mean())

scores = torch.randn(5, 10, requires_grad=True)
labels = torch.tensor([3, 0, 9, 9, 1])
ce = losses.cross_entropy(scores, labels)
torch.testing.assert_close(ce, -torch.log(torch.softmax(scores, 1)[range(5), labels]).mean())
ce.backward()
expected_grad = (torch.softmax(scores, 1) - nn.functional.one_hot(labels, 10)) / 5
torch.testing.assert_close(scores.grad, expected_grad.detach())
"""),
    md(r"""
## MNIST reconstructions

`sokit.data.load("mnist")` returns the 60,000 training and 10,000 test digits as
float tensors with pixels in $[0, 1]$, flattened to 784 values (it fetches the original
files on first use and checks their checksums). A few training digits:
"""),
    code(r"""
mnist = data.load("mnist")
fig, axes = plt.subplots(1, 8, figsize=(10, 1.6))
for ax, img, label in zip(axes, mnist.train_x[:8], mnist.train_y[:8]):
    ax.imshow(img.view(28, 28), cmap="gray_r")
    ax.set_title(int(label))
    ax.set_axis_off()
"""),
    md(r"""
We train the autoencoder briefly with minibatch SGD (chapter 2 describes the
algorithm) and show test digits next to their reconstructions. The number of updates
follows the book's profile (`$SOKIT_PROFILE`, "smoke" by default). The smoke profile's
100 updates only teach the network the average digit: every reconstruction is the
same blur. It takes thousands of updates (the "quick" and "full" profiles) before the
reconstructions look like the digits they encode; chapter 2 shows the loss curve of
such a run.
"""),
    code(r"""
profile = experiments.default_profile()
updates = {"smoke": 100, "quick": 3000, "full": 30000}[profile]
torch.manual_seed(0)
ae = models.autoencoder(prescale=15.0)
opt = torch.optim.SGD(ae.parameters(), lr=0.1)
run = train.train(ae, opt, mnist, "mse", updates, batch_size=200, n_evals=3, eval_subset=1000, progress=False)
print(f"{profile} profile: {updates} updates, train MSE {run['train_loss'][-1]:.2f}, "
      f"test MSE {run['test_loss'][-1]:.2f} (on 1,000 examples each)")

ae.eval()
with torch.no_grad():
    recon = ae(mnist.test_x[:8])
fig, axes = plt.subplots(2, 8, figsize=(10, 2.8))
for i in range(8):
    axes[0, i].imshow(mnist.test_x[i].view(28, 28), cmap="gray_r")
    axes[1, i].imshow(recon[i].view(28, 28), cmap="gray_r")
for ax in axes.flat:
    ax.set_axis_off()
axes[0, 0].set_title("test digits", loc="left")
axes[1, 0].set_title(f"reconstructions after {updates} SGD updates", loc="left");
"""),
]


# ---------------------------------------------------------------------------------
# Chapter 2

CHAPTER_2 = [
    md(r"""
# 2. Optimization of neural networks

Training a network means lowering the empirical risk $R(\theta)$ of chapter 1 by
moving the parameters $\theta$. This chapter covers the baseline that the rest of the
book tries to beat: gradient descent, with gradients computed by backpropagation and
estimated on minibatches ({cite}`george2017`, chapter 2). We check the layer Jacobians
of backpropagation against PyTorch's automatic differentiation, then run minibatch
SGD on the MNIST autoencoder.
"""),
    code(r"""
import torch
from torch import nn
from torch.func import jacrev

from sokit import data, experiments, losses, models, plotting

torch.manual_seed(0)
"""),
    md(r"""
## 2.1 Gradient descent and backpropagation

### 2.1.1 Gradient descent

The gradient of the empirical risk is the average of the per-example gradients,

$$\nabla_\theta R = \frac{1}{n} \sum_{i} \nabla_\theta\, l(f_\theta(x_i), y_i),$$

and $-\nabla_\theta R$ is the direction of steepest descent. Gradient descent takes a
step of fixed length scale, the learning rate $\lambda$:

$$\theta \leftarrow \theta - \lambda \nabla_\theta R.$$

Too small a $\lambda$ wastes updates; too large a one overshoots the bottom of the
valley and can make the loss grow. On a quadratic $R(\theta) = \frac12 \theta^\top A
\theta$ the boundary is exact: gradient descent multiplies the component along an
eigenvector of $A$ with eigenvalue $\mu$ by $1 - \lambda \mu$, so it converges when
$\lambda < 2 / \mu_{max}$ and diverges when $\lambda > 2 / \mu_{max}$.
"""),
    code(r"""
A = torch.diag(torch.tensor([1.0, 10.0]))
mu_max = 10.0

def descend(lr, steps=50):
    theta = torch.tensor([1.0, 1.0])
    for _ in range(steps):
        theta = theta - lr * (A @ theta)
    return 0.5 * theta @ A @ theta

start = 0.5 * torch.tensor([1.0, 1.0]) @ A @ torch.tensor([1.0, 1.0])
below, above = descend(0.95 * 2 / mu_max), descend(1.05 * 2 / mu_max)
print(f"R at start {start:.3g}; after 50 steps: lr = 0.95 * 2/mu_max -> {below:.3g}, lr = 1.05 * 2/mu_max -> {above:.3g}")
assert below < start < above
"""),
    md(r"""
### 2.1.2 Backpropagation

Backpropagation computes all these gradients with one backward sweep through the
layers, applying the chain rule layer by layer. For a layer
$h_l = f_l(a_l) = f_l(W_l h_{l-1} + b_l)$,

$$\nabla_{h_{l-1}} l = \left(J^{h_{l-1}}_{a_l}\right)^\top \nabla_{a_l} l
= \left(J^{h_{l-1}}_{a_l}\right)^\top \left(J^{a_l}_{h_l}\right)^\top \nabla_{h_l} l,$$

where $J^x_f$ is the Jacobian of $f$ with respect to $x$, $(J^x_f)_{ij} = \partial f_i /
\partial x_j$. The two Jacobians that carry the signal backward are simple
({cite}`george2017`, section 2.1.2):

$$J^{h_{l-1}}_{a_l} = W_l, \qquad J^{a_l}_{h_l} = \operatorname{diag}\left(f_l'(a_l)\right).$$

![Forward and backward propagation](../figures/backprop.png)

We check both with `torch.func.jacrev` on a sigmoid layer.
"""),
    code(r"""
n_in, n_out = 6, 4
layer = nn.Linear(n_in, n_out)
h_prev = torch.randn(n_in)
a = layer(h_prev).detach()

J_a_h = jacrev(layer)(h_prev)            # d a_l / d h_{l-1}
torch.testing.assert_close(J_a_h, layer.weight.detach())

J_h_a = jacrev(torch.sigmoid)(a)         # d h_l / d a_l
sigmoid_prime = torch.sigmoid(a) * (1 - torch.sigmoid(a))
torch.testing.assert_close(J_h_a, torch.diag(sigmoid_prime))
"""),
    md(r"""
Once $\nabla_{a_l} l$ is known, the gradients with respect to the layer's own
parameters follow from $a_l = W_l h_{l-1} + b_l$ (the thesis writes them as Jacobians
in section 2.1.2):

$$\nabla_{W_l} l = \nabla_{a_l} l \; h_{l-1}^\top, \qquad \nabla_{b_l} l = \nabla_{a_l} l.$$

The weight gradient is an outer product of the backward signal and the forward
signal; the factorized methods of chapter 6 are built on this structure.
"""),
    code(r"""
target = torch.rand(n_out)
a = layer(h_prev)
a.retain_grad()
loss = ((torch.sigmoid(a) - target) ** 2).sum()
loss.backward()

grad_a = a.grad
torch.testing.assert_close(layer.weight.grad, torch.outer(grad_a, h_prev))
torch.testing.assert_close(layer.bias.grad, grad_a)
"""),
    md(r"""
Chaining these rules gives backpropagation for a whole network. Below we write it
out by hand for a three-layer sigmoid MLP on a minibatch of $B$ examples with the loss
averaged over the minibatch: the backward signal of each example is a row of the
matrix $G_l$ (rows $\nabla_{a_l} l$), the forward signals are the rows of $H_{l-1}$, and
the minibatch weight gradient is the average of the outer products,
$\nabla_{W_l} = G_l^\top H_{l-1} / B$. Every gradient matches autograd.
"""),
    code(r"""
B = 16
net = models.mlp([8, 7, 5, 8], activation="sigmoid", out_activation="sigmoid", prescale=4.0)
linears = [m for m in net if isinstance(m, nn.Linear)]
x, y = torch.rand(B, 8), torch.rand(B, 8)

# forward pass, keeping every h_l
hs = [x]
with torch.no_grad():
    for lin in linears:
        hs.append(torch.sigmoid(hs[-1] @ lin.weight.T + lin.bias))

# backward pass by hand: loss = mean over examples of ||h_L - y||^2
grad_h = 2 * (hs[-1] - y) / B                     # rows: gradient of the minibatch loss wrt h_L
by_hand = {}
for l in reversed(range(len(linears))):
    grad_a = grad_h * hs[l + 1] * (1 - hs[l + 1])   # (J_h^a)^T grad_h = f'(a) * grad_h
    by_hand[l] = (grad_a.T @ hs[l], grad_a.sum(0))  # sum over examples of grad_a h^T (1/B is in grad_h)
    grad_h = grad_a @ linears[l].weight             # (J_a^h)^T grad_a = W^T grad_a

losses.mse_sum(net(x), y).backward()
for l, lin in enumerate(linears):
    torch.testing.assert_close(by_hand[l][0], lin.weight.grad)
    torch.testing.assert_close(by_hand[l][1], lin.bias.grad)
print("hand-written backpropagation matches autograd for all", len(linears), "layers")
"""),
    md(r"""
## 2.2 Stochastic gradient descent

The exact gradient needs a pass over all $n$ examples. Minibatch gradient descent
replaces it by the average gradient over a minibatch of $B$ examples, a noisy but
unbiased estimate that is $n / B$ times cheaper; the thesis's experiments use $B = 200$.
With $B = 1$ the method is stochastic gradient descent proper, and the name SGD is
commonly kept for the minibatch version.

`sokit.data.Sampler` draws minibatches by visiting the training set in a fresh
random order each epoch, indexing tensors that already sit on the training device.
With that scheme, the minibatch gradients of one epoch (at fixed parameters) average
exactly to the full gradient when $B$ divides $n$:
"""),
    code(r"""
def gradient(model, xb):
    model.zero_grad()
    losses.mse_sum(model(xb), xb).backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])

n, B = 1200, 200
xs = torch.rand(n, 8)
sampler = data.Sampler(xs, torch.zeros(n), batch_size=B, seed=0)
minibatch_grads = torch.stack([gradient(net, next(sampler)[0]) for _ in range(n // B)])
torch.testing.assert_close(minibatch_grads.mean(0), gradient(net, xs))
print(f"spread of the minibatch gradients around the full gradient: "
      f"{(minibatch_grads - gradient(net, xs)).norm(dim=1).mean():.3g} (full gradient norm {gradient(net, xs).norm():.3g})")
"""),
    md(r"""
### SGD on the MNIST autoencoder

The baseline of every comparison in chapters 5 and 6 is plain SGD on the autoencoder
of chapter 1, with batch 200 and squared error summed over pixels. The thesis does not
print the learning rate and prescale its SGD curve used; `sokit.registry.sgd` states
the values we picked and how. `experiments.load_or_run("sgd_autoencoder")` returns the
stored run for the current profile and trains only when no matching result is stored.
We plot it in the thesis's three views: training loss against updates, training loss
against seconds of training (evaluation excluded), test loss against seconds.
"""),
    code(r"""
record = experiments.load_or_run("sgd_autoencoder")
runs = {f"SGD ({record['profile']} profile)": record}
quick = experiments.load("sgd_autoencoder", "quick")
if quick is not None and record["profile"] != "quick":
    runs["SGD (quick profile, stored)"] = quick
fig = plotting.three_panel(runs, "Minibatch SGD on the MNIST autoencoder")
"""),
    code(r"""
for label, rec in runs.items():
    res, cfg, prov = rec["results"], rec["config"], rec["provenance"]
    print(f"{label}: {res['updates'][-1]:,} updates (lr {cfg['lr']}, prescale {cfg['prescale']}, batch {cfg['batch_size']}), "
          f"train MSE {res['train_loss'][-1]:.2f}, test MSE {res['test_loss'][-1]:.2f}, "
          f"{res['wall_clock_s']:.0f} s of training on {prov['device']}"
          + (f" (evaluated on {cfg['eval_subset']} examples)" if cfg["eval_subset"] else ""))
"""),
    md(r"""
The thesis's SGD reaches a training MSE of 2.11 after $3 \times 10^5$ updates
(Figure 6.2, read off the plot; 1,589 s on a Titan Black). The profile printed
above says how far our stored run went: the quick profile (10,000 updates) is a
miniature that stops at 3 % of the thesis's budget, the smoke profile only checks that
the code path works, and the full profile (`python -m sokit run sgd_autoencoder --profile full`,
meant for a GPU) is the thesis's scale.

## 2.3 Hyperparameters

The learning rate, the minibatch size and the prescale of the initialization are
hyperparameters: gradient descent does not set them; we choose them by running the
same experiment with several values and comparing the final risk. Comparisons
between optimizers are only fair when each one gets a comparable tuning effort
({cite}`george2017`, section 2.3). The thesis's Figure 2.2, which shows how the best
learning rate depends on the prescale for SGD on the autoencoder, comes from the
hyperparameter searches of chapter 4 and is reproduced with them.
"""),
]


def main() -> None:
    write(ROOT / "chapters" / "01_neural_networks.ipynb", CHAPTER_1)
    write(ROOT / "chapters" / "02_optimization.ipynb", CHAPTER_2)


if __name__ == "__main__":
    main()
