"""Every config field whose `Literal` choices name entries of a registry offers exactly those entries."""

from __future__ import annotations

from typing import get_args, get_type_hints

from preftune.data.config import DataConfig
from preftune.data.tokenize import Truncation
from preftune.losses.kl import KL_ESTIMATORS
from preftune.losses.pairwise import F_DIVERGENCE_SYNONYMS, F_DIVERGENCES
from preftune.losses.registry import LOSSES, SORTED_LOSSES
from preftune.rollout.backends import BACKENDS
from preftune.rollout.config import SamplingConfig
from preftune.trainers.dpo_config import DPOConfig
from preftune.trainers.online_dpo_config import OnlineLossType
from preftune.trainers.ppo_config import PPOConfig


def choices(config: type, name: str) -> set[str]:
    return set(get_args(get_type_hints(config)[name]))


def test_dpo_f_divergence_choices_are_the_divergences_with_trls_names():
    assert choices(DPOConfig, "f_divergence_type") == set(F_DIVERGENCES)
    assert {"reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"} <= set(
        F_DIVERGENCES
    )  # TRL 1.16's
    assert set(F_DIVERGENCE_SYNONYMS) | set(F_DIVERGENCE_SYNONYMS.values()) <= set(F_DIVERGENCES)


def test_online_dpo_losses_are_the_registered_losses_of_two_log_ratios():
    """Online DPO fills the two log-ratio slots and label_smoothing only, and its losses are per pair."""
    expected = {
        name
        for name, spec in LOSSES.items()
        if not spec.reference_free and set(spec.params) <= {"label_smoothing"} and name not in SORTED_LOSSES
    }
    assert set(get_args(OnlineLossType)) == expected


def test_kl_backend_and_truncation_choices_are_their_registries():
    assert choices(PPOConfig, "kl_estimator") == set(KL_ESTIMATORS)
    assert choices(SamplingConfig, "generation_backend") == set(BACKENDS)
    assert choices(DataConfig, "truncation") == set(get_args(Truncation))
