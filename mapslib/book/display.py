"""Notebook setup for the chapters: quiet deterministic output, and the model every chapter opens with."""

from __future__ import annotations

import os
from typing import Any


def notebook_setup(precision: int = 3) -> None:
    """Quiet, deterministic notebook output: no progress bars or library warnings, fixed float precision."""
    import warnings

    # first: importing transformers can warn (e.g. tqdm without widgets)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TQDM_DISABLE", "1")

    import matplotlib
    import pandas as pd
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    pd.set_option("display.precision", precision)
    pd.set_option("display.max_rows", 60)
    pd.set_option("display.width", 120)
    matplotlib.rcParams.update(
        {"figure.dpi": 110, "savefig.dpi": 110, "axes.titlesize": 11, "figure.figsize": (8, 4)}
    )
    torch.manual_seed(0)


def open_chapter(
    model: str, device: str = "cpu", weights_only: bool = False
) -> tuple[Any, Any, str]:
    """Every chapter's first cell: set up the notebook, load the model, and say how it was stored.

    With `weights_only`, only the weights the static chapters read are opened, tensor by tensor from
    the checkpoint (load_weights: for models larger than memory; same scores); the behaviour
    chapters need the whole model. Returns the loaded model (or weights), its HeadWeights and the
    short name used in titles.
    """
    from mapslib.foundation.models import load_model, load_weights

    notebook_setup()
    lm = (load_weights if weights_only else load_model)(model, device=device)
    print(lm.quantization)
    return lm, lm.hw, lm.name
