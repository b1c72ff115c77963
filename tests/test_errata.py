"""Every registered thesis erratum is confirmed by its check, and a failing check shows."""

import pytest
import torch

from sokit import data, errata

NEEDS_MNIST = {"acp-bias-update"}  # its check runs the autoencoder on a real minibatch


@pytest.mark.parametrize("id", list(errata.registry()))
def test_erratum_confirmed(id):
    if id in NEEDS_MNIST and not data.is_cached("mnist"):
        pytest.skip("needs MNIST in the sokit cache")
    result = errata.run(id)
    assert result.confirmed, result.evidence
    assert result.evidence


def test_reference_md_items_are_registered():
    ids = set(errata.registry())
    for needed in ("quadratic-hessian", "kl-half", "acp-bias-update", "damped-schur-complement"):
        assert needed in ids


def test_kinds_are_known():
    assert {e.kind for e in errata.registry().values()} <= set(errata.KINDS)
    with pytest.raises(ValueError, match="kind must be one of"):
        errata._erratum("new-kind", "x", "y", "z", kind="typo")


def test_registry_in_thesis_order():
    ids = list(errata.registry())
    assert ids.index("ubp-zeroth-order") < ids.index("local-criterion-factor-2")
    assert ids.index("damped-schur-complement") < ids.index("kfac-ng-jacobians")


# Each check below is fed the thesis's form and must reject it.

def test_ubp_check_rejects_the_displayed_expansion():
    layer = errata._ubp_layer()
    with pytest.raises(AssertionError, match="first-order expansion"):
        errata._check_first_order(layer["increment"], layer)  # section 5.2 as displayed
    errata._check_first_order(layer["before"] + layer["increment"], layer)


def test_fig5_1_check_rejects_the_thesis_baseline_as_the_only_one():
    ubp, sgd5, sgd6 = errata._fig5_1_comparison()
    assert errata._ubp_beats(ubp, sgd5, (1e4, 3e5)) < 1  # the thesis's comparison holds
    with pytest.raises(AssertionError, match="fig6_2's SGD"):
        errata._ubp_beats(ubp, sgd6, (1e4, 3e5))


def test_acp_block_inverse_rejects_algorithm_4_bias():
    h, t, W, b = errata._layer_problem()
    g = errata._dl_da(h, t, W, b)
    dW, db_eq, db_alg = errata._acp_steps(h, g, 0.1, 1.0, eps=0.01)
    errata._check_block_inverse(h, g, 0.1, 1.0, 0.01, dW, db_eq)
    with pytest.raises(AssertionError):
        errata._check_block_inverse(h, g, 0.1, 1.0, 0.01, dW, db_alg)  # Algorithm 4 line 13


def test_mc_check_rejects_the_true_label_factor():
    """The sampled-target estimate matches diag(p) - p p^T; the Gauss-Newton factor of the
    thesis (outer product of the true-label gradient) does not, so the check can fail."""
    gen = torch.Generator().manual_seed(3)
    p = torch.softmax(torch.randn(3, 4, generator=gen, dtype=torch.float64), dim=1)
    mean, var = errata._sampled_target_moments(p)
    labels = torch.tensor([0, 1, 2])
    g = p - torch.nn.functional.one_hot(labels, 4).to(p.dtype)
    true_label = torch.einsum("bk,bl->kl", g, g) / 3
    with pytest.raises(AssertionError, match="standard errors"):
        errata._within_mc_error(true_label, mean.mean(0), var, 4000, "true-label factor")


def test_run_reports_a_failed_check(monkeypatch):
    def wrong() -> str:
        raise AssertionError("the thesis was right after all")

    fake = errata.Erratum("fake", "nowhere", "claim", "correction", wrong)
    monkeypatch.setitem(errata._REGISTRY, "fake", fake)
    result = errata.run("fake")
    assert not result.confirmed
    assert "the thesis was right after all" in result.evidence
    assert "**FAILED**" in errata.markdown_table([result])


def test_markdown_table_lists_every_erratum():
    results = [errata.run("quadratic-hessian"), errata.run("acp-bias-update")]
    table = errata.markdown_table(results)
    lines = table.splitlines()
    assert lines[0].startswith("| id | location")
    assert len(lines) == 2 + len(results)
    assert "`quadratic-hessian`" in table and "confirmed" in table


def test_unknown_erratum():
    with pytest.raises(KeyError, match="no erratum 'nope'"):
        errata.get("nope")


def test_duplicate_id_rejected():
    with pytest.raises(ValueError, match="registered twice"):
        errata._erratum("kl-half", "x", "y", "z")(lambda: "")


def test_pipes_rejected_in_table_text():
    with pytest.raises(ValueError, match="Vert"):
        errata._erratum("pipe", "x", "$|x|$", "z")


def test_evidence_pipes_escaped():
    table = errata.markdown_table([errata.run("kl-half")])
    assert "p_theta \\|\\| p_theta+td" in table
