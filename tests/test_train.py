"""The training loop: schedule, recorded losses, divergence, checkpoint/resume, CUDA graph."""

import math
import time

import pytest
import torch

from sokit import losses, models, train
from sokit.data import Dataset


def toy_data(n=256, d=8, classes=None, seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n + 64, d, generator=g)
    y = torch.randint(0, classes or 2, (n + 64,), generator=g)
    return Dataset("toy", x[:n], y[:n], x[n:], y[n:])


def toy_run(lr=0.5, updates=50, seed=0, optimizer_cls=None, **kw):
    torch.manual_seed(seed)
    model = models.mlp([8, 6, 8], "sigmoid", "sigmoid", prescale=4.0)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    if optimizer_cls is not None:
        opt = optimizer_cls(opt)
    return model, train.train(model, opt, toy_data(), "mse", updates, batch_size=16, seed=seed,
                              progress=False, **kw)


def test_eval_schedule_is_log_spaced_and_deterministic():
    s = train.eval_schedule(300000, 20)
    assert s == train.eval_schedule(300000, 20)
    assert s[0] == 1 and s[-1] == 300000 and len(s) == 20 and s == sorted(set(s))
    ratios = [b / a for a, b in zip(s[8:], s[9:])]
    assert max(ratios) / min(ratios) < 1.01  # constant ratio once rounding no longer matters
    assert train.eval_schedule(10, 20) == list(range(1, 11))
    assert train.eval_schedule(10, eval_every=4) == [4, 8, 10]
    with pytest.raises(ValueError, match="eval_every"):
        train.eval_schedule(10, eval_every="often")


def test_run_records_losses_on_the_schedule():
    model, r = toy_run(updates=40)
    assert r["updates"] == train.eval_schedule(40, 20)
    assert len(r["minibatch_loss"]) == 40 and r["minibatch_every"] == 1
    assert not r["diverged"] and r["diverged_at"] is None and r["cuda_graph"] is False
    assert r["seconds"] == sorted(r["seconds"]) and r["wall_clock_s"] == r["seconds"][-1]
    # the last recorded train and test losses are the final model's losses
    d = toy_data()
    for key, x in (("train_loss", d.train_x), ("test_loss", d.test_x)):
        with torch.no_grad():
            expected = losses.mse_sum(model(x), x).item()
        assert math.isclose(r[key][-1], expected, rel_tol=1e-5)
    assert r["train_loss"][-1] < r["train_loss"][0]


def test_first_minibatch_loss_is_the_initial_models_loss():
    torch.manual_seed(0)
    model = models.mlp([8, 6, 8], "sigmoid", "sigmoid", prescale=4.0)
    d = toy_data()
    from sokit.data import Sampler
    xb, _ = next(Sampler(d.train_x, d.train_y, 16, seed=0))
    with torch.no_grad():
        expected = losses.mse_sum(model(xb), xb).item()
    _, r = toy_run(updates=3)
    assert r["minibatch_loss"][0] == pytest.approx(expected, rel=1e-6)


def test_long_runs_subsample_the_minibatch_curve(monkeypatch):
    monkeypatch.setattr(train, "MINIBATCH_POINTS", 100)
    _, full = toy_run(updates=35, lr=0.1)
    monkeypatch.setattr(train, "MINIBATCH_POINTS", 4)
    _, sub = toy_run(updates=35, lr=0.1)
    assert sub["minibatch_every"] == 9 and len(sub["minibatch_loss"]) == 4
    assert sub["minibatch_loss"][0] == pytest.approx(sum(full["minibatch_loss"][:9]) / 9, rel=1e-6)


def test_divergence_ends_the_run_and_says_where():
    torch.manual_seed(0)
    model = models.mlp([8, 6, 8], "sigmoid", "linear", prescale=4.0)
    opt = torch.optim.SGD(model.parameters(), lr=50.0)
    r = train.train(model, opt, toy_data(), "mse", 1000, batch_size=16, progress=False, check_every=10)
    assert r["diverged"] and r["diverged_at"] is not None and r["diverged_at"] < 1000
    assert len(r["minibatch_loss"]) == r["diverged_at"] - 1
    assert all(math.isfinite(v) for v in r["minibatch_loss"])
    assert all(u < r["diverged_at"] for u in r["updates"])


def test_wall_clock_excludes_evaluation(monkeypatch):
    real = train.evaluate

    def slow(*args, **kw):
        time.sleep(0.05)
        return real(*args, **kw)

    monkeypatch.setattr(train, "evaluate", slow)
    t0 = time.perf_counter()
    _, r = toy_run(updates=20)
    elapsed = time.perf_counter() - t0
    slept = 2 * len(r["updates"]) * 0.05  # train and test at each evaluation point
    assert elapsed > slept
    assert r["wall_clock_s"] < elapsed - 0.95 * slept


class Interrupt(Exception):
    pass


