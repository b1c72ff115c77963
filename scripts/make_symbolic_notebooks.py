"""Write the derivation notebooks (chapter 3, appendices A and B, errata) with nbformat.

Usage: python scripts/make_symbolic_notebooks.py   (from the repository root)

The notebooks are stored without outputs; every derivation cell ends in an assertion
(sokit.symbolic.check_equal / check_differs, torch.testing.assert_close).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from notebook_cells import COLAB

ROOT = Path(__file__).resolve().parents[1]


# cells whose text/markdown output holds MyST (tables, math) are rendered as MyST
MYST_OUTPUT = {"mystnb": {"markdown_format": "myst"}}


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str, myst_output: bool = False):
    cell = new_code_cell(text.strip("\n"))
    if myst_output:
        cell.metadata.update(MYST_OUTPUT)
    return cell


def notebook(cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=[cells[0], code(COLAB), *cells[1:]])
    for i, cell in enumerate(nb.cells):  # stable ids: regenerating gives the same file
        cell.id = f"cell-{i}"
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


# ---------------------------------------------------------------------------------
# Appendix A


APPENDIX_A = [
    md(r"""
# Appendix A: derivatives of the common losses

The Gauss-Newton matrix of chapter 3 needs, for each loss, the first and second
derivatives with respect to the network output $f$. Appendix A of {cite}`george2017`
lists them for three losses; here sympy derives each one and checks it against the
thesis's expression. All operations on vectors (division, logarithm, powers) are
elementwise, and $\operatorname{diag}(v)$ is the diagonal matrix with $v$ on its diagonal.

We differentiate with respect to a column vector $f$ with three entries: large enough
to see the matrix structure (diagonal or not), small enough to stay fast.
"""),
    code(r"""
import sympy as sp

from sokit import errata
from sokit.symbolic import (
    bce_loss, check_differs, check_equal, cross_entropy_logits_loss, cross_entropy_loss,
    gradient, hessian, quadratic_loss, softmax, sym_vector,
)

f = sym_vector("f", 3, positive=True)  # network output (probabilities for the cross-entropies)
y = sym_vector("y", 3, real=True)      # target
"""),
    md(r"""
## A.1 Quadratic error

For $l(f, y) = \|f - y\|_2^2 = \sum_i (f_i - y_i)^2$ every output contributes
independently, so the gradient is $2(f - y)$ and the Hessian is a multiple of the identity.
"""),
    code(r"""
l = quadratic_loss(f, y)
check_equal(gradient(l, f), 2 * (f - y), "A.1: dl/df = 2 (f - y)")
H_quadratic = hessian(l, f)
H_quadratic
"""),
    md(r"""
The thesis states $\partial^2 l / \partial f^2 = \mathbf{I}$. Differentiating $2(f-y)$
once more gives $2\mathbf{I}$. The next cell asserts both facts: the thesis's form
differs from the computed Hessian, and $2\mathbf{I}$ matches.
"""),
    code(r"""
check_differs(H_quadratic, sp.eye(3), "A.1 as printed: d2l/df2 = I")
check_equal(H_quadratic, 2 * sp.eye(3), "A.1 corrected: d2l/df2 = 2 I")
assert errata.run("quadratic-hessian").confirmed
# a factor 2 in the curvature rescales a damped Newton step and its damping
Hm, eps = sp.Matrix(2, 2, sp.symbols("h0 h1 h1 h2", real=True)), sp.Symbol("epsilon", positive=True)
check_equal((2 * Hm + eps * sp.eye(2)).inv(), (Hm + eps / 2 * sp.eye(2)).inv() / 2, "(2H + eps I)^-1")
"""),
    md(r"""
```{admonition} Erratum (appendix A.1, Table 3.I)
:class: warning
For $l = \|f - y\|^2$ the second derivative is $\partial^2 l/\partial f^2 = 2\mathbf{I}$,
not $\mathbf{I}$; the Gauss-Newton matrix of this loss is $2 J^T J$. The thesis's
$\mathbf{I}$ is the Hessian of $\frac{1}{2}\|f-y\|^2$. A constant factor in the
curvature only rescales a Newton step: $(2H + \epsilon I)^{-1} = \frac{1}{2}(H + \frac{\epsilon}{2}I)^{-1}$,
so rescaling the learning rate and the damping absorbs it, which is why it does no harm
in practice. See the [errata](../errata.ipynb).
```
"""),
    md(r"""
## A.2 Binary cross-entropy

With sigmoid outputs $f_i \in (0, 1)$ and targets $y_i \in [0, 1]$, summed over outputs:
$l(f, y) = -\sum_i y_i \log f_i + (1 - y_i)\log(1 - f_i)$.
"""),
    code(r"""
l = bce_loss(f, y)
dl = gradient(l, f)
check_equal(dl, sp.Matrix([-(y[i] / f[i] - (1 - y[i]) / (1 - f[i])) for i in range(3)]),
            "A.2: dl/df = -(y/f - (1-y)/(1-f))")
H_bce = hessian(l, f)
check_equal(H_bce, sp.diag(*[y[i] / f[i]**2 + (1 - y[i]) / (1 - f[i])**2 for i in range(3)]),
            "A.2: d2l/df2 = diag(y/f^2 + (1-y)/(1-f)^2)")
H_bce
"""),
    md(r"""
The gradient can also be written $\frac{f - y}{f(1-f)}$, which vanishes exactly when the
prediction equals the target:
"""),
    code(r"""
check_equal(dl, sp.Matrix([(f[i] - y[i]) / (f[i] * (1 - f[i])) for i in range(3)]),
            "A.2: dl/df = (f - y) / (f (1 - f))")
"""),
    md(r"""
## A.3 Multiclass cross-entropy on probabilities

Here $f$ is the vector of predicted class probabilities (a softmax output) and $y$ the
target distribution (one-hot for a labelled example): $l(f, y) = -y^T \log f$.
(The thesis's parenthesis "(true, estimated)" has the two roles swapped: $f$ is the
estimate, $y$ the truth.)
"""),
    code(r"""
l = cross_entropy_loss(f, y)
check_equal(gradient(l, f), -sp.Matrix([y[i] / f[i] for i in range(3)]), "A.3: dl/df = -(y/f)")
H_ce = hessian(l, f)
check_equal(H_ce, sp.diag(*[y[i] / f[i]**2 for i in range(3)]), "A.3: d2l/df2 = diag(y/f^2)")
H_ce
"""),
    md(r"""
## Beyond the appendix: cross-entropy on logits

