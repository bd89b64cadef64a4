"""preftune's losses against TRL 1.16's own loss code, on hand-built log-probs (dev only: skips without TRL).

TRL computes its losses inside trainer methods. These tests call those methods unbound, with a stand-in
`self` that holds the settings the method reads, and a stand-in model that returns TRL's fused-LM-head
outputs for given per-token log-probs; reference log-probs go in as precomputed. No model is built.
preftune's side is `DPOTrainer.pair_losses` (its composition of log-ratios, f-divergence, lengths and
loss parameters), or the pure loss where the trainer adds nothing.

Every loss type the two share is compared: DPOTrainer's 15, with each f-divergence TRL allows, LD-DPO
and WPO; CPO's simpo; ORPO's odds ratio; KTO; the reward model's Bradley-Terry loss. Where preftune
departs on purpose (docs/trl_differences.md), the test asserts the difference and the equal case.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # CPO and ORPO live in trl.experimental in 1.16
trl = pytest.importorskip("trl", reason="dev-only parity check: install trl (pip install -e '.[bench]')")
if not trl.__version__.startswith("1.16."):
    pytest.skip(
        f"written against TRL 1.16's loss code (its trainers' private methods); found TRL {trl.__version__}",
        allow_module_level=True,
    )

from trl.experimental.cpo import CPOTrainer  # noqa: E402
from trl.experimental.orpo import ORPOTrainer  # noqa: E402
from trl.trainer.dpo_trainer import DPOTrainer as TRLDPOTrainer  # noqa: E402
from trl.trainer.kto_trainer import KTOTrainer as TRLKTOTrainer  # noqa: E402
from trl.trainer.reward_trainer import RewardTrainer as TRLRewardTrainer  # noqa: E402

from preftune.losses.pairwise_variants import bco_pair_loss, ld_logps, wpo_weights  # noqa: E402
from preftune.losses.reward import bradley_terry_loss  # noqa: E402
from preftune.losses.unpaired import kto_loss  # noqa: E402
from tests.unit.dpo_helpers import loss_only_trainer  # noqa: E402

TRL_DPO_LOSSES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard",
    "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)  # fmt: skip
"""TRL 1.16's DPOConfig.loss_type values (its docstring lists these fifteen)."""
PREFTUNE_NAME = {"ipo": "ipo_norm"}
"""TRL's name -> preftune's, where they differ: TRL's ipo averages log-ratios per token."""
TRL_F_DIVERGENCE_LOSSES = ("sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft")
"""The loss types TRL 1.16 allows with a non-default f_divergence_type."""
SMOOTHING = {"robust": 0.1, "exo_pair": 1e-3, "aot": 0.1, "aot_unpaired": 0.1}
"""label_smoothing of the losses where TRL reads it."""
SORTED = ("aot", "aot_unpaired")
BETA = 0.3
B = 4


class StandInLM:
    """TRL's policy model as its loss code sees it: fused-LM-head outputs for fixed per-token log-probs."""

    training = False

    def __init__(self, token_logps: torch.Tensor) -> None:
        self.token_logps = token_logps  # (N, T - 1), 0 off the completion

    def __call__(self, **_: object) -> SimpleNamespace:
        zeros = torch.zeros_like(self.token_logps)
        return SimpleNamespace(
            log_probs=self.token_logps,
            entropy=zeros,
            mean_logits=zeros,
            is_top1=zeros.bool(),
            log_sum_sq_probs=zeros,
        )


class StandInAccelerator:
    device = torch.device("cpu")

    def gather(self, value: torch.Tensor) -> torch.Tensor:
        return value

    gather_for_metrics = gather


def token_batch(lengths: list[int], dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T - 1) per-token log-probs, 0 past each completion, and the (N, T) completion mask (token 0 is the
    prompt), for completions of the given lengths."""
    generator = torch.Generator().manual_seed(seed)
    T = 1 + max(lengths)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, 1 : 1 + length] = 1
    token_logps = -torch.rand(len(lengths), T - 1, generator=generator, dtype=torch.float64) * 1.5
    return (token_logps * mask[:, 1:]).to(dtype), mask


def trl_dpo_loss(
    token_logps: torch.Tensor, mask: torch.Tensor, ref_logps: torch.Tensor, loss_type: str, **settings: object
) -> torch.Tensor:
    """TRL's DPOTrainer._compute_loss: the batch-mean loss of the pairs (rows: chosen, then rejected)."""
    model = StandInLM(token_logps)
    stand_in = SimpleNamespace(
        model=model, accelerator=StandInAccelerator(), aux_loss_enabled=False, precompute_ref_logps=True,
        ld_alpha=settings.get("ld_alpha"), f_divergence_type=settings.get("f_divergence_type", "reverse_kl"),
        f_alpha_divergence_coef=settings.get("f_alpha_divergence_coef", 0.5), loss_types=[loss_type],
        loss_weights=[1.0], beta=BETA, label_smoothing=SMOOTHING.get(loss_type, 0.0),
        use_weighting=settings.get("use_weighting", False),
        args=SimpleNamespace(discopop_tau=0.05, gradient_checkpointing_kwargs=None),
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
    )  # fmt: skip
    half = token_logps.shape[0] // 2
    inputs = {
        "input_ids": torch.zeros_like(mask),
        "attention_mask": torch.ones_like(mask),
        "completion_mask": mask,
        "ref_chosen_logps": ref_logps[:half],
        "ref_rejected_logps": ref_logps[half:],
    }
    return TRLDPOTrainer._compute_loss(stand_in, model, inputs, return_outputs=False)


