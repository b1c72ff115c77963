"""``capturable=True`` (ACP, KFAC, centered GD): the plain updates replayed as a CUDA graph
would replay them, on the CPU.

There is no GPU here, so :class:`Replay` stands in for ``torch.cuda.graph``: it records
every aten operation of one plain update (a ``TorchDispatchMode``, below autograd, so the
backward pass is recorded too) and replays them on the same tensors, without running any
Python: no hooks, no counters, no dictionaries, as a graph replays its kernels on the
addresses of its capture. It refuses host synchronisations while recording
(``.item()``, ``bool(tensor)``, ``nonzero``, tensors made from Python data). A run that
replays every plain update and runs the refreshes eagerly, as
:class:`sokit.graphs.CapturedStep` does, must end on exactly the parameters of the eager
run. CUDA capture itself is untested on hardware.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from sokit import losses
from sokit.experiments import catalog, methods
from sokit.optim import ACP, KFAC, NNN, AdaptiveAmortization, CenteredGD
from sokit.optim.base import LayerPreconditioner
from sokit.train import can_capture

pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py

aten = torch.ops.aten
HOST_SYNC = {aten._local_scalar_dense, aten.nonzero, aten.masked_select, aten.lift_fresh}


class Replay(TorchDispatchMode):
    """Record the aten operations of one call; :meth:`replay` reruns them in place."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket in HOST_SYNC:
            raise AssertionError(f"host synchronisation in a plain update: {func}")
        out = func(*args, **kwargs)
        if not func.is_view:  # views alias recorded storage: nothing to rerun
            self.ops.append((func, args, kwargs, out))
        return out

    @torch.no_grad()  # below autograd, as a graph's kernels are
    def replay(self) -> None:
        for func, args, kwargs, out in self.ops:
            new = func(*args, **kwargs)
            if not func._schema.is_mutable:  # a fresh result: into the recorded tensor
                for old, value in zip(tree_leaves(out), tree_leaves(new)):
                    if isinstance(old, torch.Tensor):
                        old.copy_(value)


def autoencoder() -> nn.Sequential:
    """Wide first layers for a batch of 4 (Woodbury: 2 B < n_in), dense ones after."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 14), nn.Tanh(), nn.Linear(14, 3, bias=False), nn.Tanh(),
                         nn.Linear(3, 12), nn.Sigmoid())


METHODS = {
    "acp_fixed": ("mse", lambda m, **kw: ACP(m, lr=0.05, eps=0.05, alpha=0.5, amortization=3, **kw)),
    "acp_heuristic_unfused": ("mse", lambda m, **kw: ACP(m, lr=0.05, eps=0.05, alpha="heuristic",
                                                         amortization=3, fused=False, **kw)),
    "kfac_fisher": ("mse", lambda m, **kw: KFAC(m, lr=0.05, loss="mse", damping=0.05,
                                                amortization=3, **kw)),
    "kfac_gn_ce_unfused": ("cross_entropy", lambda m, **kw: KFAC(
        m, lr=0.05, loss="cross_entropy", curvature="gauss_newton", damping=0.05,
        amortization=3, fused=False, **kw)),
    "centered": ("mse", lambda m, **kw: CenteredGD(m, lr=0.05, **kw)),
    "nnn": ("mse", lambda m, **kw: NNN(m, lr=0.05, amortization=3, eps=0.05, **kw)),
}
UPDATES, BATCH, WARMUP = 11, 4, 2


def data(loss: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    xs = torch.rand(UPDATES, BATCH, 12, generator=gen)
    xs[0, 1] = xs[0, 0]  # the first refresh sees rank 2, later ones rank 3 (NNN's U widens)
    if loss == "mse":
        return [(x, x) for x in xs]
    return [(x, torch.randint(0, 12, (BATCH,), generator=gen)) for x in xs]


def run(name: str, replay: bool, dense_only: bool = True) -> tuple[nn.Module, object, int]:
    """Train for UPDATES; with ``replay``, capture the first plain update after WARMUP and
    replay it for every later plain one, the refresh updates running eagerly.
    ``dense_only=False`` undoes NNN's capturable rule (for the test that it matters)."""
    loss, factory = METHODS[name]
    model = autoencoder()
    opt = factory(model, capturable=True)
    for layer in getattr(opt, "layers", []):
        layer.dense_only = dense_only
    x, y = torch.zeros(BATCH, 12), torch.zeros_like(data(loss)[0][1])  # the static inputs
    loss_fn = losses.get(loss)

    def step() -> None:
        out = model(x)
        value = loss_fn(out, y)
        if hasattr(opt, "curvature_backward"):
            opt.curvature_backward(out)
        opt.zero_grad()
        value.backward()
        opt.step()

    graph, replays = None, 0
    for t, (xb, yb) in enumerate(data(loss)):
        x.copy_(xb), y.copy_(yb)
        if not replay or opt.refresh_due() or t < WARMUP:
            step()
        elif graph is None:
            opt.zero_grad()
            with Replay() as graph:  # records and runs: the captured call
                step()
        else:
            graph.replay()
            opt.count_replayed_update()
            replays += 1
    return model, opt, replays