Most code (including `sokit.losses.cross_entropy`) feeds the cross-entropy with the
logits $z$ rather than the probabilities $f = \operatorname{softmax}(z)$. Then
$l = \log\sum_k e^{z_k} - y^T z$ (for targets summing to one), the gradient is
$\operatorname{softmax}(z) - y$ and the Hessian does not depend on the target at all:
$\operatorname{diag}(p) - p p^T$ with $p = \operatorname{softmax}(z)$. Chapter 3 uses this
difference to explain which Gauss-Newton matrix equals which Fisher.
"""),
    code(r"""
z = sym_vector("z", 3, real=True)
p = softmax(z)
l = cross_entropy_logits_loss(z, y)
onehot = sp.Matrix([0, 1, 0])
check_equal(cross_entropy_logits_loss(z, onehot), cross_entropy_loss(p, onehot),
            "logits form = -y^T log softmax(z) for a one-hot y")
check_equal(gradient(l, z), p - y, "dl/dz = softmax(z) - y (target summing to one)")
check_equal(hessian(l, z), sp.diag(*p) - p * p.T, "d2l/dz2 = diag(p) - p p^T")
"""),
]


# ---------------------------------------------------------------------------------
# Appendix B


APPENDIX_B = [
    md(r"""
# Appendix B: the Fisher middle term for each loss

Section 3.2.3 writes the Fisher information matrix of a network as
$\mathbf{F} = \mathbb{E}_{x}\left[J^T D(f_\theta(x)) J\right]$ with $J = \partial f/\partial\theta$.
The middle term is the Fisher of the output distribution with respect to the output,

$$D(f) = \mathbb{E}_{y \sim p(y|f)}\left[\left(\frac{\partial \log p(y|f)}{\partial f}\right)^T
\frac{\partial \log p(y|f)}{\partial f}\right],$$

because the score with respect to $\theta$ is the score with respect to $f$ pulled back by
$J$. Appendix B of {cite}`george2017` derives $D$ for the three losses of appendix A,
read as negative log-likelihoods. Below, sympy computes each score, its outer product and
the expectation (exact enumeration of the outcomes for the discrete distributions,
Gaussian moments or integration for the Gaussian), and checks the result.
"""),
    code(r"""
import sympy as sp
import torch

from sokit import curvature, errata
from sokit.symbolic import (
    check_differs, check_equal, fisher_middle, gn_middle, gradient, log_likelihood,
    quadratic_loss, softmax, sym_matrix, sym_vector,
)

f = sym_vector("f", 2, positive=True)
y = sym_vector("y", 2, real=True)
sigma2 = sp.Symbol("sigma2", positive=True)
"""),
    md(r"""
## From the score in $f$ to the score in $\theta$

For any parameter-to-output Jacobian $J$ (here a generic $2 \times 3$ matrix of symbols),
$\partial \log p/\partial\theta = J^T s$ with $s = \partial\log p/\partial f$, so
$\mathbb{E}[(J^T s)(J^T s)^T] = J^T\,\mathbb{E}[s s^T]\,J = J^T D J$. We check this for the
categorical distribution by summing over the two classes. The thesis prints the product
as $J^T D J^T$, which is not even defined for a non-square $J$.
"""),
    code(r"""
J = sym_matrix("J", 2, 3)
F_theta = sp.zeros(3, 3)
for k in range(2):                      # y = e_k with probability f_k
    s = sp.Matrix([1 / f[k] if i == k else 0 for i in range(2)])
    F_theta += f[k] * (J.T * s) * (J.T * s).T
check_equal(F_theta, J.T * fisher_middle("categorical", f) * J, "F = J^T D J")
assert errata.run("jacobian-transpose").confirmed
"""),
    md(r"""
```{admonition} Erratum (sections 3.2.3-3.3.1)
:class: warning
The Fisher reads $\mathbf{F} = \mathbb{E}_x[J^T D J]$; the thesis's $J^T D J^T$ has a
stray transpose.
```

## B.1 Quadratic error: a Gaussian with variance $\sigma^2$

Read $f$ as the mean of $\mathcal{N}(f, \sigma^2\mathbf{I})$. Then
$\log p(y|f) = -\frac{1}{2\sigma^2}\|y - f\|^2 - \frac{n}{2}\log(2\pi\sigma^2)$ and the
score is $(y - f)/\sigma^2$.
"""),
    code(r"""
logp = log_likelihood("gaussian", f, y, sigma2)
score = gradient(logp, f)
check_equal(score, (y - f) / sigma2, "B.1: score = (y - f) / sigma^2")
D_gauss = fisher_middle("gaussian", f, sigma2)      # E[(y-f)(y-f)^T] / sigma^4 from Gaussian moments
check_equal(D_gauss, sp.eye(2) / sigma2, "B.1: D = I / sigma^2")
D_gauss
"""),
    md(r"""
An independent check of the one expectation that matters, by integrating against the
Gaussian density: $\mathbb{E}[(y - f)^2]/\sigma^4 = 1/\sigma^2$.
"""),
    code(r"""
u, m = sp.symbols("u m", real=True)
density = sp.exp(-(u - m)**2 / (2 * sigma2)) / sp.sqrt(2 * sp.pi * sigma2)
check_equal(sp.integrate(density, (u, -sp.oo, sp.oo)), 1, "the density integrates to one")
check_equal(sp.integrate(((u - m) / sigma2)**2 * density, (u, -sp.oo, sp.oo)), 1 / sigma2,
            "E[score^2] = 1 / sigma^2")
"""),
    md(r"""
So $\mathbf{F} = \frac{1}{\sigma^2}\mathbb{E}_x[J^T J]$. Table 3.II's $\mathbf{I}$ is the
case $\sigma^2 = 1$. The squared error $\|f - y\|^2$ itself is the negative
log-likelihood of the Gaussian with $\sigma^2 = \frac{1}{2}$ (up to a constant), and for
that Gaussian the Fisher term is $2\mathbf{I}$, the Gauss-Newton term of appendix A.1:
"""),
    code(r"""
half = sp.Rational(1, 2)
check_equal(quadratic_loss(f, y), -log_likelihood("gaussian", f, y, half) - sp.log(sp.pi),
            "||f - y||^2 = -log N(y; f, I/2) + const")
check_equal(fisher_middle("gaussian", f, half), gn_middle("quadratic", f, y),
            "Fisher term at sigma^2 = 1/2 equals the GN term of ||f - y||^2")
check_differs(fisher_middle("gaussian", f, 1), gn_middle("quadratic", f, y),
              "Table 3.III as printed: both terms are I")
assert errata.run("quadratic-gn-equals-fisher").confirmed
"""),
    md(r"""
