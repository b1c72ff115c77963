"""Registry of the thesis's errata, each one a check that can fail.

Every erratum is a function that computes the thesis's statement and the corrected
one, asserts (with :func:`sokit.symbolic.check_differs` / ``check_equal`` or
``torch.testing.assert_close``) that the thesis's form fails and the correction holds,
and returns a one-line piece of evidence. If a check ever stops raising where it
should (the thesis's form turns out right, or the correction wrong), :func:`run`
reports it as failed and the book's errata page says so.

Use :func:`registry` for the list, :func:`run_all` to check them and
:func:`markdown_table` to render the results (``errata.ipynb``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sympy as sp
import torch

from sokit.symbolic import (
    check_differs,
    check_equal,
    cross_entropy_loss,
    fisher_middle,
    gn_middle,
    gradient,
    hessian,
    kron,
    log_likelihood,
    quadratic_loss,
    softmax,
    sym_matrix,
    sym_symmetric,
    sym_vector,
    unvec,
    vec,
)

__all__ = ["Erratum", "Result", "registry", "get", "run", "run_all", "markdown_table"]


@dataclass(frozen=True)
class Erratum:
    """One thesis statement that does not survive its check."""

    id: str
    location: str
    claim: str
    correction: str
    check: Callable[[], str]
    kind: str = "error"  # "error": the statement is wrong; "scope": true only in a special case


@dataclass(frozen=True)
class Result:
    erratum: Erratum
    confirmed: bool
    evidence: str


_REGISTRY: dict[str, Erratum] = {}


def _erratum(id: str, location: str, claim: str, correction: str, kind: str = "error"):
    if any("|" in text for text in (location, claim, correction)):
        raise ValueError(f"erratum {id!r}: write norms as \\Vert, not |, so tables render")

    def register(check: Callable[[], str]) -> Callable[[], str]:
        if id in _REGISTRY:
            raise ValueError(f"erratum id {id!r} registered twice")
        _REGISTRY[id] = Erratum(id, location, claim, correction, check, kind)
        return check

    return register


def registry() -> dict[str, Erratum]:
    """All registered errata, in thesis order."""
    return dict(_REGISTRY)


def get(id: str) -> Erratum:
    """The erratum named ``id``."""
    if id not in _REGISTRY:
        raise KeyError(f"no erratum {id!r}; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[id]


def run(id: str) -> Result:
    """Run one erratum's check; ``confirmed`` is False when an assertion failed."""
    e = get(id)
    try:
        return Result(e, True, e.check())
    except AssertionError as err:
        return Result(e, False, f"check failed: {err}")


def run_all() -> list[Result]:
    """Run every registered check."""
    return [run(id) for id in _REGISTRY]