def pairs(dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """B pairs of unequal lengths: (2B, T - 1) token log-probs, (2B, T) mask, (2B,) reference log-probs, (2B,) lengths."""
    lengths = [3, 7, 1, 5, 9, 2, 6, 4]  # chosen 3, 7, 1, 5; rejected 9, 2, 6, 4
    token_logps, mask = token_batch(lengths, dtype, seed)
    ref_logps = (
        token_logps.sum(dim=1) + torch.linspace(-2.5, 2.0, 2 * B, dtype=torch.float64).to(dtype)
    ).roll(3)
    return token_logps, mask, ref_logps, torch.tensor(lengths, dtype=dtype)


def preftune_losses(name: str, logps: torch.Tensor, ref_logps: torch.Tensor, lengths: torch.Tensor, **flags):
    if name == "sft":  # preftune's sft term comes with a preference loss (alone it is `preftune sft`)
        flags |= {"loss_type": ["sigmoid", "sft"], "loss_weights": [0.0, 1.0]}
    else:
        flags |= {"loss_type": [PREFTUNE_NAME.get(name, name)], "label_smoothing": SMOOTHING.get(name, 0.0)}
    trainer = loss_only_trainer(beta=BETA, **flags)
    return trainer.pair_losses(logps, ref_logps, lengths)[0]  # (B,)


def assert_matches_trl(name: str, dtype: torch.dtype, **flags: object) -> None:
    """Per pair (TRL run on one pair at a time), or the batch mean for the sorted losses."""
    token_logps, mask, ref_logps, lengths = pairs(dtype)
    ours = preftune_losses(name, token_logps.sum(dim=1), ref_logps, lengths, **flags)
    tolerance = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 2e-6, "atol": 2e-6}
    if name == "exo_pair":  # TRL makes eps a float32 tensor: log(eps) carries float32 rounding
        tolerance = {"rtol": 1e-7, "atol": 1e-7}
    if name in SORTED:
        theirs = trl_dpo_loss(token_logps, mask, ref_logps, name, **flags)
        torch.testing.assert_close(ours.mean(), theirs, **tolerance)
        return
    for i in range(B):
        rows = [i, B + i]
        theirs = trl_dpo_loss(token_logps[rows], mask[rows], ref_logps[rows], name, **flags)
        torch.testing.assert_close(ours[i], theirs, **tolerance)


@pytest.mark.parametrize("name", [n for n in TRL_DPO_LOSSES if n != "bco_pair"])
def test_dpo_loss_types_equal_trls(name):
    assert_matches_trl(name, torch.float64)


@pytest.mark.parametrize("divergence", ["forward_kl", "js_divergence"])
@pytest.mark.parametrize("name", TRL_F_DIVERGENCE_LOSSES)
def test_f_divergences_equal_trls(name, divergence):
    assert_matches_trl(name, torch.float64, f_divergence_type=divergence)


@pytest.mark.parametrize("coef", [0.3, 0.5, 0.8])
@pytest.mark.parametrize("name", ["sigmoid", "sigmoid_norm", "ipo"])
def test_alpha_divergence_equals_trls_with_its_coefficient(name, coef):
    """float32: TRL's alpha-divergence code has clamp limits for float16/bfloat16/float32 only."""
    assert_matches_trl(
        name, torch.float32, f_divergence_type="alpha_divergence", f_alpha_divergence_coef=coef
    )