```{admonition} Erratum (Table 3.III)
:class: warning
For the quadratic error the Gauss-Newton term is $2\mathbf{I}$ and the Fisher term of
$\mathcal{N}(f,\sigma^2\mathbf{I})$ is $\mathbf{I}/\sigma^2$. They coincide for
$\sigma^2 = 1/2$, the Gaussian whose negative log-likelihood is $\|f - y\|^2$; with
$\sigma^2 = 1$ the Fisher is half the Gauss-Newton matrix.
```

## B.2 Binary cross-entropy: independent Bernoulli outputs

$\log p(y|f) = \sum_i y_i \log f_i + (1 - y_i)\log(1 - f_i)$ with $y_i \in \{0, 1\}$.
The score is $\frac{y}{f} - \frac{1-y}{1-f} = \frac{y - f}{f(1-f)}$ and
$\mathbb{E}[(y - f)^2] = f(1-f)$.
"""),
    code(r"""
score = gradient(log_likelihood("bernoulli", f, y), f)
check_equal(score, sp.Matrix([(y[i] - f[i]) / (f[i] * (1 - f[i])) for i in range(2)]),
            "B.2: score = (y - f) / (f (1 - f))")
fi = sp.Symbol("f_i", positive=True)
check_equal(fi * (1 - fi)**2 + (1 - fi) * fi**2, fi * (1 - fi), "E[(y - f)^2] = f (1 - f)")
D_bern = fisher_middle("bernoulli", f)              # sums over the 4 outcomes of (y_0, y_1)
check_equal(D_bern, sp.diag(*[1 / (f[i] * (1 - f[i])) for i in range(2)]), "B.2: D = diag(1 / (f (1 - f)))")
D_bern
"""),
    md(r"""
The off-diagonal entries vanish because the outputs are independent and each score has
mean zero.

## B.3 Multiclass cross-entropy: a categorical distribution

$\log p(y|f) = y^T \log f$ with $y$ one-hot, drawn with probabilities $f$. The score is
$y/f$, its outer product is $\operatorname{diag}(y^2/f^2)$ because a one-hot $y$ has a
single non-zero entry, and $\mathbb{E}[y_i^2] = f_i$.
"""),
    code(r"""
score = gradient(log_likelihood("categorical", f, y), f)
check_equal(score, sp.Matrix([y[i] / f[i] for i in range(2)]), "B.3: score = y / f")
D_cat = fisher_middle("categorical", f)             # sum over the classes
check_equal(D_cat, sp.diag(*[1 / f[i] for i in range(2)]), "B.3: D = diag(1 / f)")
assert errata.run("appendix-b3-outer-product").confirmed
D_cat
"""),
    md(r"""
```{note}
The step $(y/f)(y/f)^T = \operatorname{diag}(y^2/f^2)$ holds for one-hot $y$ only (checked
in the [errata](../errata.ipynb) registry); since the expectation runs over one-hot draws
from the model, the result $D = \operatorname{diag}(1/f)$ stands.
```

## The same distribution, parametrized by logits

If the network outputs logits $z$ with $f = \operatorname{softmax}(z)$, the Fisher term
with respect to $z$ is $\operatorname{diag}(p) - pp^T$. Both describe the same Fisher in
parameter space: with $\partial f/\partial z = \operatorname{diag}(p) - pp^T$,
$(\partial f/\partial z)^T \operatorname{diag}(1/p)\, (\partial f/\partial z) = \operatorname{diag}(p) - pp^T$
on the simplex ($\sum_k p_k = 1$).
"""),
    code(r"""
z = sym_vector("z", 3, real=True)
p = softmax(z)
D_logits = fisher_middle("categorical_logits", z)
check_equal(D_logits, sp.diag(*p) - p * p.T, "D (logits) = diag(p) - p p^T")
q = sym_vector("p", 3, positive=True)
on_simplex = {q[2]: 1 - q[0] - q[1]}
dfdz = sp.diag(*q) - q * q.T
check_equal((dfdz.T * sp.diag(*[1 / qi for qi in q]) * dfdz).subs(on_simplex),
            dfdz.subs(on_simplex), "the two parametrizations give the same Fisher")
"""),
    md(r"""
## The symbolic table against `sokit.curvature`

`sokit.curvature.fisher_middle` implements these terms numerically (for the exact Fisher
of small torch models). The cell below evaluates the symbolic results at random outputs
and compares.
"""),
    code(r"""
torch.manual_seed(0)
probs = torch.softmax(torch.randn(1, 2, dtype=torch.float64), dim=1)
logits = torch.randn(1, 3, dtype=torch.float64)
at = lambda M, sym, val: torch.tensor(
    [[float(e.subs(dict(zip(sym, val[0].tolist())))) for e in M.row(i)] for i in range(M.rows)],
    dtype=torch.float64)
torch.testing.assert_close(curvature.fisher_middle(probs, "gaussian")[0], at(D_gauss.subs(sigma2, 1), f, probs))
torch.testing.assert_close(curvature.fisher_middle(probs, "bernoulli")[0], at(D_bern, f, probs))
torch.testing.assert_close(curvature.fisher_middle(probs, "categorical", "probs")[0], at(D_cat, f, probs))
torch.testing.assert_close(curvature.fisher_middle(logits, "categorical", "logits")[0], at(D_logits, z, logits))
"""),
]


# ---------------------------------------------------------------------------------
# Chapter 3


CHAPTER_3 = [
    md(r"""
# Second order methods in neural networks

Gradient descent uses the slope of the risk and nothing else. Second order methods also
use its curvature. This chapter follows chapter 3 of {cite}`george2017`: the Newton step
and its damped variant, the Gauss-Newton approximation of the Hessian, the Fisher
information matrix and the natural gradient, the structure the two matrices share, and a
shortcut for the Gauss-Newton matrix of the cross-entropy. Every claim is checked in a
code cell: symbolically with sympy (`sokit.symbolic`) where the statement is
algebra, numerically against exact `torch.func` quantities (`sokit.curvature`) where
it is about a network. Where a statement of the thesis fails its check, the cell asserts
the discrepancy and a box gives the corrected result.
"""),
    code(r"""
import sympy as sp
import torch
from IPython.display import Markdown, display
from torch import nn

from sokit import curvature, errata
from sokit.symbolic import (
    LOSSES, check_differs, check_equal, fisher_middle, gn_middle, gradient, hessian,
    softmax, sym_matrix, sym_symmetric, sym_vector, vec,
)
"""),
    md(r"""
## 3.1 Second order methods

### 3.1.1 The Newton step

Around a point $x$, a twice differentiable function is approximated by its second order
Taylor expansion
$f(x + \Delta x) \approx f(x) + g^T\Delta x + \frac{1}{2}\Delta x^T \mathbf{H}\Delta x$,
with $g$ the gradient and $\mathbf{H}$ the Hessian at $x$. The model's gradient in
$\Delta x$ is $g + \mathbf{H}\Delta x$; setting it to zero gives the Newton step
$\Delta x = -\mathbf{H}^{-1} g$ (eq 3.1.1), a minimum of the model when $\mathbf{H}$ is
positive definite.
"""),
    code(r"""
