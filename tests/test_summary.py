"""The book's results-at-a-glance table (sokit.report.glance)."""

from __future__ import annotations

import json

from sokit import experiments
from sokit.report import glance as summary


def test_every_thesis_experiment_has_a_row():
    names = {item.experiment for item in summary.items()}
    searches = {n for n in experiments.registry() if n.endswith(("_hparams", "_search"))} | {"fig6_acp_alpha"}
    registered = set(experiments.registry()) - searches  # hyperparameter searches: chapter 6
    assert names == registered, f"summary rows missing for {registered - names}, unknown {names - registered}"


def test_rows_come_from_the_stored_result_the_chapter_shows(tmp_path, monkeypatch):
    monkeypatch.setenv("SOKIT_RESULTS", str(tmp_path))
    monkeypatch.delenv("SOKIT_PROFILE", raising=False)
    assert all(r["ours"].startswith("not stored") for r in summary.rows())
    config = experiments.get("fig6_2").configs["quick"]
    run = {"updates": [1000], "seconds": [1.0], "train_loss": [12.5], "test_loss": [13.0], "diverged": False}
    results = {label: dict(run) for label in config["methods"]}
    results["KFAC"] = dict(run, diverged=True, train_loss=[])
    record = {"experiment": "fig6_2", "profile": "quick", "config": config, "results": results,
              "provenance": {"device": "Test GPU", "device_type": "cuda", "commit": "0123456789ab"}}
    (tmp_path / "fig6_2").mkdir()
    (tmp_path / "fig6_2" / "quick.json").write_text(json.dumps(record))
    row = next(r for r in summary.rows() if r["experiment"] == "`fig6_2`")
    assert row["profile"] == "quick (1,000 updates)"
    assert "SGD 12.5" in row["ours"] and "KFAC diverged" in row["ours"]
    assert row["hardware"] == "Test GPU (cuda), commit 01234567"
    assert "KFAC 0.92" in row["thesis's numbers"]
    table = summary.markdown_table()
    assert table.count("\n") == len(summary.items()) + 1