def test_bco_pair_equals_trls_with_no_shift_and_preftunes_trainer_shifts_by_the_mean_reward():
    """TRL 1.16's bco_pair has no reward shift (delta = 0); preftune's DPO trainer uses the micro-batch's
    mean implicit reward (the paper's running mean, per batch)."""
    token_logps, mask, ref_logps, lengths = pairs(torch.float64)
    logratio = token_logps.sum(dim=1) - ref_logps
    ours, _ = bco_pair_loss(logratio[:B], logratio[B:], BETA, delta=0.0)
    torch.testing.assert_close(ours.mean(), trl_dpo_loss(token_logps, mask, ref_logps, "bco_pair"))
    trainer = preftune_losses("bco_pair", token_logps.sum(dim=1), ref_logps, lengths)
    shifted, _ = bco_pair_loss(logratio[:B], logratio[B:], BETA, delta=(BETA * logratio).mean().item())
    torch.testing.assert_close(trainer, shifted)
    assert not torch.allclose(trainer, ours)


def test_sft_term_is_per_pair_where_trl_averages_over_the_batchs_tokens():
    """Equal for one pair (above); for several, TRL divides the summed NLL by all chosen tokens."""
    token_logps, mask, ref_logps, lengths = pairs(torch.float64)
    ours = preftune_losses("sft", token_logps.sum(dim=1), ref_logps, lengths)
    theirs = trl_dpo_loss(token_logps, mask, ref_logps, "sft")
    torch.testing.assert_close(theirs, -token_logps[:B].sum() / lengths[:B].sum())
    torch.testing.assert_close(ours, -token_logps[:B].sum(dim=1) / lengths[:B])


def test_sigmoid_with_label_smoothing_is_cdpo_here_and_ignored_by_trl():
    token_logps, mask, ref_logps, lengths = pairs(torch.float64)
    logps = token_logps.sum(dim=1)
    theirs = trl_dpo_loss(token_logps, mask, ref_logps, "sigmoid")  # TRL reads no smoothing for sigmoid
    plain = loss_only_trainer(beta=BETA).pair_losses(logps, ref_logps, lengths)[0]
    cdpo = loss_only_trainer(beta=BETA, label_smoothing=0.1).pair_losses(logps, ref_logps, lengths)[0]
    torch.testing.assert_close(plain.mean(), theirs)
    assert abs(cdpo.mean().item() - theirs.item()) > 1e-3


def test_ipo_sums_where_trls_averages_per_token():
    token_logps, mask, ref_logps, lengths = pairs(torch.float64)
    summed = loss_only_trainer(loss_type=["ipo"], beta=BETA).pair_losses(
        token_logps.sum(dim=1), ref_logps, lengths
    )[0]
    theirs = trl_dpo_loss(token_logps, mask, ref_logps, "ipo")
    assert abs(summed.mean().item() - theirs.item()) > 1e-3


def test_ld_dpo_equals_trls():
    """LD-DPO's weighted log-probs (ld_alpha 0.4) of policy and reference, then the sigmoid loss."""
    token_logps, mask, _, lengths = pairs(torch.float64)
    ref_token_logps, _ = token_batch(lengths.long().tolist(), torch.float64, seed=1)
    public = torch.minimum(lengths[:B], lengths[B:]).repeat(2).long()
    response = mask[:, 1:].bool()
    logps = ld_logps(token_logps, response, public, 0.4)
    ref_logps = ld_logps(ref_token_logps, response, public, 0.4)
    ours = loss_only_trainer(beta=BETA, ld_alpha=0.4).pair_losses(logps, ref_logps, lengths)[0]
    theirs = trl_dpo_loss(token_logps, mask, ref_logps, "sigmoid", ld_alpha=0.4)
    torch.testing.assert_close(ours.mean(), theirs, rtol=1e-12, atol=1e-12)


def test_wpo_weights_equal_trls_when_its_alignment_term_is_zero():
    """TRL's WPO subtracts log sum_v p_v^2 per token (sampled alignment); preftune's weights are the plain
    mean-token probabilities. With that term 0 (the stand-in model's) the two agree."""
    token_logps, mask, ref_logps, lengths = pairs(torch.float64)
    logps = token_logps.sum(dim=1)
    plain = loss_only_trainer(beta=BETA).pair_losses(logps, ref_logps, lengths)[0]
    ours = plain * wpo_weights(logps[:B] / lengths[:B], logps[B:] / lengths[B:])
    theirs = trl_dpo_loss(token_logps, mask, ref_logps, "sigmoid", use_weighting=True)
    torch.testing.assert_close(ours.mean(), theirs, rtol=1e-12, atol=1e-12)


def cpo_stand_in(label_smoothing: float) -> SimpleNamespace:
    return SimpleNamespace(
        alpha=0.0, loss_type="simpo", simpo_gamma=0.5, beta=2.0, label_smoothing=label_smoothing,
        accelerator=StandInAccelerator(),
    )  # fmt: skip


