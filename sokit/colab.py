"""Set-up for running the book's notebooks on Google Colab.

The first code cell of every chapter clones the book's repository (so that the
thesis's figures and the stored results are there), installs it and calls
:func:`setup`, which chooses the profile the chapter's experiments run.
"""

from __future__ import annotations

import os

import torch

GPU_HINT = ("No GPU in this runtime: choose Runtime > Change runtime type > GPU and rerun to "
            "train the full profile; until then the chapters show the stored results "
            "(and run the smoke profile where none is stored).")


def setup() -> str:
    """Pick the profile: "full" on a GPU (unless ``$SOKIT_PROFILE`` is set), and say so.

    Returns the profile the notebooks will run ("" when :func:`sokit.experiments.pick_profile`
    chooses per experiment, without a GPU). Full runs keep checkpoints under
    ``results/<name>/full.work``; set ``$SOKIT_RESULTS`` to a folder on a mounted Drive
    to keep them across Colab sessions.
    """
    if not torch.cuda.is_available():
        print(GPU_HINT)
        return os.environ.get("SOKIT_PROFILE", "")
    profile = os.environ.setdefault("SOKIT_PROFILE", "full")
    print(f"GPU: {torch.cuda.get_device_name(0)}; experiments run the {profile!r} profile "
          f"(the thesis's 3e5 updates take hours per figure; an interrupted run resumes from "
          f"its checkpoints when the cell is run again).")
    return profile