@pytest.mark.parametrize("name", sorted(METHODS))
def test_replayed_plain_updates_end_on_the_eager_parameters(name):
    eager, _, _ = run(name, replay=False)
    replayed, opt, replays = run(name, replay=True)
    if name == "centered":  # no refresh: updates 0, 1 eager, 2 captured, 3 to 10 replayed
        assert replays == 8
    else:  # refreshes at 0, 3, 6, 9 run eagerly; 2 captured; 4, 5, 7, 8, 10 replayed
        assert replays == 5
    if name == "nnn":  # no preconditioner: NNN reparametrizes the model
        assert opt.n_updates == UPDATES and opt.defaults["capturable"]
        ranks = [int(layer.rank) for layer in opt.layers]
        assert 2 * ranks[0] < 12  # the route NNN would take without capturable: low rank
    else:
        pre = opt.preconditioner
        assert name == "centered" or pre.schedule.refreshes[0] == 4
        assert pre.n_updates == UPDATES and int(pre.device_updates) == UPDATES
    for p, q in zip(eager.parameters(), replayed.parameters()):
        assert torch.equal(p, q)
    opt.state_dict()  # the host and device counts agree


def test_the_replay_sees_stale_buffers_when_a_refresh_replaces_them(monkeypatch):
    """The test can fail: storing each refresh in new tensors (the replay keeps reading the
    captured ones) moves the parameters away from the eager run's."""

    def replace(self, table, i, new):
        table[i] = new

    eager, _, _ = run("acp_fixed", replay=False)
    monkeypatch.setattr(LayerPreconditioner, "keep", replace)
    stale, _, _ = run("acp_fixed", replay=True)
    assert not all(torch.equal(p, q) for p, q in zip(eager.parameters(), stale.parameters()))


def test_nnn_capturable_multiplies_by_the_dense_u():
    """The test can fail: through the eigenvectors (NNN's cheaper route, taken when
    2 rank < n_in), the captured forward keeps the first refresh's rank (2) after a
    refresh widens it to 3, and the replayed run leaves the eager one."""
    eager, _, _ = run("nnn", replay=False, dense_only=False)
    stale, _, _ = run("nnn", replay=True, dense_only=False)
    assert not all(torch.equal(p, q) for p, q in zip(eager.parameters(), stale.parameters()))


def test_unreported_replays_are_caught_and_host_syncs_refused():
    model = autoencoder()
    opt = ACP(model, lr=0.1, amortization=5, capturable=True)
    x = torch.rand(BATCH, 12)
    for _ in range(2):
        opt.zero_grad()
        losses.mse_sum(model(x), x).backward()
        opt.step()
    opt.preconditioner.device_updates.add_(1)  # a replay nobody counted
    with pytest.raises(RuntimeError, match="count_replayed_update"):
        opt.state_dict()
    with pytest.raises(AssertionError, match="host synchronisation"), Replay():
        float(x.sum())


def test_capturable_needs_a_fixed_amortization_and_fixed_refresh_batches():
    with pytest.raises(ValueError, match="fixed amortization"):
        ACP(autoencoder(), lr=0.1, amortization=AdaptiveAmortization(), capturable=True)
    model = autoencoder()
    opt = ACP(model, lr=0.1, amortization=1, capturable=True)
    for batch in (4, 5):
        x = torch.rand(batch, 12)
        opt.zero_grad()
        if batch == 5:
            with pytest.raises(RuntimeError, match="same refresh minibatch size"):
                losses.mse_sum(model(x), x).backward()
        else:
            losses.mse_sum(model(x), x).backward()
            opt.step()


def test_train_captures_capturable_sokit_optimizers_on_cuda_only():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    for make in (lambda m, **kw: ACP(m, lr=0.1, **kw), lambda m, **kw: KFAC(m, 0.1, "mse", **kw),
                 lambda m, **kw: CenteredGD(m, lr=0.1, **kw), lambda m, **kw: NNN(m, lr=0.1, **kw)):
        assert can_capture(make(autoencoder(), capturable=True), cuda)
        assert not can_capture(make(autoencoder(), capturable=True), cpu)
        assert not can_capture(make(autoencoder()), cuda)


def test_every_experiment_method_is_captured_on_cuda(monkeypatch):
    """What ``sokit run`` trains on a GPU: each method of every experiment's full and long
    profiles gets a capturable optimizer (UBP, which has no capturable form, excepted), and
    none on the CPU or with ``SOKIT_CAPTURE=0``."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    specs = {json.dumps(spec, sort_keys=True): (config, spec)
             for exp in catalog.EXPERIMENTS for profile, config in exp.configs.items()
             if profile in ("full", "long") and isinstance(config.get("methods"), dict)
             for spec in config["methods"].values() if "prescale" in spec}
    assert len(specs) >= 10
    eager = set()
    for config, spec in specs.values():
        torch.manual_seed(0)
        _, opt = methods.build(config, methods.for_device(spec, cuda))
        if not can_capture(opt, cuda):
            eager.add(spec["optimizer"])
        assert methods.for_device(spec, cpu) is spec
    assert eager == {"ubp"}
    monkeypatch.setenv("SOKIT_CAPTURE", "0")
    assert all(methods.for_device(spec, cuda) is spec for _, spec in specs.values())