def test_simpo_equals_trls_cpo_simpo_and_smooths_differently():
    """SimPO's mean log-probs (TRL's CPOTrainer averages them for simpo); gamma 0.5, beta 2."""
    token_logps, _, _, lengths = pairs(torch.float64)
    logps = token_logps.sum(dim=1)
    for smoothing in (0.0, 0.2):
        trainer = loss_only_trainer(loss_type=["simpo"], beta=2.0, gamma=0.5, label_smoothing=smoothing)
        ours = trainer.pair_losses(logps, None, lengths)[0]
        mean_logps = logps / lengths
        theirs = CPOTrainer.cpo_loss(cpo_stand_in(smoothing), mean_logps[:B], mean_logps[B:])[0]
        if smoothing == 0.0:
            torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
        else:  # TRL's flipped term is softplus(z - gamma); preftune's keeps the margin: softplus(z + gamma)
            assert not torch.allclose(ours, theirs)


def test_orpo_odds_ratio_term_equals_trls():
    """TRL's odds_ratio_loss returns beta * logsigmoid(log odds ratio), which its trainer subtracts; it
    computes in float32."""
    token_logps, _, _, lengths = pairs(torch.float64)
    logps = token_logps.sum(dim=1)
    trainer = loss_only_trainer(loss_type=["sft", "orpo"], beta=0.25)
    _, metrics = trainer.pair_losses(logps, None, lengths)
    mean_logps = logps / lengths
    stand_in = SimpleNamespace(beta=0.25, accelerator=StandInAccelerator())
    theirs = ORPOTrainer.odds_ratio_loss(stand_in, mean_logps[:B], mean_logps[B:])[0]
    torch.testing.assert_close(metrics["loss/orpo"], -theirs.double(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(metrics["loss/sft"], -mean_logps[:B])


def test_kto_equals_trls_with_a_given_reference_point():
    """KTO with TRL's KL estimate off (z_ref = 0), lambda_D = 1.5, lambda_U = 0.7."""
    labels = torch.tensor([True, False, True, True, False, False])
    token_logps, mask = token_batch([3, 5, 2, 6, 1, 4], torch.float64, seed=2)
    ref_logps = token_logps.sum(dim=1) + torch.tensor([0.4, -1.1, 2.0, -0.3, 0.9, -2.2], dtype=torch.float64)
    model = StandInLM(token_logps)
    stand_in = SimpleNamespace(
        model=model, accelerator=StandInAccelerator(), calculate_KL=False, aux_loss_enabled=False,
        _compute_kl_logps=lambda model, batch: None,  # TRL's method returns None when calculate_KL is False
        precompute_ref_logps=True, loss_type="kto", beta=BETA, desirable_weight=1.5, undesirable_weight=0.7,
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
    )  # fmt: skip
    inputs = {"input_ids": torch.zeros_like(mask), "attention_mask": torch.ones_like(mask), "completion_mask": mask,
              "label": labels, "ref_logps": ref_logps}  # fmt: skip
    theirs = TRLKTOTrainer._compute_loss(stand_in, model, inputs, return_outputs=False)
    logratio = token_logps.sum(dim=1) - ref_logps
    ours, _ = kto_loss(logratio, labels, 0.0, BETA, desirable_weight=1.5, undesirable_weight=0.7)
    torch.testing.assert_close(ours.mean(), theirs, rtol=1e-12, atol=1e-12)


def test_bradley_terry_equals_trls_reward_loss_with_margin_and_centering():
    rewards = torch.tensor(
        [[1.2], [-0.3], [0.5], [0.1], [0.4], [2.0]], dtype=torch.float64
    )  # chosen, rejected
    margin = torch.tensor([0.5, 0.0, 1.5], dtype=torch.float64)
    model = SimpleNamespace(training=False)
    stand_in = SimpleNamespace(
        model=model, accelerator=StandInAccelerator(), args=SimpleNamespace(center_rewards_coefficient=0.01),
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
    )  # fmt: skip
    inputs = {"attention_mask": torch.ones(6, 2), "margin": margin}

    def forward(**_: object) -> SimpleNamespace:
        return SimpleNamespace(logits=rewards)

    theirs = TRLRewardTrainer.compute_loss(stand_in, forward, inputs)
    ours, _ = bradley_terry_loss(rewards[:3, 0], rewards[3:, 0], margin=margin, center_coef=0.01)
    torch.testing.assert_close(ours.mean(), theirs, rtol=1e-12, atol=1e-12)
    assert math.isfinite(theirs.item())