g = sym_vector("g", 2, real=True)
H = sym_symmetric("H", 2, real=True)
dx = sym_vector("dx", 2, real=True)
quad_model = (g.T * dx)[0, 0] + (dx.T * H * dx)[0, 0] / 2
check_equal(gradient(quad_model, dx), g + H * dx, "gradient of the quadratic model")
check_equal(hessian(quad_model, dx), H, "curvature of the quadratic model")
newton = -H.inv() * g
check_equal(gradient(quad_model, dx).subs(dict(zip(dx, newton))), sp.zeros(2, 1),
            "the Newton step is a stationary point of the model")
"""),
    md(r"""
On a quadratic function the model is exact, so one Newton step lands on the minimum,
whatever the conditioning:
"""),
    code(r"""
torch.manual_seed(0)
Q = torch.randn(5, 5, dtype=torch.float64)
A = Q @ torch.diag(torch.logspace(-3, 1, 5, dtype=torch.float64)) @ Q.T + 1e-3 * torch.eye(5, dtype=torch.float64)
b = torch.randn(5, dtype=torch.float64)
x0 = torch.randn(5, dtype=torch.float64)
grad0 = A @ x0 - b                       # gradient of 1/2 x^T A x - b^T x
x1 = x0 - torch.linalg.solve(A, grad0)   # one Newton step
torch.testing.assert_close(A @ x1, b)    # the minimizer solves A x = b
"""),
    md(r"""
The thesis motivates the inverse by saying that at a minimum the Hessian is positive
definite. That is a sufficient condition for a strict minimum, not a consequence of
having one: $x^4$ has its minimum at $0$, where its second derivative is $0$.
"""),
    code(r"""
x = sp.Symbol("x", real=True)
check_equal(sp.diff(x**4, x, 2).subs(x, 0), 0, "second derivative of x^4 at its minimum")
assert errata.run("min-implies-pd").confirmed
"""),
    md(r"""
```{admonition} Erratum (section 3.1.1)
:class: warning
At a minimum the Hessian is positive **semi**-definite. Positive definiteness is an extra
assumption; it is what makes the Newton step well defined, and the damping of 3.1.3 is a
way to enforce it.
```

### 3.1.2 The learning rate as a curvature

Replacing $\mathbf{H}$ by $\lambda\mathbf{I}$ turns the Newton step into a gradient step
with learning rate $1/\lambda$: plain gradient descent assumes the same curvature in every
direction.
"""),
    code(r"""
lam = sp.Symbol("lambda", positive=True)
step = sp.solve(list(gradient((g.T * dx)[0, 0] + lam * (dx.T * dx)[0, 0] / 2, dx)), list(dx), dict=True)[0]
check_equal(sp.Matrix([step[d] for d in dx]), -g / lam, "H = lambda I gives dx = -g / lambda")
"""),
    md(r"""
### 3.1.3 Tikhonov damping

Far from $x$ the quadratic model is wrong, and directions of small curvature produce
huge steps. Adding $\frac{\epsilon}{2}\|\Delta x\|^2$ to the model gives the damped step
$-(\mathbf{H} + \epsilon\mathbf{I})^{-1} g$. For large $\epsilon$ it becomes a gradient step
with learning rate $1/\epsilon$, so $\epsilon$ interpolates between Newton and gradient
descent.
"""),
    code(r"""
eps = sp.Symbol("epsilon", positive=True)
damped_model = quad_model + eps * (dx.T * dx)[0, 0] / 2
damped = -(H + eps * sp.eye(2)).inv() * g
check_equal(gradient(damped_model, dx).subs(dict(zip(dx, damped))), sp.zeros(2, 1),
            "damped Newton step is stationary for the damped model")
check_equal(damped.applyfunc(lambda e: sp.limit(eps * e, eps, sp.oo)), -g,
            "epsilon * step -> -g as epsilon -> infinity")
"""),
    md(r"""
### 3.1.4 The Gauss-Newton approximation

For one example, the loss is $l(f_\theta(x), y)$. Two applications of the chain rule give
the Hessian with respect to the parameters:

$$\frac{\partial^2 l}{\partial\theta^2} = \underbrace{J^T \frac{\partial^2 l}{\partial f^2} J}_{\text{Gauss-Newton } G_f}
+ \sum_j \frac{\partial l}{\partial f_j}\,\nabla^2_\theta f_j ,$$

with $J = \partial f/\partial\theta$. The second term is weighted by the loss gradient,
so it vanishes where the prediction is optimal for the example. We check the identity
symbolically on a two-layer network $f = V\tanh(Ux)$ with $2\times 2$ matrices $U, V$
(eight parameters), for the quadratic loss and for the cross-entropy on logits.
"""),
    code(r"""
xin = sym_vector("x", 2, real=True)
U, V = sym_matrix("u", 2, 2, real=True), sym_matrix("v", 2, 2, real=True)
theta = sp.Matrix.vstack(vec(U), vec(V))
net = V * (U * xin).applyfunc(sp.tanh)
fo, yo = sym_vector("f", 2, real=True), sym_vector("y", 2, real=True)
at_net = dict(zip(fo, net))
Jac = net.jacobian(theta)
for name in ("quadratic", "cross_entropy_logits"):
    l_f = LOSSES[name](fo, yo)
    full = hessian(l_f.subs(at_net), theta)
    gn = Jac.T * hessian(l_f, fo).subs(at_net) * Jac
    residual = sum((gradient(l_f, fo)[j].subs(at_net) * hessian(net[j], theta) for j in range(2)),
                   sp.zeros(8, 8))
    check_equal(full, gn + residual, f"Hessian = GN + residual ({name})")
"""),
    md(r"""
The same identity, numerically, on a small tanh network in float64, with the exact
Hessian and Gauss-Newton matrices of `sokit.curvature` (both `torch.func`). The
residual term is computed separately from the Hessians of the outputs. We also check the
thesis's remark that the residual vanishes when every prediction matches its target.
"""),
    code(r"""
torch.manual_seed(0)
net_t = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
xs = torch.randn(5, 3, dtype=torch.float64)
ys = torch.randn(5, 2, dtype=torch.float64)

def sq_loss(out, target):          # ||f - y||^2 summed over outputs, mean over examples
    return ((out - target) ** 2).sum(1).mean()

