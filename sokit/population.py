"""Population training: P copies of one MLP architecture trained at once with SGD.

A hyperparameter search runs many short trainings of the same network (Table 4.I:
100 x 100 runs of 100 SGD iterations). Run one at a time, each small step is
dominated by launch overhead; stacked, the P members' layers become batched matmuls
(weights of shape (P, n_out, n_in), ``torch.baddbmm``) and one step trains them all.

Members differ by learning rate, initial scale (prescale, section 2.4.2) and seed. Each
member's loss is tracked separately. A member whose loss or gradient step (learning rate
times gradient) is not finite is *diverged*: it is frozen at its last finite parameters
(``torch.where`` on a per-member mask, so no NaN reaches the others) and reported with
the step at which it diverged. Every step is a fixed sequence of tensor operations with
no host synchronisation, so on CUDA :func:`train_population` captures it as one CUDA
graph (:class:`sokit.graphs.CapturedStep`, shared with :func:`sokit.train.train`); on
CPU it runs eagerly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sokit.graphs import CapturedStep
from sokit.models import ACTIVATIONS

__all__ = ["Population", "architecture", "population_loss", "train_population"]

_ACT_FN: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": torch.sigmoid, "relu": torch.relu, "tanh": torch.tanh, "linear": lambda a: a,
}
LOSSES = ("mse", "cross_entropy")
_MODULE_ACT = {nn.Sigmoid: "sigmoid", nn.ReLU: "relu", nn.Tanh: "tanh"}


def population_loss(output: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-member loss, shape (P,), for outputs (P, B, n_out).

    "mse": squared error summed over features, mean over examples (the thesis's
    MSE, as :func:`sokit.losses.mse_sum`); "cross_entropy": mean over examples, with
    integer labels.
    """
    if loss == "mse":
        return ((output - target) ** 2).sum(-1).mean(-1)
    if loss == "cross_entropy":
        P, B, C = output.shape
        labels = target.expand(P, B) if target.dim() == 1 else target
        return F.cross_entropy(output.reshape(P * B, C), labels.reshape(P * B), reduction="none").view(P, B).mean(1)
    raise ValueError(f"unknown loss {loss!r}; choose 'mse_sum' or 'cross_entropy'")


