"""benchmarks/step_overhead.py in its smoke mode: the structure of what it writes, not its timings."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import step_overhead  # noqa: E402

LABELS = ["matmul floor", "PyTorch SGD (bare)", "SGD", "ACP, fixed alpha", "KFAC (natural gradient)",
          "ASDL KFAC", "ACP, heuristic alpha", *step_overhead.ABLATIONS]


def test_floor_counts_the_matmuls_of_one_sgd_step():
    """784-1000-500-250-30-250-500-1000-784 at batch 200: 3.09 GFLOP (no input gradient of the data)."""
    sizes = [784, 1000, 500, 250, 30, 250, 500, 1000, 784]
    assert step_overhead.layer_shapes() == list(zip(sizes[:-1], sizes[1:]))
    forward = sum(2 * 200 * a * b for a, b in zip(sizes[:-1], sizes[1:]))
    assert step_overhead.floor_flops() == 3 * forward - 2 * 200 * 784 * 1000 == 3_086_000_000


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, str(BENCHMARKS / "step_overhead.py"), "--quick", "--device", "cpu",
                    "--out", str(out), "--note", "test", "--only", *LABELS],
                   check=True, env=env, capture_output=True, text=True, timeout=600)
    (path,) = out.glob("step_overhead_*.json")
    return json.loads(path.read_text()), path.with_suffix(".md").read_text()


def test_every_contender_is_timed_in_every_round(smoke):
    record, _ = smoke
    ran = set(record["methods"]) | set(record["not_run"])
    assert ran == set(LABELS)
    assert "ASDL KFAC" in record["methods"] or "asdfghjkl" in record["not_run"]["ASDL KFAC"]
    assert len(record["orders"]) == record["rounds"]
    for order in record["orders"]:
        assert sorted(order) == sorted(record["methods"])
    every = record["refresh_every"]
    for label, row in record["methods"].items():
        refreshes = label in ("ACP, fixed alpha", "KFAC (natural gradient)", "ASDL KFAC",
                              "ACP, heuristic alpha", *step_overhead.ABLATIONS)
        assert row["refresh_steps"] == (record["rounds"] if refreshes else 0), label
        assert row["plain_steps"] + row["refresh_steps"] == record["rounds"] * every
        assert 0 < row["min_ms"] <= row["median_ms"]


def test_ratios_targets_and_provenance(smoke):
    record, table = smoke
    rows = record["methods"]
    assert rows["SGD"]["x_sgd"] == 1.0 and rows["matmul floor"]["x_floor"] == 1.0
    acp = rows["ACP, fixed alpha"]
    assert acp["x_sgd"] == pytest.approx(acp["median_ms"] / rows["SGD"]["median_ms"])
    assert acp["target"].startswith("<= 1.3x SGD") and acp["met"] == (acp["x_sgd"] <= 1.3 and (
        "x_asdl" not in acp or acp["x_asdl"] <= 0.5))
    assert rows["SGD"]["target"] == "<= 1.25x floor"
    assert rows["matmul floor"]["flops"] == 3_086_000_000
    machine = record["machine"]
    for key in ("cpu", "cpu_logical", "cpu_threads", "torch_version", "commit", "dirty"):
        assert key in machine
    assert machine["cpu_threads"] == 1
    assert len(record["load_average"]["before"]) == len(record["load_average"]["after"]) == 3
    assert "| method | mode | ms/step (median) |" in table and "x ASDL KFAC" in table
    assert "GFLOP/s" in table and table.count("\n| ACP, fixed alpha |") == 2


def test_ablations_split_acp_cost_into_parts_that_add_up(smoke):
    """The ablations take other steps than ACP (plain gradient; C^-1 = I) and the parts
    table splits heuristic-alpha ACP's cost over SGD into them, summing to the total."""
    record, table = smoke
    rows = record["methods"]
    sgd = rows["SGD"]["median_ms"]
    parts = [float(line.rsplit("|", 2)[1]) for line in table.splitlines()
             if line.startswith(("| fused layers'", "| ACP's vector work", "| applying C^-1"))]
    total = next(float(line.rsplit("|", 2)[1]) for line in table.splitlines() if line.startswith("| total |"))
    assert len(parts) == 3 and sum(parts) == pytest.approx(total, abs=2e-3)
    assert total == pytest.approx(rows["ACP, heuristic alpha"]["median_ms"] / sgd - 1, abs=1e-3)


def test_ablation_patches_change_the_direction_and_keep_the_records():
    """plain_gradient gives g^T h; no_inverse stores an identity with the real inverse's cost."""
    import torch

    from sokit import models
    from sokit.optim import ACP

    torch.manual_seed(0)
    model = models.mlp([6, 5, 4], "sigmoid", "sigmoid", 1.0)
    x = torch.rand(3, 6)
    for part in step_overhead.ABLATIONS.values():
        opt = ACP(model, lr=0.1, alpha="heuristic", amortization=2)
        step_overhead.ablate(part)(opt.preconditioner)
        out = model(x)
        h = opt.preconditioner.layers[0].h.clone()
        ((out - x[:, :4]) ** 2).mean().backward()
        g = opt.preconditioner.layers[0].g
        if part == "plain_gradient":
            torch.testing.assert_close(model[0].weight.grad, g.T @ h)
        else:
            inv = opt.preconditioner.inverse_c[0]
            assert isinstance(inv, step_overhead._NoInverse) and inv.cost_per_row > 0
        opt.step()
        opt.preconditioner.remove()