def residual_term(model, loss_fn, x, y):
    theta0 = curvature.flat_params(model)
    out = model(x)
    dl_df = torch.autograd.grad(loss_fn(out, y), out)[0]          # includes the 1/n of the mean
    shapes = [(n, p.shape) for n, p in model.named_parameters()]
    def output(th):
        params, i = {}, 0
        for n, s in shapes:
            params[n] = th[i:i + s.numel()].reshape(s); i += s.numel()
        return torch.func.functional_call(model, params, (x,))
    return torch.func.hessian(lambda th: (output(th) * dl_df).sum())(theta0)

H_t = curvature.hessian(net_t, sq_loss, xs, ys)
G_t = curvature.gauss_newton(net_t, sq_loss, xs, ys)
torch.testing.assert_close(H_t, G_t + residual_term(net_t, sq_loss, xs, ys))
assert (H_t - G_t).abs().max() > 1e-2        # away from the targets the residual matters
with torch.no_grad():
    ys_fit = net_t(xs)                        # targets the network already predicts
torch.testing.assert_close(curvature.hessian(net_t, sq_loss, xs, ys_fit),
                           curvature.gauss_newton(net_t, sq_loss, xs, ys_fit))
"""),
    md(r"""
#### Tables 3.I to 3.III, computed

The Gauss-Newton middle term is $\partial^2 l/\partial f^2$ (Table 3.I); the Fisher
middle term is $D(f) = \mathbb{E}_{y\sim p(y|f)}[s s^T]$ with the score
$s = \partial\log p(y|f)/\partial f$ (Table 3.II, derived in [appendix B](appendix_b_fisher.ipynb)).
The next cell computes both with sympy for two outputs, checks that each is diagonal
with the same entry in every position (or has the stated closed form), compares it with
the thesis's entry, and renders the tables. The last rows (logits) are not in the thesis.
"""),
    code(r"""
n = 2
f3 = sym_vector("f", n, positive=True)
y3 = sym_vector("y", n, real=True)
z3 = sym_vector("z", n, real=True)
s2 = sp.Symbol("sigma^2", positive=True)
fi, yi = sp.Symbol("f_i", positive=True), sp.Symbol("y_i", real=True)
p3 = softmax(z3)

def diagonal_entry(M):
    # M must be diagonal with entry e(f_i, y_i) at (i, i); returns e
    check_equal(M - sp.diag(*M.diagonal()), sp.zeros(n, n), "off-diagonal entries vanish")
    e = M[0, 0].subs({f3[0]: fi, y3[0]: yi})
    for k in range(n):
        check_equal(M[k, k], e.subs({fi: f3[k], yi: y3[k]}), f"entry {k} has the common form")
    shown = sp.collect(sp.expand(e), 1 / (fi - 1)**2)       # group the (1 - f_i) terms
    check_equal(shown, e, "display form")
    return shown

def is_equal(a, b):
    try:
        check_equal(a, b)
        return True
    except AssertionError:
        return False

def render(M):
    if is_equal(M, sp.diag(*p3) - p3 * p3.T):
        return r"$\operatorname{diag}(p) - pp^T,\ p = \operatorname{softmax}(z)$"
    e = diagonal_entry(M)
    return f"${sp.latex(e)}\\,\\mathbf{{I}}$" if e.is_number or e == 1 / s2 else \
        f"$\\operatorname{{diag}}_i\\left({sp.latex(e)}\\right)$"

def agrees(M, thesis, erratum=None):
    try:
        check_equal(M, thesis)
        return "yes"
    except AssertionError:
        assert erratum is not None and errata.run(erratum).confirmed
        return f"no: erratum `{erratum}`"

def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])

I3 = sp.eye(n)
GN = {
    "quadratic error": gn_middle("quadratic", f3, y3),
    "binary cross-entropy": gn_middle("bce", f3, y3),
    "multiclass cross-entropy (probabilities)": gn_middle("cross_entropy", f3, y3),
    "multiclass cross-entropy (logits)": gn_middle("cross_entropy_logits", z3, y3),
}
FISHER = {
    "quadratic error": fisher_middle("gaussian", f3, s2),
    "binary cross-entropy": fisher_middle("bernoulli", f3),
    "multiclass cross-entropy (probabilities)": fisher_middle("categorical", f3),
    "multiclass cross-entropy (logits)": fisher_middle("categorical_logits", z3),
}
THESIS_GN = {
    "quadratic error": (I3, "quadratic-hessian", r"$\mathbf{I}$"),
    "binary cross-entropy": (sp.diag(*[y3[k] / f3[k]**2 + (1 - y3[k]) / (1 - f3[k])**2 for k in range(n)]),
                             None, r"$\frac{y}{f^2} + \frac{1-y}{(1-f)^2}$"),
    "multiclass cross-entropy (probabilities)": (sp.diag(*[y3[k] / f3[k]**2 for k in range(n)]),
                                                 None, r"$\operatorname{diag}(y/f^2)$"),
}
THESIS_FISHER = {
    "quadratic error": (I3, r"$\mathbf{I}$"),
    "binary cross-entropy": (sp.diag(*[1 / (f3[k] * (1 - f3[k])) for k in range(n)]), r"$\frac{1}{f(1-f)}$"),
    "multiclass cross-entropy (probabilities)": (sp.diag(*[1 / f3[k] for k in range(n)]),
                                                 r"$\operatorname{diag}(1/f)$"),
}
rows_1, rows_2 = [], []
for name in GN:
    thesis, erratum, shown = THESIS_GN.get(name, (None, None, "(not in the thesis)"))
    rows_1.append([name, render(GN[name]), shown, agrees(GN[name], thesis, erratum) if thesis is not None else ""])
    thesis, shown = THESIS_FISHER.get(name, (None, "(not in the thesis)"))
    F_here = FISHER[name].subs(s2, 1)   # the thesis's Gaussian has unit variance
    rows_2.append([name, render(FISHER[name]), shown, agrees(F_here, thesis) + (" (at $\\sigma^2 = 1$)" if name == "quadratic error" else "") if thesis is not None else ""])
display(Markdown("**Table 3.I (computed).** Gauss-Newton middle term $\\partial^2 l/\\partial f^2$, one example.\n\n"
                 + table(["loss", "computed", "thesis", "agrees"], rows_1)))
display(Markdown("**Table 3.II (computed).** Fisher middle term $D(f)$; the quadratic error read as $\\mathcal{N}(f, \\sigma^2 \\mathbf{I})$.\n\n"
                 + table(["loss", "computed", "thesis", "agrees"], rows_2)))
""", myst_output=True),
    md(r"""
Table 3.III puts the two middle terms side by side. For the negative log-likelihood
losses the Gauss-Newton term depends on the target and the Fisher term does not, but
averaging the Gauss-Newton term over targets drawn from the model gives back the Fisher
term (the expected Hessian of $-\log p$ equals the expected outer product of scores).
For the cross-entropy on logits the two are equal for every target.
"""),
    code(r"""
