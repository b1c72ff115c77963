"""Every registered thesis erratum is confirmed by its check, and a failing check shows."""

import pytest

from sokit import errata


@pytest.mark.parametrize("id", list(errata.registry()))
def test_erratum_confirmed(id):
    result = errata.run(id)
    assert result.confirmed, result.evidence
    assert result.evidence


def test_reference_md_items_are_registered():
    ids = set(errata.registry())
    for needed in ("quadratic-hessian", "kl-half", "acp-bias-update", "damped-schur-complement"):
        assert needed in ids


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