class CrashAfter:
    """An optimizer wrapper that dies after a number of steps (a killed job)."""

    limit = 27

    def __init__(self, opt):
        self.opt, self.steps = opt, 0

    def zero_grad(self):
        self.opt.zero_grad()

    def step(self):
        if self.steps == self.limit:
            raise Interrupt
        self.steps += 1
        self.opt.step()

    def state_dict(self):
        return self.opt.state_dict()

    def load_state_dict(self, state):
        self.opt.load_state_dict(state)


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    ckpt = tmp_path / "run.pt"
    kw = dict(updates=60, lr=0.3, eval_every=5)
    _, straight = toy_run(**kw)
    with pytest.raises(Interrupt):
        toy_run(checkpoint=ckpt, optimizer_cls=CrashAfter, **kw)
    assert ckpt.exists()
    # a fresh process: other initial weights and RNG state, all replaced by the checkpoint
    torch.manual_seed(123)
    model = models.mlp([8, 6, 8], "sigmoid", "sigmoid", prescale=4.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    resumed = train.train(model, opt, toy_data(), "mse", 60, batch_size=16, seed=0, eval_every=5,
                          progress=False, checkpoint=ckpt)
    for key in ("updates", "train_loss", "test_loss", "minibatch_loss", "diverged", "diverged_at"):
        assert resumed[key] == straight[key], key
    assert len(resumed["seconds"]) == len(straight["seconds"])
    with pytest.raises(ValueError, match="belongs to another run"):
        toy_run(checkpoint=ckpt, updates=61, lr=0.3, eval_every=5)


def test_checkpoints_between_evaluations_after_checkpoint_every_s(tmp_path):
    """Evaluations far apart (the log schedule of a long run): the timed save keeps the work."""
    ckpt = tmp_path / "run.pt"
    kw = dict(updates=60, lr=0.3, eval_every=50, check_every=5)
    _, straight = toy_run(**kw)
    with pytest.raises(Interrupt):  # dies at update 28; the last check was at update 25
        toy_run(checkpoint=ckpt, optimizer_cls=CrashAfter, checkpoint_every_s=0.0, **kw)
    assert torch.load(ckpt, weights_only=False)["step"] == 25
    torch.manual_seed(123)
    model = models.mlp([8, 6, 8], "sigmoid", "sigmoid", prescale=4.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    resumed = train.train(model, opt, toy_data(), "mse", 60, batch_size=16, seed=0, eval_every=50,
                          check_every=5, progress=False, checkpoint=ckpt)
    for key in ("updates", "train_loss", "test_loss", "minibatch_loss"):
        assert resumed[key] == straight[key], key


def test_curvature_backward_is_called_before_backward():
    calls = []

    class WithCurvature(CrashAfter):
        limit = 10**9

        def curvature_backward(self, output):
            calls.append((output.shape, output.requires_grad, self.steps))
            # the loop zeroes the gradients after this call, so extra backward passes are harmless
            output.pow(2).sum().backward(retain_graph=True)

    _, with_curv = toy_run(updates=12, optimizer_cls=WithCurvature)
    _, plain = toy_run(updates=12)
    assert [c[2] for c in calls] == list(range(12))
    assert all(c[:2] == ((16, 8), True) for c in calls)
    assert with_curv["train_loss"] == plain["train_loss"]


def test_classification_with_labels_and_eval_subset():
    torch.manual_seed(0)
    model = models.mlp([8, 16, 3], "relu", "linear", prescale=2.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    data = toy_data(classes=3)
    r = train.train(model, opt, data, "cross_entropy", 30, batch_size=32, progress=False, eval_subset=50)
    with torch.no_grad():
        out = model(data.train_x[:50])
        expected = losses.cross_entropy(out, data.train_y[:50]).item()
        error = (out.argmax(1) != data.train_y[:50]).double().mean().item()
        test_error = (model(data.test_x[:50]).argmax(1) != data.test_y[:50]).double().mean().item()
    assert r["train_loss"][-1] == pytest.approx(expected, rel=1e-5)
    assert r["train_error"][-1] == pytest.approx(error) and r["test_error"][-1] == pytest.approx(test_error)
    assert len(r["train_error"]) == len(r["updates"]) == len(r["test_error"])
    net = models.mlp([8, 6, 8])
    autoencoder = train.train(net, torch.optim.SGD(net.parameters(), lr=0.1), toy_data(), "mse", 2, batch_size=16,
                              progress=False)
    assert "train_error" not in autoencoder  # error rates only for classifiers


def test_dtype_mismatch_is_named_and_a_float64_run_records_float64_losses():
    model = models.mlp([8, 6, 8]).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="parameters are torch.float64 but the inputs are torch.float32"):
        train.train(model, opt, toy_data(), "mse", 2, batch_size=16, progress=False)
    d = toy_data()
    d64 = Dataset("toy", d.train_x.double(), d.train_y, d.test_x.double(), d.test_y)
    out = train.train(model, opt, d64, "mse", 3, batch_size=16, progress=False)
    assert len(out["minibatch_loss"]) == 3 and all(math.isfinite(v) for v in out["minibatch_loss"])


def test_graph_capture_refused_without_cuda():
    model = models.mlp([8, 6, 8])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert not train.can_capture(opt, torch.device("cpu"))
    with pytest.raises(ValueError, match="graph=True needs CUDA"):
        train.train(model, opt, toy_data(), "mse", 2, batch_size=16, progress=False, graph=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a CUDA GPU; none here")
def test_cuda_graph_equals_eager():
    data = toy_data().to("cuda")
    runs = {}
    for graph in (False, True):
        torch.manual_seed(0)
        model = models.mlp([8, 32, 8], "sigmoid", "sigmoid", 4.0).cuda()
        opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
        runs[graph] = train.train(model, opt, data, "mse", 200, batch_size=16, progress=False,
                                  graph=graph, eval_every=20)
    assert runs[True]["cuda_graph"] and not runs[False]["cuda_graph"]
    for key in ("updates", "train_loss", "test_loss", "minibatch_loss"):
        torch.testing.assert_close(torch.tensor(runs[True][key]), torch.tensor(runs[False][key]),
                                   rtol=1e-6, atol=1e-6)