def expected_over_model(M, name):
    # E_{y ~ p(y|f)} of a GN term that is affine in y: substitute E[y] = f (or softmax(z))
    mean = {"quadratic error": f3, "binary cross-entropy": f3,
            "multiclass cross-entropy (probabilities)": f3,
            "multiclass cross-entropy (logits)": p3}[name]
    return M.subs(dict(zip(y3, mean)))

rows_3 = []
for name in GN:
    F_match = FISHER[name].subs(s2, sp.Rational(1, 2)) if name == "quadratic error" else FISHER[name]
    check_equal(expected_over_model(GN[name], name), F_match, f"E_y[GN term] = Fisher term ({name})")
    same = is_equal(GN[name], F_match)
    rows_3.append([name, render(GN[name]), render(FISHER[name]),
                   "for every $y$" if same else "in expectation over $y \\sim p_\\theta$ only"])
    if name == "quadratic error":
        rows_3[-1][-1] += " (with $\\sigma^2 = 1/2$)"
check_differs(GN["multiclass cross-entropy (probabilities)"], FISHER["multiclass cross-entropy (probabilities)"],
              "GN and Fisher terms differ on probability outputs")
check_equal(GN["multiclass cross-entropy (logits)"], FISHER["multiclass cross-entropy (logits)"],
            "GN term = Fisher term on logits")
assert errata.run("quadratic-gn-equals-fisher").confirmed
display(Markdown("**Table 3.III (computed).** Gauss-Newton and Fisher middle terms.\n\n"
                 + table(["loss", "Gauss-Newton $D(f, y)$", "Fisher $D(f)$", "GN term = Fisher term"], rows_3)))
""", myst_output=True),
    md(r"""
```{admonition} Erratum (Tables 3.I and 3.III)
:class: warning
For $l = \|f - y\|^2$ the Gauss-Newton term is $2\mathbf{I}$, not $\mathbf{I}$
(appendix A.1). It equals the Fisher term of $\mathcal{N}(f, \sigma^2\mathbf{I})$ for
$\sigma^2 = 1/2$; with the unit variance of Table 3.II the Fisher is half the
Gauss-Newton matrix.
```

### 3.1.5 Block-diagonal approximation

Ignoring the interactions between layers makes the curvature block diagonal, and a block
diagonal matrix is inverted block by block:
"""),
    code(r"""
H1, H2 = sym_symmetric("a", 2, real=True), sym_matrix("b", 1, 1, real=True)
block = sp.diag(H1, H2)
check_equal(block.inv(), sp.diag(H1.inv(), H2.inv()), "inverse of a block-diagonal matrix")
"""),
    md(r"""
This is an approximation of the true inverse: on the small network above, the layer
blocks of the inverse Gauss-Newton matrix (damped, since it is singular) differ from the
inverses of its layer blocks.
"""),
    code(r"""
damped_G = G_t + 1e-1 * torch.eye(G_t.shape[0], dtype=torch.float64)
first = slice(0, 3 * 4 + 4)                   # weight and bias of the first Linear
exact_block = torch.linalg.inv(damped_G)[first, first]
approx_block = torch.linalg.inv(damped_G[first, first])
print(f"relative difference: {((exact_block - approx_block).norm() / exact_block.norm()).item():.2f}")
assert (exact_block - approx_block).norm() > 1e-3 * exact_block.norm()
"""),
    md(r"""
## 3.2 The natural gradient

### 3.2.1 The Fisher from the KL divergence

The natural gradient measures a step by how much it changes the model's distribution,
through $\mathrm{KL}(p_\theta\,\|\,p_{\theta+\Delta\theta})$. This divergence and its
gradient vanish at $\Delta\theta = 0$, and its Hessian there is the Fisher information
matrix $\mathbf{F} = \mathbb{E}[s s^T]$, $s = \nabla_\theta\log p_\theta$. Its second order
expansion is therefore $\frac{1}{2}\Delta\theta^T\mathbf{F}\Delta\theta$, in both
directions of the KL. We check this symbolically for a softmax over two logits, along a
direction $d$:
"""),
    code(r"""
th2, d2 = sym_vector("theta", 2, real=True), sym_vector("d", 2, real=True)
t = sp.Symbol("t", real=True)
p_a, p_b = softmax(th2), softmax(th2 + t * d2)
kl = sum(p_a[k] * (sp.log(p_a[k]) - sp.log(p_b[k])) for k in range(2))
F2 = fisher_middle("categorical_logits", th2)
dFd = (d2.T * F2 * d2)[0, 0]
check_equal(kl.subs(t, 0), 0, "KL vanishes at t = 0")
check_equal(sp.diff(kl, t).subs(t, 0), 0, "no first order term")
coefficient = sp.diff(kl, t, 2).subs(t, 0) / 2           # coefficient of t^2
check_differs(coefficient, dFd, "section 3.2.1 as printed: KL = d^T F d + o")
check_equal(coefficient, dFd / 2, "KL = 1/2 d^T F d + o")
assert errata.run("kl-half").confirmed                     # also checks the swapped KL
"""),
    md(r"""
```{admonition} Erratum (section 3.2.1)
:class: warning
$\mathrm{KL}(p_\theta \| p_{\theta+\Delta\theta}) = \frac{1}{2}\Delta\theta^T\mathbf{F}\Delta\theta + o(\|\Delta\theta\|^2)$,
and the same holds for the swapped divergence. The thesis drops the $\frac{1}{2}$; the
natural gradient's direction is unaffected, only the scale of its trust region.
```

Numerically, on a small softmax network: the Hessian in $\theta$ of the KL between the
network's predictions at $\theta_0$ and at $\theta$, averaged over inputs, equals at
$\theta_0$ the exact Fisher from `sokit.curvature`, which in turn equals the
expectation of score outer products over the classes (summed exactly, not sampled).
"""),
    code(r"""
torch.manual_seed(1)
clf = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()   # outputs logits
xc = torch.randn(6, 3, dtype=torch.float64)
theta0 = curvature.flat_params(clf)
shapes = [(n_, p_.shape) for n_, p_ in clf.named_parameters()]

def logits_at(th, x=xc):
    params, i = {}, 0
    for n_, s_ in shapes:
        params[n_] = th[i:i + s_.numel()].reshape(s_); i += s_.numel()
    return torch.func.functional_call(clf, params, (x,))