class Population:
    """P members of one MLP architecture, stacked: ``weights[l]`` is (P, n_out, n_in).

    ``activations[l]`` (a key of :data:`sokit.models.ACTIVATIONS`) follows layer l.
    ``lr`` is a (P,) tensor of learning rates. The state ``diverged`` (bool, (P,)) and
    ``diverged_at`` (int, (P,), -1 while alive) lives on the device.
    """

    def __init__(
        self,
        weights: Sequence[torch.Tensor],
        biases: Sequence[torch.Tensor],
        activations: Sequence[str],
        lr: torch.Tensor | Sequence[float],
        loss: str = "mse",
    ):
        if not (len(weights) == len(biases) == len(activations)) or not weights:
            raise ValueError(
                f"need one weight, bias and activation per layer; got {len(weights)}, {len(biases)}, "
                f"{len(activations)}")
        for a in activations:
            if a not in ACTIVATIONS:
                raise ValueError(f"unknown activation {a!r}; choose one of {sorted(ACTIVATIONS)}")
        P = weights[0].shape[0]
        for l, (W, b) in enumerate(zip(weights, biases)):
            if W.dim() != 3 or W.shape[0] != P or b.shape != (P, W.shape[1]):
                raise ValueError(f"layer {l}: weight must be (P, n_out, n_in) and bias (P, n_out) with P={P}; "
                                 f"got {tuple(W.shape)} and {tuple(b.shape)}")
        W0 = weights[0]
        self.weights = [W.detach().clone() for W in weights]
        self.biases = [b.detach().clone() for b in biases]
        self.activations = list(activations)
        self.lr = torch.as_tensor(lr, dtype=W0.dtype, device=W0.device).reshape(-1).clone()
        if self.lr.numel() != P:
            raise ValueError(f"need one learning rate per member: {P} members, {self.lr.numel()} learning rates")
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")
        self.loss = loss
        self.diverged = torch.zeros(P, dtype=torch.bool, device=W0.device)
        self.diverged_at = torch.full((P,), -1, dtype=torch.long, device=W0.device)
        self.steps = torch.zeros((), dtype=torch.long, device=W0.device)

    # ------------------------------------------------------------------ construction
    @classmethod
    def init(
        cls,
        sizes: Sequence[int],
        activations: Sequence[str],
        lr: Sequence[float] | torch.Tensor,
        prescale: Sequence[float] | torch.Tensor,
        seeds: Sequence[int],
        loss: str = "mse",
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Population:
        """Fresh members: weights ~ N(0, prescale_i / n_in), biases 0 (section 2.4.2),
        member i drawn from its own generator seeded with ``seeds[i]``."""
        prescale = torch.as_tensor(prescale, dtype=torch.float64).reshape(-1)
        P = len(seeds)
        if prescale.numel() != P:
            raise ValueError(f"need one prescale per member: {P} seeds, {prescale.numel()} prescales")
        if (prescale <= 0).any():
            raise ValueError(f"prescale must be positive, got {prescale.tolist()}")
        device = torch.device(device or "cpu")
        gens = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        weights, biases = [], []
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            std = (prescale / n_in).sqrt().to(device=device, dtype=dtype)
            W = torch.stack([torch.randn(n_out, n_in, generator=g, device=device, dtype=dtype) for g in gens])
            weights.append(W * std.view(P, 1, 1))
            biases.append(torch.zeros(P, n_out, device=device, dtype=dtype))
        return cls(weights, biases, activations, torch.as_tensor(lr, dtype=dtype, device=device), loss)

    @classmethod
    def from_models(cls, models: Sequence[nn.Sequential], lr: Sequence[float], loss: str = "mse") -> Population:
        """Stack plain ``nn.Sequential`` MLPs (Linear layers with biases, each followed by
        at most one Sigmoid / ReLU / Tanh), e.g. from :func:`sokit.models.mlp`."""
        structures = [_structure(m) for m in models]
        acts = [s[1] for s in structures]
        if any(a != acts[0] for a in acts) or any(
                [L.weight.shape for L in s[0]] != [L.weight.shape for L in structures[0][0]] for s in structures):
            raise ValueError("all members of a population must share one architecture")
        layers = list(zip(*[s[0] for s in structures]))
        weights = [torch.stack([L.weight.detach() for L in ls]) for ls in layers]
        biases = [torch.stack([L.bias.detach() for L in ls]) for ls in layers]
        return cls(weights, biases, acts[0], torch.as_tensor(lr, dtype=weights[0].dtype), loss)

    def member(self, i: int) -> nn.Sequential:
        """Member i as an ``nn.Sequential`` (a copy of its current parameters)."""
        mods: list[nn.Module] = []
        for W, b, a in zip(self.weights, self.biases, self.activations):
            L = nn.Linear(W.shape[2], W.shape[1], device=W.device, dtype=W.dtype)
            with torch.no_grad():
                L.weight.copy_(W[i])
                L.bias.copy_(b[i])
            mods.append(L)
            if ACTIVATIONS[a] is not None:
                mods.append(ACTIVATIONS[a]())
        return nn.Sequential(*mods)

    @property
    def size(self) -> int:
        return self.weights[0].shape[0]

    def parameters(self) -> list[torch.Tensor]:
        return self.weights + self.biases

    # ------------------------------------------------------------------ computation
    def forward(self, x: torch.Tensor, params: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Outputs (P, B, n_out) for inputs x of shape (B, n_in) (shared) or (P, B, n_in)."""
        params = list(params) if params is not None else self.parameters()
        n = len(self.weights)
        Ws, bs = params[:n], params[n:]
        P = Ws[0].shape[0]
        h = x.expand(P, *x.shape) if x.dim() == 2 else x
        for W, b, a in zip(Ws, bs, self.activations):
            h = _ACT_FN[a](torch.baddbmm(b.unsqueeze(1), h, W.transpose(1, 2)))
        return h

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-member loss (P,) at the current parameters, without gradients."""
        with torch.no_grad():
            return population_loss(self.forward(x), y, self.loss)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One SGD step for every live member; returns the (P,) minibatch losses before
        the update (NaN for diverged members). No host synchronisation."""
        params = [p.detach().requires_grad_(True) for p in self.parameters()]
        loss = population_loss(self.forward(x, params), y, self.loss)
        # Members are independent, so the gradient of the sum is each member's gradient.
        grads = torch.autograd.grad(loss.sum(), params)
        P = self.size
        ok = ~self.diverged & torch.isfinite(loss)
        for g in grads:  # a non-finite (or overflowing) gradient step marks the member
            ok = ok & torch.isfinite(self.lr * torch.linalg.vector_norm(g.flatten(1), dim=1))
        with torch.no_grad():
            for p, g in zip(self.parameters(), grads):
                shape = (P,) + (1,) * (p.dim() - 1)
                g.masked_fill_(~ok.view(shape), 0.0)  # frozen members: no update, no NaN
                p.addcmul_(g, self.lr.view(shape), value=-1.0)
            newly = ok.logical_not() & self.diverged.logical_not()
            self.diverged_at.copy_(torch.where(newly, self.steps, self.diverged_at))
            self.diverged.logical_or_(newly)
            self.steps.add_(1)
            return torch.where(self.diverged, torch.full_like(loss, float("nan")), loss.detach())


def architecture(model: nn.Sequential) -> tuple[list[int], list[str]]:
    """Layer widths and per-layer activations of a plain MLP, as :meth:`Population.init` takes
    them (e.g. ``architecture(sokit.models.autoencoder())``)."""
    linears, acts = _structure(model)
    return [linears[0].in_features] + [L.out_features for L in linears], acts


def _structure(model: nn.Sequential) -> tuple[list[nn.Linear], list[str]]:
    linears: list[nn.Linear] = []
    acts: list[str] = []
    for m in model:
        if isinstance(m, nn.Linear):
            if m.bias is None:
                raise ValueError("population members need Linear layers with biases (no norm layers)")
            linears.append(m)
            acts.append("linear")
        elif type(m) in _MODULE_ACT and linears and acts[-1] == "linear":
            acts[-1] = _MODULE_ACT[type(m)]
        else:
            raise ValueError(f"unsupported module {type(m).__name__} in a population member; "
                             "use Linear layers each followed by at most one Sigmoid, ReLU or Tanh")
    return linears, acts


def train_population(
    pop: Population,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    updates: int,
    eval_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    eval_chunk: int = 1000,
    graph: bool | None = None,
) -> dict:
    """Train every member for ``updates`` SGD steps on the shared minibatches ``batches``.

    Returns ``{"minibatch_loss": (updates, P) tensor, "final_loss": (P,) tensor on
    eval_data (NaN for diverged members; the last minibatch's loss if eval_data is None),
    "diverged": (P,) bool, "diverged_at": (P,) int}``, all on the CPU. ``graph=None``
    uses a CUDA graph exactly when the population lives on a CUDA device.
    """
    device = pop.weights[0].device
    use_graph = device.type == "cuda" if graph is None else graph
    it = iter(batches)
    history = []
    step = None
    for _ in range(updates):
        x, y = next(it)
        if use_graph:
            if step is None:
                sx, sy = torch.empty_like(x), torch.empty_like(y)
                step = CapturedStep(lambda sx=sx, sy=sy: pop.step(sx, sy), device)
            sx.copy_(x)
            sy.copy_(y)
            history.append(step().clone())
        else:
            history.append(pop.step(x, y))
    losses = torch.stack(history) if history else torch.zeros(0, pop.size)
    if eval_data is not None:
        ex, ey = eval_data
        parts = [pop.losses(ex[i:i + eval_chunk], ey[i:i + eval_chunk]) * min(eval_chunk, len(ex) - i)
                 for i in range(0, len(ex), eval_chunk)]
        final = torch.stack(parts).sum(0) / len(ex)
    else:
        final = losses[-1] if len(losses) else pop.losses(*next(it))
    final = torch.where(pop.diverged | ~torch.isfinite(final), torch.full_like(final, float("nan")), final)
    return {"minibatch_loss": losses.cpu(), "final_loss": final.cpu(),
            "diverged": pop.diverged.cpu(), "diverged_at": pop.diverged_at.cpu()}