def markdown_table(results: list[Result]) -> str:
    """A MyST/markdown table: id, location, thesis claim, correction, check status."""
    rows = [
        "| id | location | thesis says | corrected | check |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        evidence = r.evidence.replace("|", "\\|")  # plain text (no math): escape its pipes
        status = ("confirmed: " if r.confirmed else "**FAILED**: ") + evidence
        cells = [f"`{r.erratum.id}`", r.erratum.location, r.erratum.claim,
                 r.erratum.correction, status]
        rows.append("| " + " | ".join(c.replace("\n", " ") for c in cells) + " |")
    return "\n".join(rows)


def _f64(*shape: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


# ---------------------------------------------------------------------------
# chapter 2


@_erratum(
    "parameter-jacobians",
    "Section 2.1.2",
    r"$\mathbf{J}_{a_l}^{W_l} = \nabla_{a_l} l\, h_{l-1}^T$ and "
    r"$\mathbf{J}_{a_l}^{b_l} = \nabla_{a_l} l$ (called the Jacobians of $a_l$)",
    r"these are the loss gradients $\nabla_{W_l} l$ and $\nabla_{b_l} l$; the Jacobians of "
    r"$a_l = W_l h_{l-1} + b_l$ are $\mathbf{J}_{a_l}^{\mathrm{vec}(W_l)} = h_{l-1}^T \otimes \mathbf{I}$ "
    r"and $\mathbf{J}_{a_l}^{b_l} = \mathbf{I}$ (as section 6.2 has them)",
)
def _parameter_jacobians() -> str:
    gen = torch.Generator().manual_seed(0)
    n_in, n_out = 3, 2
    h, t = _f64(n_in, generator=gen), _f64(n_out, generator=gen)
    W, b = _f64(n_out, n_in, generator=gen), _f64(n_out, generator=gen)
    a_of = lambda w_vec, bias: unvec(w_vec, (n_out, n_in)) @ h + bias  # noqa: E731
    jac_w, jac_b = torch.func.jacrev(a_of, argnums=(0, 1))(vec(W), b)
    eye = torch.eye(n_out, dtype=torch.float64)
    torch.testing.assert_close(jac_w, kron(h[None, :], eye))
    torch.testing.assert_close(jac_b, eye)
    loss = lambda w, bias: ((w @ h + bias - t) ** 2).sum()  # noqa: E731
    grad_w, grad_b = torch.func.grad(loss, argnums=(0, 1))(W, b)
    dl_da = 2 * (W @ h + b - t)
    torch.testing.assert_close(grad_w, torch.outer(dl_da, h))
    torch.testing.assert_close(grad_b, dl_da)
    assert jac_w.shape != torch.outer(dl_da, h).shape and not torch.allclose(jac_b, dl_da)
    return ("dl/da h^T and dl/da match autograd's dl/dW and dl/db; the Jacobians of a are "
            f"h^T kron I (shape {tuple(jac_w.shape)}) and I")


# ---------------------------------------------------------------------------
# chapter 3 and appendices A, B


@_erratum(
    "quadratic-hessian",
    "Table 3.I; appendix A.1",
    r"$\partial^2 l / \partial f^2 = \mathbf{I}$ for $l = \Vert f - y\Vert ^2$",
    r"$\partial^2 l / \partial f^2 = 2\mathbf{I}$ (the GN of $\Vert f-y\Vert ^2$ is $2 J^T J$)",
)
def _quadratic_hessian() -> str:
    f, y = sym_vector("f", 3), sym_vector("y", 3)
    H = hessian(quadratic_loss(f, y), f)
    d = check_differs(H, sp.eye(3), "Table 3.I: d2l/df2 = I for ||f-y||^2")
    check_equal(H, 2 * sp.eye(3), "d2l/df2 = 2I")
    check_equal(d, sp.eye(3), "the thesis's form misses exactly one I")
    return "d2l/df2 = 2I for 3 outputs, so d2l/df2 - I = I"


@_erratum(
    "quadratic-gn-equals-fisher",
    "Table 3.III",
    r"quadratic error: GN middle term $= \mathbf{I} =$ Fisher middle term",
    r"GN term $2\mathbf{I}$; Fisher of $\mathcal{N}(f, \sigma^2 \mathbf{I})$ is "
    r"$\mathbf{I}/\sigma^2$; they agree for $\sigma^2 = 1/2$, the Gaussian whose "
    r"negative log-likelihood is $\Vert f-y\Vert ^2$ + const",
)
def _quadratic_gn_fisher() -> str:
    f, y = sym_vector("f", 2), sym_vector("y", 2)
    s2 = sp.Symbol("sigma2", positive=True)
    gn = gn_middle("quadratic", f, y)
    fisher = fisher_middle("gaussian", f, s2)
    check_differs(gn, fisher.subs(s2, 1), "Table 3.III: GN term = Fisher term (sigma^2 = 1)")
    check_equal(gn, fisher.subs(s2, sp.Rational(1, 2)), "GN term = Fisher term at sigma^2 = 1/2")
    nll_half = -log_likelihood("gaussian", f, y, sp.Rational(1, 2))
    check_equal(quadratic_loss(f, y), nll_half - sp.log(sp.pi), "||f-y||^2 = -log N(y; f, I/2) + c")
    return "GN term 2I equals the Gaussian Fisher at sigma^2 = 1/2, not at sigma^2 = 1"


@_erratum(
    "kl-half",
    "Section 3.2.1",
    r"$\mathrm{KL}(p_\theta \,\Vert\, p_{\theta+\Delta\theta}) = "
    r"\Delta\theta^T F \Delta\theta + o(\Vert \Delta\theta\Vert ^2)$ "
    "(and the same for the swapped KL)",
    r"$\mathrm{KL} = \frac{1}{2}\Delta\theta^T F \Delta\theta + o(\Vert \Delta\theta\Vert ^2)$, both directions",
)
def _kl_half() -> str:
    theta, d = sym_vector("theta", 2, real=True), sym_vector("d", 2, real=True)
    t = sp.Symbol("t", real=True)
    p, q = softmax(theta), softmax(theta + t * d)
    kl_pq = sum(p[k] * (sp.log(p[k]) - sp.log(q[k])) for k in range(2))
    kl_qp = sum(q[k] * (sp.log(q[k]) - sp.log(p[k])) for k in range(2))
    F = fisher_middle("categorical_logits", theta)
    dFd = (d.T * F * d)[0, 0]
    for name, kl in (("KL(p_theta || p_theta+d)", kl_pq), ("KL(p_theta+d || p_theta)", kl_qp)):
        check_equal(kl.subs(t, 0), 0, f"{name} vanishes at d = 0")
        check_equal(sp.diff(kl, t).subs(t, 0), 0, f"{name} has no first-order term")
        second = sp.diff(kl, t, 2).subs(t, 0) / 2  # coefficient of t^2
        check_differs(second, dFd, f"Section 3.2.1: {name} = d^T F d + o")
        check_equal(second, dFd / 2, f"{name} = 1/2 d^T F d + o")
    return "t^2 coefficient of KL(p_theta || p_theta+td) is d^T F d / 2 (2-class softmax)"


@_erratum(
    "min-implies-pd",
    "Section 3.1.1",
    "at a minimum $x^*$ of $f$ the Hessian is positive definite",
    "at a minimum the Hessian is positive SEMI-definite (necessary condition); positive "
    "definiteness is an extra assumption (it makes the minimum strict and Newton's "
    "step well defined)",
)
def _min_implies_pd() -> str:
    x = sp.Symbol("x", real=True)
    f = x**4
    assert sp.simplify(f - f.subs(x, 0)).is_nonnegative, "x^4 has a minimum at 0"
    h0 = sp.diff(f, x, 2).subs(x, 0)
    check_equal(h0, 0, "f''(0) for f = x^4")
    assert not h0.is_positive, "the Hessian at the minimum is not positive definite"
    return "f = x^4 has its minimum at 0 where f''(0) = 0"


@_erratum(
    "jacobian-transpose",
    "Sections 3.2.3-3.2.4, eq 3.3.1",
    r"$F = \mathbb{E}_x[J^T D J^T]$",
    r"$F = \mathbb{E}_x[J^T D J]$ ($J^T D J^T$ is not even defined when $J$ is not square)",
)
def _jacobian_transpose() -> str:
    J = sym_matrix("J", 2, 3)  # 2 outputs, 3 parameters
    f = sym_vector("f", 2, positive=True)
    D = fisher_middle("categorical", f)
    try:
        J.T * D * J.T
    except sp.ShapeError:
        pass
    else:
        raise AssertionError("J^T D J^T was defined for a 2 x 3 Jacobian")
    # E_y[(J^T s)(J^T s)^T] with s = d log p / d f for each class y = e_k
    F = sp.zeros(3, 3)
    for k in range(2):
        s = sp.Matrix([1 / f[k] if i == k else 0 for i in range(2)])
        F += f[k] * (J.T * s) * (J.T * s).T
    check_equal(F, J.T * D * J, "F = J^T D J")
    return "J^T D J^T raises a shape error for J of shape 2 x 3; J^T D J matches E[score score^T]"


@_erratum(
    "gn-trick-sign",
    "Section 3.4 (text before eq 3.4.1)",
    r"$(\partial^2 l/\partial f^2)_{tt} = -(\partial l/\partial f)_t^2$, and "
    r"$(\partial^2 l/\partial f^2)_{ii} = 0 = -(\partial l/\partial f)_t^2$ for $i \neq t$",
    r"$(\partial^2 l/\partial f^2)_{tt} = +(\partial l/\partial f)_t^2$ and "
    r"$(\partial^2 l/\partial f^2)_{ii} = 0 = (\partial l/\partial f)_i^2$ (as the "
    "thesis's own displayed equations have it)",
)
def _gn_trick_sign() -> str:
    f = sym_vector("f", 3, positive=True)
    y = sp.Matrix([1, 0, 0])  # true class t = 0
    l = cross_entropy_loss(f, y)
    g, H = gradient(l, f), hessian(l, f)
    check_differs(H[0, 0], -g[0] ** 2, "Section 3.4: (d2l/df2)_tt = -(dl/df)_t^2")
    check_equal(H[0, 0], g[0] ** 2, "(d2l/df2)_tt = (dl/df)_t^2")
    check_differs(H[1, 1], -g[0] ** 2, "Section 3.4: (d2l/df2)_ii = -(dl/df)_t^2")
    check_equal(H, g * g.T, "d2l/df2 = (dl/df)(dl/df)^T")
    return f"(d2l/df2)_tt = {sp.sstr(H[0, 0])} = +(dl/df)_t^2"


@_erratum(
    "appendix-b3-outer-product",
    "Appendix B.3",
    r"$(y/f)(y/f)^T = \mathrm{diag}(y^2/f^2)$",
    "true only for one-hot $y$ (which is what $y \\sim p_\\theta(y \\mid x)$ draws, so the final "
    r"$D = \mathrm{diag}(1/f)$ stands); for a soft target the outer product is not diagonal",
    kind="scope",
)
def _appendix_b3() -> str:
    f, y = sym_vector("f", 2, positive=True), sym_vector("y", 2, positive=True)
    r = sp.Matrix([y[i] / f[i] for i in range(2)])
    diag = sp.diag(*[y[i] ** 2 / f[i] ** 2 for i in range(2)])
    check_differs(r * r.T, diag, "Appendix B.3 for a soft target y")
    for k in range(2):
        onehot = {y[i]: int(i == k) for i in range(2)}
        check_equal((r * r.T).subs(onehot), diag.subs(onehot), f"one-hot y = e_{k}")
    return "equal for both one-hot targets, off-diagonal y0 y1/(f0 f1) otherwise"


# ---------------------------------------------------------------------------
# chapter 6


@_erratum(
    "local-criterion-factor-2",
    "Section 6.1.1",
    r"$\partial l_C/\partial \Delta W = \frac{1}{n}\sum_i(\Delta W h^{(i)} + \Delta b + "
    r"\lambda\nabla_{a^{(i)}} l)h^{(i)T} + \epsilon\Delta W$ (and likewise for $\Delta b$)",
    "both derivatives carry a factor 2; the stationary point, hence eq 6.1.1's "
    r"$\Delta W^*(C + \epsilon I) = -\lambda\,\overline{\nabla_a l\,(h - \bar h)^T}$, is unchanged",
)
def _local_criterion() -> str:
    n = 3
    h, g = sym_vector("h", n, real=True), sym_vector("g", n, real=True)
    w, b, lam, eps = sp.symbols("w b lambda epsilon", real=True)
    lc = sum((w * h[i] + b + lam * g[i]) ** 2 for i in range(n)) / n + eps * w**2
    thesis_dw = sum((w * h[i] + b + lam * g[i]) * h[i] for i in range(n)) / n + eps * w
    check_differs(sp.diff(lc, w), thesis_dw, "Section 6.1.1: dl_C/dDeltaW")
    check_equal(sp.diff(lc, w), 2 * thesis_dw, "dl_C/dDeltaW with the factor 2")
    sol = sp.solve([sp.diff(lc, w), sp.diff(lc, b)], [w, b], dict=True)[0]
    mean_h, mean_g = sum(h) / n, sum(g) / n
    C = sum((h[i] - mean_h) ** 2 for i in range(n)) / n
    rhs = -lam * sum(g[i] * (h[i] - mean_h) for i in range(n)) / n
    check_equal(sol[w] * (C + eps), rhs, "eq 6.1.1: DeltaW (C + eps) = -lambda mean(g (h - mean h))")
    check_equal(sol[b], -lam * mean_g - sol[w] * mean_h, "eq 6.1.1: Delta b")
    return "derivatives are twice the thesis's; the solution (1 input, 1 output, n = 3) matches"


@_erratum(
    "gradient-carries-step",
    "Section 6.2.3",
    r"$\nabla_\theta R = -\frac{\lambda}{n}\sum_j \binom{h_j}{1}\otimes\nabla_{a_j} l$",
    r"$\nabla_\theta R = \frac{1}{n}\sum_j \binom{h_j}{1}\otimes\nabla_{a_j} l$; the displayed "
    r"vector is the SGD step $-\lambda\nabla_\theta R$ (the derivation of eq 6.2.4-6.2.5 treats it so)",
)
def _gradient_carries_step() -> str:
    gen = torch.Generator().manual_seed(0)
    n, n_in, n_out, lam = 5, 3, 2, 0.1
    h, t = _f64(n, n_in, generator=gen), _f64(n, n_out, generator=gen)
    W = _f64(n_out, n_in, generator=gen).requires_grad_()
    b = _f64(n_out, generator=gen).requires_grad_()
    a = h @ W.T + b
    a.retain_grad()
    R = ((a - t) ** 2).sum(1).mean()
    R.backward()
    grad = torch.cat([vec(W.grad), b.grad])  # theta = (vec(W)^T, b^T)^T, vec by columns
    dl_da = a.grad * n  # per-example gradients w.r.t. the preactivation
    h1 = torch.cat([h, torch.ones(n, 1, dtype=h.dtype)], 1)
    kron_mean = sum(kron(h1[j : j + 1].T, dl_da[j : j + 1].T) for j in range(n)) / n
    torch.testing.assert_close(grad, kron_mean[:, 0])
    diff = (grad - (-lam * kron_mean[:, 0])).norm().item()
    assert diff > 1e-3, "the thesis's expression matched the gradient"
    return f"autograd gradient = (1/n) sum (h;1) kron dl/da; the thesis's -lambda form is off by {diff:.3f} (norm)"


def _layer_problem(seed: int = 0, n: int = 8, n_in: int = 4, n_out: int = 3):
    """A linear layer a = W h + b with sigmoid-like (positive-mean) inputs, squared loss."""
    gen = torch.Generator().manual_seed(seed)
    h = torch.sigmoid(2 * _f64(n, n_in, generator=gen))
    t = _f64(n, n_out, generator=gen)
    W = _f64(n_out, n_in, generator=gen) / n_in**0.5
    b = torch.zeros(n_out, dtype=torch.float64)
    return h, t, W, b


def _layer_loss(h, t, W, b) -> torch.Tensor:
    return ((h @ W.T + b - t) ** 2).sum(1).mean()


def _dl_da(h, t, W, b) -> torch.Tensor:
    """Per-example gradient of the loss w.r.t. the preactivation (rows)."""
    return 2 * (h @ W.T + b - t)


@_erratum(
    "algorithm-update-sign",
    "Algorithm 3 lines 5-6; Algorithm 4 lines 13-14",
    r"$b \leftarrow b + \lambda\frac{1}{n}\sum_i\Delta_{a_i}$, "
    r"$W \leftarrow W + \ldots$ with $\Delta_{a_i} = \nabla_{a_i} l$",
    "minus signs: $b \\leftarrow b - \\ldots$, $W \\leftarrow W - \\ldots$ (as eq 6.2.4-6.2.5); "
    "with plus signs the step ascends the loss",
)
def _algorithm_sign() -> str:
    h, t, W, b = _layer_problem()
    lam = 1e-3
    g = _dl_da(h, t, W, b)
    hc = h - h.mean(0)
    dW, db = g.T @ hc / h.shape[0], g.mean(0)  # Algorithm 3's centered directions
    before = _layer_loss(h, t, W, b).item()
    printed = _layer_loss(h, t, W + lam * dW, b + lam * db).item()
    corrected = _layer_loss(h, t, W - lam * dW, b - lam * db).item()
    assert printed > before, "the printed (+) update did not increase the loss"
    assert corrected < before, "the corrected (-) update did not decrease the loss"
    return f"loss {before:.5f}: printed step -> {printed:.5f}, corrected step -> {corrected:.5f}"


def _acp_dense(h, g, lam, alpha, eps_bias: float = 0.0, eps: float = 0.0):
    """-lambda G^-1 grad with the dense G = A kron alpha I (+ eps I), section 6.2.3."""
    n, n_in = h.shape
    n_out = g.shape[1]
    h1 = torch.cat([h, torch.ones(n, 1, dtype=h.dtype)], 1)
    A = h1.T @ h1 / n
    G = kron(A, alpha * torch.eye(n_out, dtype=h.dtype)) + eps * torch.eye(
        (n_in + 1) * n_out, dtype=h.dtype
    )
    grad = torch.cat([vec(g.T @ h / n), g.mean(0)])
    step = -lam * torch.linalg.solve(G, grad)
    k = n_in * n_out
    return step[:k].reshape(n_in, n_out).T, step[k:]  # unvec(step_W), step_b


@_erratum(
    "acp-bias-update",
    "Algorithm 4 line 13 (vs eq 6.2.5)",
    r"ACP bias update $\Delta b = -\frac{\lambda}{\alpha}\frac{1}{n}\sum_i\nabla_{a_i} l$",
    r"eq 6.2.5: $\Delta b = -\frac{\lambda}{\alpha}\frac{1}{n}\sum_i\nabla_{a_i} l - \Delta W\,\bar h$; "
    "Algorithm 4 drops $-\\Delta W \\bar h$ (section 6.1.2 calls it small; it need not be)",
)
def _acp_bias() -> str:
    h, t, W, b = _layer_problem()
    lam, alpha = 0.1, 1.0
    g = _dl_da(h, t, W, b)
    n = h.shape[0]
    hbar = h.mean(0)
    C = (h - hbar).T @ (h - hbar) / n
    dW = -lam / alpha * (g.T @ (h - hbar) / n) @ torch.linalg.inv(C)  # eq 6.2.4
    db_eq = -lam / alpha * g.mean(0) - dW @ hbar  # eq 6.2.5
    db_alg = -lam / alpha * g.mean(0)  # Algorithm 4 line 13 (sign corrected)
    dW_dense, db_dense = _acp_dense(h, g, lam, alpha)
    torch.testing.assert_close(dW, dW_dense)
    torch.testing.assert_close(db_eq, db_dense)
    rel = ((db_alg - db_dense).norm() / db_dense.norm()).item()
    assert rel > 0.05, f"Algorithm 4's bias update is within {rel:.1%} of eq 6.2.5"
    return (f"eq 6.2.4-6.2.5 = dense G_in^-1 step; Algorithm 4's bias is off by {rel:.0%} "
            "(relative) on a random layer with sigmoid inputs")


@_erratum(
    "damped-schur-complement",
    "Section 6.3.2",
    r"damping $G_{in} + \epsilon I$ turns $C$ into $C + \frac{\epsilon}{\alpha}I$",
    r"with the bias row damped too, the weight block of the inverse is "
    r"$\left(C + \frac{\epsilon}{\alpha}I + (1 - \frac{1}{1+\epsilon/\alpha})\bar h\bar h^T\right)^{-1}$; "
    r"$C + \frac{\epsilon}{\alpha}I$ is exact only if the bias entry is left undamped",
)
def _damped_schur() -> str:
    C = sym_symmetric("c", 2, real=True)
    m = sym_vector("m", 2, real=True)
    k = sp.Symbol("k", positive=True)  # k = eps / alpha
    S = C + m * m.T  # mean of h h^T
    # Schur complement of the bias entry in [[S + kI, m], [m^T, 1 + k]]
    schur_damped = S + k * sp.eye(2) - m * m.T / (1 + k)
    check_differs(schur_damped, C + k * sp.eye(2), "Section 6.3.2: damped covariance = C + k I")
    check_equal(
        schur_damped, C + k * sp.eye(2) + (1 - 1 / (1 + k)) * m * m.T,
        "damped Schur complement",
    )
    check_equal(S + k * sp.eye(2) - m * m.T / 1, C + k * sp.eye(2), "bias entry undamped")
    # numerically: the weight block of the damped inverse is the inverse Schur complement
    h, _, _, _ = _layer_problem(seed=1)
    n, n_in = h.shape
    kk = 0.3
    h1 = torch.cat([h, torch.ones(n, 1, dtype=h.dtype)], 1)
    A = h1.T @ h1 / n + kk * torch.eye(n_in + 1, dtype=h.dtype)
    hbar = h.mean(0)
    Cn = (h - hbar).T @ (h - hbar) / n
    block = torch.linalg.inv(A)[:n_in, :n_in]
    eye = torch.eye(n_in, dtype=h.dtype)
    torch.testing.assert_close(
        block, torch.linalg.inv(Cn + kk * eye + (1 - 1 / (1 + kk)) * torch.outer(hbar, hbar))
    )
    rel = ((block - torch.linalg.inv(Cn + kk * eye)).norm() / block.norm()).item()
    assert rel > 1e-3
    return f"symbolic (2 inputs) and numeric; (C + k I)^-1 is off by {rel:.0%} at k = {kk}"