logp0 = torch.log_softmax(logits_at(theta0), 1).detach()
mean_kl = lambda th: (logp0.exp() * (logp0 - torch.log_softmax(logits_at(th), 1))).sum(1).mean()
F_kl = torch.func.hessian(mean_kl)(theta0)
F_exact = curvature.fisher(clf, xc, "categorical", param="logits")
scores = torch.func.jacrev(lambda th: torch.log_softmax(logits_at(th), 1))(theta0)   # (B, classes, P)
F_scores = torch.einsum("bk,bkp,bkq->pq", logp0.exp(), scores, scores) / xc.shape[0]
torch.testing.assert_close(F_kl, F_exact)
torch.testing.assert_close(F_scores, F_exact)
"""),
    md(r"""
### 3.2.2 Natural gradient descent

Penalizing both the size of the step and the change of distribution,
$\min_{\Delta\theta}\ \Delta\theta^T\nabla_\theta R + \frac{1}{2\lambda}\Delta\theta^T\Delta\theta + \frac{1}{2\epsilon}\Delta\theta^T\mathbf{F}\Delta\theta$,
gives the closed form $\Delta\theta^* = -\lambda\left(\mathbf{I} + \frac{\lambda}{\epsilon}\mathbf{F}\right)^{-1}\nabla_\theta R$
{cite}`amari1998natural`:
"""),
    code(r"""
gR, dth = sym_vector("g", 2, real=True), sym_vector("dtheta", 2, real=True)
Fs = sym_symmetric("F", 2, real=True)
objective = (dth.T * gR)[0, 0] + (dth.T * dth)[0, 0] / (2 * lam) + (dth.T * Fs * dth)[0, 0] / (2 * eps)
solution = sp.solve(list(gradient(objective, dth)), list(dth), dict=True)[0]
check_equal(sp.Matrix([solution[d] for d in dth]), -lam * (sp.eye(2) + lam / eps * Fs).inv() * gR,
            "natural gradient: -lambda (I + lambda/eps F)^-1 grad R")
"""),
    md(r"""
### 3.2.3 The Fisher with Jacobians

Because $\log p_\theta(y|x)$ depends on $\theta$ only through the output $f_\theta(x)$,
the Fisher is $\mathbb{E}_x[J^T D(f) J]$ with the middle terms of Table 3.II
(the thesis prints $J^T D J^T$; see the [errata](../errata.ipynb)). The previous cell
already compared `curvature.fisher`, which uses this form, with the score outer products.
"""),
    code(r"""
assert errata.run("jacobian-transpose").confirmed
"""),
    md(r"""
## 3.3 Gauss-Newton and Fisher share a structure

### 3.3.1 One form, two middle terms

Both matrices read $\frac{1}{n}\sum_i J_i^T D_i J_i$; only the middle term differs
(Table 3.III). For the cross-entropy on logits the middle terms coincide, so the
Gauss-Newton matrix *is* the Fisher, whatever the labels; for the squared error, the
Gauss-Newton matrix is twice the unit-variance Gaussian Fisher.
"""),
    code(r"""
labels = torch.randint(0, 3, (6,))
ce_logits = lambda out, y: torch.nn.functional.cross_entropy(out, y)
torch.testing.assert_close(curvature.gauss_newton(clf, ce_logits, xc, labels), F_exact)
torch.testing.assert_close(curvature.gauss_newton(net_t, sq_loss, xs, ys),
                           2 * curvature.fisher(net_t, xs, "gaussian"))
"""),
    md(r"""
### 3.3.2 Reading the metric in output space

Since $J_i\Delta\theta$ is the first order change $\Delta f_i$ of the output for example
$i$, the quadratic form is an average over examples of output-space norms:
$\Delta\theta^T\left(\frac{1}{n}\sum_i J_i^T D_i J_i\right)\Delta\theta = \frac{1}{n}\sum_i \Delta f_i^T D_i \Delta f_i$.
Both Gauss-Newton and natural gradient thus penalize steps that move some outputs a lot,
measured by $D_i$, which spreads the effect of an update over the examples. How $D_i$
weighs an example depends on the output space it is read in. On probabilities,
$D = \operatorname{diag}(1/f)$ (Table 3.II) makes a given change of a small predicted
probability expensive, so confident predictions weigh more, as the thesis notes. On
logits, $D = \operatorname{diag}(p) - pp^T$ vanishes as the softmax saturates. Both
describe the same Fisher (checked in section 3.4 below), because a saturated softmax
also barely moves its probabilities.
"""),
    code(r"""
dtheta = torch.randn(theta0.numel(), dtype=torch.float64)
_, delta_f = torch.func.jvp(logits_at, (theta0,), (dtheta,))              # J_i dtheta, all i
D_i = curvature.fisher_middle(logits_at(theta0).detach(), "categorical", "logits")
torch.testing.assert_close(dtheta @ F_exact @ dtheta,
                           torch.einsum("bk,bkl,bl->", delta_f, D_i, delta_f) / xc.shape[0])
step = 1e-6                                                                 # J dtheta is the first order change
torch.testing.assert_close((logits_at(theta0 + step * dtheta) - logits_at(theta0)) / step, delta_f,
                           atol=1e-5, rtol=1e-5)
z_confident = torch.tensor([[8.0, 0.0, 0.0]], dtype=torch.float64)     # a confident prediction
assert curvature.fisher_middle(torch.softmax(z_confident, 1), "categorical", "probs").max() > 1e3
assert curvature.fisher_middle(z_confident, "categorical", "logits").abs().max() < 1e-3
"""),
    md(r"""
## 3.4 A cheaper Gauss-Newton matrix for the cross-entropy

Take the cross-entropy on **probability** outputs, $l = -y^T\log f$ with a one-hot $y$
selecting class $t$. Its gradient has a single non-zero entry $-1/f_t$ and its Hessian a
single non-zero entry $1/f_t^2$, the square of that gradient entry. Hence
$\partial^2 l/\partial f^2 = (\partial l/\partial f)(\partial l/\partial f)^T$ and

$$G_f = J^T \frac{\partial l}{\partial f}\frac{\partial l}{\partial f}^T J = \nabla_\theta l\,\nabla_\theta l^T \qquad \text{(eq 3.4.1)},$$

the outer product of the very gradient that backpropagation computes.
"""),
    code(r"""
f_p = sym_vector("f", 3, positive=True)
onehot = sp.Matrix([0, 1, 0])                               # true class t = 1
l_p = LOSSES["cross_entropy"](f_p, onehot)
dl_p = gradient(l_p, f_p)
check_equal(hessian(l_p, f_p), dl_p * dl_p.T, "d2l/df2 = (dl/df)(dl/df)^T for one-hot y")
Jp = sym_matrix("J", 3, 2)                                  # any 3-output, 2-parameter Jacobian
grad_theta = Jp.T * dl_p
check_equal(Jp.T * hessian(l_p, f_p) * Jp, grad_theta * grad_theta.T, "eq 3.4.1: G_f = grad grad^T")
check_differs(hessian(l_p, f_p)[1, 1], -dl_p[1]**2, "section 3.4 text: (d2l/df2)_tt = -(dl/df)_t^2")
assert errata.run("gn-trick-sign").confirmed
"""),
    md(r"""
