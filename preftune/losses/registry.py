"""Every pairwise preference objective by name, as `--loss_type` takes them.

The core family (preftune/losses/pairwise.py) and the variants (pairwise_variants.py)
under one mapping of `PairwiseLoss` entries: the function, whether it needs a reference,
whether it takes per-token-mean log-probs, and the keyword parameters the trainer fills.
"""

from __future__ import annotations

from preftune.losses.pairwise import PAIRWISE_LOSSES, PairwiseLoss
from preftune.losses.pairwise_variants import VARIANT_LOSS_FUNCTIONS

LOSSES: dict[str, PairwiseLoss] = {
    **PAIRWISE_LOSSES,
    **{
        name: PairwiseLoss(fn, reference_free=False, length_normalized=False, params=params)
        for name, (fn, params) in VARIANT_LOSS_FUNCTIONS.items()
    },
}

SORTED_LOSSES = ("aot", "aot_unpaired")
"""Losses computed per sorted position across the batch, not per pair: no per-pair weights apply."""
