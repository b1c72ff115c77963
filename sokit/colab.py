"""Running the book's notebooks on Google Colab: stored results at once, training opt-in.

The first code cell of every chapter clones the book's repository (so that the thesis's
figures and the stored results are there), installs it and calls :func:`setup`. It sets
nothing: each page shows the largest stored profile of its experiments
(:func:`sokit.experiments.pick_profile`), so "Run all" never starts hours of training.
Training is the page's clearly marked opt-in cell, :func:`run_yourself`, which does
nothing until a profile is named and otherwise prints what each profile costs.
"""

from __future__ import annotations

from typing import Any

import torch

from sokit import experiments

#: ms per eager step of a second-order method on an H100 (ACP, KFAC, NNN at batch 200 on
#: the autoencoder: the measurement quoted in issue 13); the GPU estimates below use it for
#: every method, so they are rough: Colab's GPUs are slower, a captured SGD step is faster
EAGER_GPU_MS = 4.0

GPU_HINT = ("No GPU in this runtime. The pages show the stored results; to train one yourself, "
            "choose Runtime > Change runtime type > GPU and use the page's opt-in "
            "'Run it yourself' cell.")


def setup() -> str:
    """Say which device the opt-in cells would train on; returns its name ("" without a GPU)."""
    if not torch.cuda.is_available():
        print(GPU_HINT)
        return ""
    name = torch.cuda.get_device_name(0)
    print(f"GPU: {name}. The pages show the stored results; nothing trains until you name a "
          f"profile in a page's opt-in 'Run it yourself' cell (it lists what each profile costs).")
    return name


def _methods(config: dict[str, Any]) -> int:
    return len(config.get("methods", {})) or 1


def cost(name: str, profile: str) -> dict[str, str]:
    """What training ``name`` at ``profile`` costs: its budget, the time it took where it is
    stored (device named), and a rough estimate on a GPU from :data:`EAGER_GPU_MS`."""
    config = experiments.get(name).config(profile)
    record = experiments.load(name, profile) if experiments.is_current(name, profile) else None
    measured = "not run yet"
    if record is not None:
        prov = record["provenance"]
        measured = f"{prov['wall_clock_s'] / 60:,.1f} min on {prov['device']} ({prov['device_type']})"
    trials = config.get("trials", 1)
    steps = config.get("updates", 0) * _methods(config) * trials
    gpu = f"about {steps * EAGER_GPU_MS / 60_000:,.1f} min" if steps else "not estimated"
    if "updates" not in config:
        budget = "a search"
    else:
        per_trial = f"{trials} trials x " if "trials" in config else ""
        budget = f"{_methods(config)} x {per_trial}{config['updates']:,} updates"
    return {"profile": profile, "budget": budget, "measured": measured, "on a GPU (eager)": gpu}


def run_yourself(names: list[str], profile: str | None = None, jobs: int = 1) -> list[dict[str, Any]]:
    """The opt-in training cell: with ``profile`` None, print each profile's cost for each
    experiment and train nothing; else run (or load) each experiment at ``profile``."""
    if profile is None:
        for name in names:
            print(f"{name}:")
            for profile_name in experiments.get(name).configs:
                c = cost(name, profile_name)
                print(f"  {profile_name:6s} {c['budget']:>26s}   stored run: {c['measured']};"
                      f"   on a GPU: {c['on a GPU (eager)']}")
        print("Nothing was trained. Set PROFILE above to one of these and run the cell again; an "
              "interrupted run resumes from its checkpoints.")
        return []
    return [experiments.load_or_run(name, profile, jobs=jobs) for name in names]