```{admonition} Erratum (section 3.4, text)
:class: warning
The sentence before eq 3.4.1 writes $(\partial^2 l/\partial f^2)_{tt} = -(\partial l/\partial f)_t^2$;
the sign is $+$, as in the displayed derivation that follows it. For a soft
(non one-hot) target the identity fails: $\operatorname{diag}(y/f^2) \neq (y/f)(y/f)^T$.
```

Numerically, on a small MLP whose last layer is a softmax (so that the network output
*is* the probability vector): for each example, the exact Gauss-Newton matrix equals the
outer product of that example's gradient, and over a batch it equals the average of the
outer products (the "empirical Fisher").
"""),
    code(r"""
probs_net = nn.Sequential(*clf, nn.Softmax(dim=1))           # same weights, probability outputs
ce_probs = lambda out, y: -torch.log(out.gather(1, y[:, None])).mean()
per_example = []
for i in range(xc.shape[0]):
    xi, yi_ = xc[i:i + 1], labels[i:i + 1]
    probs_net.zero_grad()
    ce_probs(probs_net(xi), yi_).backward()
    gi = torch.cat([p_.grad.reshape(-1) for p_ in probs_net.parameters()])
    torch.testing.assert_close(curvature.gauss_newton(probs_net, ce_probs, xi, yi_), torch.outer(gi, gi))
    per_example.append(gi)
grads = torch.stack(per_example)
GN_probs = curvature.gauss_newton(probs_net, ce_probs, xc, labels)
torch.testing.assert_close(GN_probs, grads.T @ grads / xc.shape[0])
"""),
    md(r"""
### Which claim holds where

The Gauss-Newton matrix depends on where the network is cut into "model" and "loss".
Cutting the same network at the logits gives the Gauss-Newton matrix
$J_z^T(\operatorname{diag}(p) - pp^T)J_z$, which is the true Fisher (section 3.3.1) and
no longer the outer product of gradients. The Fisher itself does not depend on the cut
(the distribution is the same), but the two Gauss-Newton matrices differ: the one on
probabilities is the empirical Fisher, rank at most $n$ on a batch of $n$ examples; the one
on logits is the true Fisher, and it ignores the labels.
"""),
    code(r"""
GN_logits = curvature.gauss_newton(clf, ce_logits, xc, labels)
F_probs = curvature.fisher(probs_net, xc, "categorical", param="probs")
torch.testing.assert_close(GN_logits, F_exact)             # logits cut: GN = true Fisher
torch.testing.assert_close(F_probs, F_exact)               # the Fisher does not depend on the cut
gap = (GN_probs - GN_logits).norm() / GN_logits.norm()
print(f"relative gap between the two Gauss-Newton matrices: {gap.item():.2f}")
assert gap > 0.1                                           # probabilities cut: GN = empirical Fisher != Fisher
assert torch.linalg.matrix_rank(GN_probs) <= xc.shape[0] < torch.linalg.matrix_rank(GN_logits)
"""),
    md(r"""
| cut of the network | Gauss-Newton matrix | equals the outer product of gradients? | equals the true Fisher? |
|---|---|---|---|
| loss on probabilities $f = \operatorname{softmax}(z)$ (eq 3.4.1) | $J_f^T\operatorname{diag}(y/f^2)J_f$ | yes (one-hot $y$) | only in expectation over $y \sim p_\theta$ |
| loss on logits $z$ | $J_z^T(\operatorname{diag}(p)-pp^T)J_z$ | no | yes, for any labels |

Both rows are asserted in the cells above. The shortcut of eq 3.4.1 is exact for the
Gauss-Newton matrix of the probability cut; what it buys is the empirical Fisher, which
agrees with the true Fisher only in expectation over labels drawn from the model
(Table 3.III), not for the labels of the data set.
"""),
]


# ---------------------------------------------------------------------------------
# Errata page


ERRATA = [
    md(r"""
# Errata

Each row below is produced by a check in `sokit.errata`: the check computes the
thesis's statement and our correction, and asserts that the first fails and the second
holds. The table is regenerated every time the book is built, so a row marked
**FAILED** would mean that a check no longer confirms its erratum (and the build stops,
since the cell below asserts that every check passes).

Kinds: *error* marks a statement that is wrong as printed; *scope* marks a step that is
true only in a special case (which happens to be the case used).
"""),
    code(r"""
from IPython.display import Markdown, display

from sokit import errata

results = errata.run_all()
display(Markdown(errata.markdown_table(results)))
failed = [r.erratum.id for r in results if not r.confirmed]
assert not failed, f"errata checks that no longer confirm their erratum: {failed}"
""", myst_output=True),
    code(r"""
kinds = {}
for r in results:
    kinds.setdefault(r.erratum.kind, []).append(r.erratum.id)
display(Markdown("\n".join(f"- **{k}**: " + ", ".join(f"`{i}`" for i in ids) for k, ids in kinds.items())))
""", myst_output=True),
    md(r"""
## Inconsistencies that are not mathematical statements

These cannot be checked by computation and are listed for completeness:

- Figure 6.2: the caption's colours and the legend's labels disagree on which curve is
  ACP with fixed $\alpha$ and which is ACP with the heuristic $\alpha$ (our chapter 6
  follows the legend).
- Appendices A.3 and B.3: "$f$ and $y$ are the vector (true, estimated)" swaps the roles;
  $f$ is the estimate and $y$ the truth.

The derivations behind the rows of the table are in [chapter 3](chapters/03_second_order.ipynb),
[appendix A](chapters/appendix_a_loss_derivatives.ipynb) and
[appendix B](chapters/appendix_b_fisher.ipynb); the chapter 2 row concerns the
backpropagation formulas, and the chapter 6 rows the local criterion, the ACP algorithm
and its damping.
"""),
]


NOTEBOOKS = {
    "chapters/03_second_order.ipynb": CHAPTER_3,
    "chapters/appendix_a_loss_derivatives.ipynb": APPENDIX_A,
    "chapters/appendix_b_fisher.ipynb": APPENDIX_B,
    "errata.ipynb": ERRATA,
}


def main(argv: list[str]) -> int:
    only = set(argv)
    for path, cells in NOTEBOOKS.items():
        if only and path not in only:
            continue
        nb = notebook(cells)
        nbformat.validate(nb)
        (ROOT / path).parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, ROOT / path)
        print(f"wrote {path} ({len(nb.cells)} cells)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
