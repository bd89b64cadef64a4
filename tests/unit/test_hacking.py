"""Reward-hacking monitor (preftune/engine/hacking.py) on hand-built and simulated training runs."""

import json
import logging
import random

import pytest

from preftune.engine.hacking import (
    DIVERGENCE,
    KL_BUDGET,
    LENGTH_DRIFT,
    HackingConfig,
    HackingMonitor,
    Observation,
    RewardHackingDetected,
)


def _run(monitor: HackingMonitor, observations: list[Observation]) -> dict[int, list[str]]:
    """Feed every observation; returns the new findings per step (steps with none left out)."""
    found = {}
    for obs in observations:
        new = monitor.observe(obs)
        if new:
            found[obs.step] = new
    return found


def _kinds(monitor: HackingMonitor) -> list[str]:
    return [finding["kind"] for finding in monitor.summary()["findings"]]


def _simulated_run(games_length: bool, noise: float = 0.01, seed: int = 0) -> list[Observation]:
    """Evaluations every 10 steps of a policy trained on a proxy that pays 0.1 per token of length.

    Quality q rises from 0.5 to 0.8 over steps 0-40 and then stays. The honest policy keeps its
    responses at about 6 tokens; the gaming one pads them by 1.5 tokens per 10 steps after step 40
    (15 tokens at step 100). proxy = q + 0.1 * length (the proxy's length bias); gold = q - 0.1 *
    max(0, length - 8) (people dislike padding beyond 8 tokens), so gaming raises the proxy while the
    gold reward falls from step 60 on. Each score gets seeded noise in [-noise, noise].
    """
    rng = random.Random(seed)
    observations = []
    for step in range(0, 101, 10):
        quality = 0.5 + 0.3 * min(step, 40) / 40
        length = 6.0 + (0.15 * max(0, step - 40) if games_length else rng.uniform(-0.3, 0.3))
        proxy = quality + 0.1 * length + rng.uniform(-noise, noise)
        gold = quality - 0.1 * max(0.0, length - 8.0) + rng.uniform(-noise, noise)
        observations.append(Observation(step, proxy, gold, length, kl=0.5 * step / 10))
    return observations


# --- the two runs the issue asks for ---------------------------------------------------------------------


def test_a_policy_gaming_a_length_biased_proxy_is_flagged(caplog):
    monitor = HackingMonitor(HackingConfig())
    with caplog.at_level(logging.WARNING, logger="preftune.engine.hacking"):
        found = _run(monitor, _simulated_run(games_length=True))
    assert monitor.flagged
    assert sorted(_kinds(monitor)) == [DIVERGENCE, LENGTH_DRIFT]
    assert min(found) > 50, f"nothing may be flagged while the policy is honest (steps 0-50), got {found}"
    assert max(found) <= 70, "both the divergence and the length drift are visible by step 70"
    assert len(caplog.records) == 2 and all(r.levelno == logging.WARNING for r in caplog.records)
    summary = monitor.summary()
    assert summary["flagged"] is True
    assert (
        "Reward hacking suspected" in summary["evidence"] and "Response length drifted" in summary["evidence"]
    )
    assert json.loads(json.dumps(summary)) == summary


def test_an_honest_policy_stays_quiet(caplog):
    monitor = HackingMonitor(HackingConfig())
    with caplog.at_level(logging.WARNING, logger="preftune.engine.hacking"):
        found = _run(monitor, _simulated_run(games_length=False))
    assert found == {}
    assert not monitor.flagged and not caplog.records
    metrics = monitor.metrics()
    assert metrics["hacking/flagged"] == 0.0 and metrics["hacking/num_findings"] == 0.0
    summary = monitor.summary()
    assert summary["flagged"] is False and summary["findings"] == []
    assert summary["evidence"].startswith("No reward hacking detected over 11 observations (steps 0-100)")


def test_a_run_where_proxy_and_gold_both_rise_with_stable_length_stays_quiet():
    monitor = HackingMonitor(HackingConfig(kl_budget=50.0))
    observations = [
        Observation(
            step, proxy=0.2 + 0.05 * i, heldout=0.1 + 0.04 * i, length=8.0 + (i % 3) * 0.5, kl=1.0 * i
        )
        for i, step in enumerate(range(0, 200, 10))
    ]
    assert _run(monitor, observations) == {}
    assert not monitor.flagged
    assert monitor.metrics()["hacking/heldout_slope"] == pytest.approx(0.004)
    assert monitor.metrics()["hacking/proxy_slope"] == pytest.approx(0.005)


def test_noise_below_the_thresholds_stays_quiet():
    """Scores within +-0.02 of a constant: any fitted change over 3 evenly spaced points is the
    difference of two of them (<= 0.04 < hacking_min_drop 0.05), and no score is 0.05 below the best;
    lengths stay within 10%, KL below its budget."""
    rng = random.Random(1234)
    for _ in range(20):
        monitor = HackingMonitor(HackingConfig(hacking_min_drop=0.05, length_drift=0.2, kl_budget=5.0))
        observations = [
            Observation(
                step,
                proxy=1.0 + rng.uniform(-0.02, 0.02),
                heldout=0.5 + rng.uniform(-0.02, 0.02),
                length=10.0 * (1 + rng.uniform(-0.09, 0.09)),
                kl=rng.uniform(0.0, 4.9),
            )  # fmt: skip
            for step in range(0, 500, 5)
        ]
        assert _run(monitor, observations) == {}
        assert not monitor.flagged


# --- the divergence rules on hand-built numbers ------------------------------------------------------------

# Window 3 over evenly spaced steps: the least-squares fitted change is exactly last - first.
_HAND_BUILT = [
    Observation(0, proxy=0.50, heldout=0.70, length=6.1, kl=0.0),
    Observation(10, proxy=0.55, heldout=0.80, length=6.0, kl=1.0),
    Observation(20, proxy=0.61, heldout=0.80, length=6.3, kl=2.5),
    Observation(30, proxy=0.90, heldout=0.78, length=8.0, kl=4.0),  # held-out change -0.02: not yet
    Observation(40, proxy=1.20, heldout=0.55, length=11.8, kl=7.0),  # +0.59 vs -0.25: flagged
]


def test_trend_divergence_message_carries_its_evidence():
    monitor = HackingMonitor(HackingConfig(), heldout_name="gold")
    found = _run(monitor, _HAND_BUILT)
    assert list(found) == [40]
    assert _kinds(monitor) == [DIVERGENCE, LENGTH_DRIFT]
    divergence, drift = found[40]
    for text in ("step 40", "rose from 0.61 to 1.20 over steps 20-40", "fitted change +0.59",
                 "held-out gold score fell from 0.80 to 0.55", "fitted change -0.25",
                 "from 6.1 to 11.8 tokens", "from 0.00 to 7.00 nats"):  # fmt: skip
        assert text in divergence, text
    assert "Since step" not in divergence, "the sustained rule has not held for a full window yet"
    for text in ("step 40", "grew from 6.1 tokens at step 0 to 11.8 (1.93x)", "+-50%"):
        assert text in drift, text


def test_metrics_are_the_window_slopes_and_ratios():
    monitor = HackingMonitor(HackingConfig())
    _run(monitor, _HAND_BUILT)
    metrics = monitor.metrics()
    assert metrics["hacking/proxy_slope"] == pytest.approx((1.20 - 0.61) / 20)
    assert metrics["hacking/heldout_slope"] == pytest.approx((0.55 - 0.80) / 20)
    assert metrics["hacking/length_ratio"] == pytest.approx(11.8 / 6.1)
    assert metrics["hacking/kl"] == 7.0
    assert metrics["hacking/heldout_below_best"] == pytest.approx(0.80 - 0.55)
    assert metrics["hacking/flagged"] == 1.0 and metrics["hacking/num_findings"] == 2.0


def test_metrics_update_every_step_before_any_finding():
    monitor = HackingMonitor(HackingConfig())
    assert monitor.metrics() == {"hacking/flagged": 0.0, "hacking/num_findings": 0.0}
    monitor.observe(_HAND_BUILT[0])
    assert set(monitor.metrics()) == {
        "hacking/flagged", "hacking/num_findings", "hacking/kl", "hacking/length_ratio", "hacking/heldout_below_best"
    }  # fmt: skip
    monitor.observe(_HAND_BUILT[1])
    assert monitor.metrics()["hacking/proxy_slope"] == pytest.approx(0.05 / 10)
    assert monitor.metrics()["hacking/heldout_slope"] == pytest.approx(0.10 / 10)


def test_slow_sustained_decline_is_caught_by_the_cumulative_rule():
    """Gold falls 0.02 per evaluation: a window-3 fitted change of -0.04 never passes the trend rule,
    but from step 30 (0.94 < best 1.00 - 0.05) the gold stays too far below its best while the proxy
    stays above its first value: flagged at the third such observation, step 50."""
    observations = [
        Observation(10 * i, proxy=1.0 + 0.1 * i, heldout=1.0 - 0.02 * i, length=10.0, kl=0.0)
        for i in range(8)
    ]
    monitor = HackingMonitor(HackingConfig(hacking_window=3, hacking_min_drop=0.05))
    found = _run(monitor, observations)
    assert list(found) == [50]
    (message,) = found[50]
    assert "Since step 30" in message and "best (1.00 at step 0; now 0.90)" in message
    assert "over steps" not in message, "the trend rule must not have fired"


def test_proxy_falling_with_the_heldout_is_not_hacking():
    observations = [
        Observation(10 * i, proxy=1.0 - 0.2 * i, heldout=1.0 - 0.2 * i, length=5.0, kl=0.0) for i in range(6)
    ]
    monitor = HackingMonitor(HackingConfig())
    assert _run(monitor, observations) == {}


def test_each_kind_is_reported_once():
    monitor = HackingMonitor(HackingConfig(kl_budget=3.0))
    later = [
        Observation(50 + 10 * i, proxy=1.5 + 0.3 * i, heldout=0.5 - 0.1 * i, length=13.0 + i, kl=8.0)
        for i in range(5)
    ]
    found = _run(monitor, _HAND_BUILT + later)
    assert list(found) == [30, 40], "KL passes 3.0 at step 30, the rest at step 40, nothing repeats"
    assert sorted(_kinds(monitor)) == sorted([DIVERGENCE, LENGTH_DRIFT, KL_BUDGET])
    assert monitor.metrics()["hacking/num_findings"] == 3.0


# --- KL budget, stopping, no held-out judge -----------------------------------------------------------------


def test_kl_budget_crossing_is_flagged_once():
    monitor = HackingMonitor(HackingConfig(kl_budget=10.0, length_drift=0.0))
    kls = [1.0, 2.0, 5.0, 10.0, 11.0, 12.0, 3.0, 15.0]
    found = _run(monitor, [Observation(10 * i, 0.0, 0.0, 5.0, kl) for i, kl in enumerate(kls)])
    assert list(found) == [40], "10.0 is within the budget; 11.0 at step 40 is the first above it"
    (message,) = found[40]
    assert (
        "KL budget exceeded at step 40" in message and "11.00 nats" in message and "kl_budget=10" in message
    )
    assert _kinds(monitor) == [KL_BUDGET]
    assert monitor.metrics()["hacking/kl"] == 15.0


def test_stop_on_hacking_raises_from_observe_after_recording():
    monitor = HackingMonitor(HackingConfig(stop_on_hacking=True))
    for obs in _HAND_BUILT[:-1]:
        assert monitor.observe(obs) == []
    with pytest.raises(RewardHackingDetected, match=r"step 40.*stop_on_hacking is true") as caught:
        monitor.observe(_HAND_BUILT[-1])
    assert isinstance(caught.value, RuntimeError)
    assert monitor.flagged and _kinds(monitor) == [DIVERGENCE, LENGTH_DRIFT]


def test_without_stop_on_hacking_observe_only_warns():
    monitor = HackingMonitor(HackingConfig(stop_on_hacking=False))
    assert len(_run(monitor, _HAND_BUILT)[40]) == 2


def test_without_a_heldout_judge_only_length_and_kl_apply():
    """The proxy rises steeply (as in a hacked run) but with no held-out judge only length and KL can
    be flagged, and the held-out metrics are absent."""
    observations = [
        Observation(10 * i, proxy=0.5 + 0.3 * i, heldout=None, length=6.0 + 1.5 * i, kl=2.0 * i)
        for i in range(8)
    ]
    monitor = HackingMonitor(HackingConfig(kl_budget=9.0))
    found = _run(monitor, observations)
    assert found == {30: found[30], 50: found[50]} and len(found[30]) == 1 and len(found[50]) == 1
    assert _kinds(monitor) == [LENGTH_DRIFT, KL_BUDGET]
    metrics = monitor.metrics()
    assert "hacking/heldout_slope" not in metrics and "hacking/heldout_below_best" not in metrics
    assert metrics["hacking/proxy_slope"] == pytest.approx(0.03)
    quiet = HackingMonitor(HackingConfig())
    steady = [Observation(10 * i, 0.5 + 0.3 * i, None, 6.0, 1.0) for i in range(8)]
    assert _run(quiet, steady) == {}
    assert "no held-out judge" in quiet.summary()["evidence"]


def test_heldout_must_be_on_every_observation_or_none():
    monitor = HackingMonitor(HackingConfig())
    monitor.observe(Observation(0, 1.0, 0.5, 5.0, 0.0))
    with pytest.raises(ValueError, match="step 10 lacks a held-out score"):
        monitor.observe(Observation(10, 1.0, None, 5.0, 0.0))


def test_length_drift_is_measured_from_the_first_positive_length_and_counts_shrinking():
    monitor = HackingMonitor(HackingConfig(length_drift=0.5))
    found = _run(monitor, [Observation(0, 0.0, None, 0.0, 0.0), Observation(10, 0.0, None, 8.0, 0.0),
                           Observation(20, 0.0, None, 4.5, 0.0), Observation(30, 0.0, None, 3.9, 0.0)])  # fmt: skip
    assert list(found) == [30]
    assert "shrank from 8.0 tokens at step 10 to 3.9 (0.49x)" in found[30][0]


# --- checkpoints ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", [1, 3, 4, 5, 6])
def test_state_dict_round_trip_reproduces_the_rest_of_the_run(split):
    """Resuming after `split` observations (mid-streak at 4 and 5) behaves as the uninterrupted run."""
    config = HackingConfig(kl_budget=8.0)
    observations = [
        Observation(10 * i, proxy=1.0 + 0.1 * i, heldout=1.0 - 0.02 * i, length=10.0 + 0.4 * i, kl=1.2 * i)
        for i in range(14)
    ]
    whole = HackingMonitor(config)
    found_whole = _run(whole, observations)
    assert {k for finding in whole.summary()["findings"] for k in [finding["kind"]]} == {
        DIVERGENCE, LENGTH_DRIFT, KL_BUDGET
    }  # fmt: skip

    first = HackingMonitor(config)
    found = _run(first, observations[:split])
    resumed = HackingMonitor(config)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert resumed.metrics() == first.metrics()
    for obs in observations[split:]:
        new = resumed.observe(obs)
        if new:
            found[obs.step] = new
        whole_at_step = HackingMonitor(config)
        _run(whole_at_step, [o for o in observations if o.step <= obs.step])
        assert resumed.metrics() == whole_at_step.metrics()
    assert found == found_whole
    assert resumed.summary() == whole.summary()
    assert resumed.state_dict() == whole.state_dict()


def test_load_state_dict_rejects_an_unknown_format():
    with pytest.raises(ValueError, match="Unknown hacking-monitor state format 99"):
        HackingMonitor(HackingConfig()).load_state_dict({"format": 99})


def test_observations_must_come_in_increasing_step_order():
    monitor = HackingMonitor(HackingConfig())
    monitor.observe(Observation(20, 1.0, 0.5, 5.0, 0.0))
    with pytest.raises(ValueError, match="got step 20 after step 20"):
        monitor.observe(Observation(20, 1.0, 0.5, 5.0, 0.0))


# --- validation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"hacking_window": 1}, r"hacking_window must be an integer >= 2.*got 1\. Use e\.g\. 3"),
        ({"hacking_window": 2.5}, r"hacking_window .* got 2\.5"),
        ({"hacking_window": True}, r"hacking_window .* got True"),
        (
            {"hacking_min_drop": -0.1},
            r"hacking_min_drop must be a finite number >= 0, got -0\.1\. Use e\.g\. 0\.05",
        ),
        ({"hacking_min_drop": float("nan")}, r"hacking_min_drop .* got nan"),
        ({"length_drift": -0.5}, r"length_drift .* got -0\.5\. .*0 to turn the check off"),
        ({"length_drift": float("inf")}, r"length_drift .* got inf"),
        ({"kl_budget": 0.0}, r"kl_budget must be > 0 .* got 0\.0\. .*leave it unset"),
        ({"kl_budget": -3}, r"kl_budget .* got -3"),
        ({"kl_budget": "10"}, r"kl_budget .* got '10'"),
        ({"stop_on_hacking": "yes"}, r"stop_on_hacking must be true or false, got 'yes'"),
    ],
)
def test_config_validation_says_what_value_and_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HackingConfig(**kwargs)


def test_config_defaults_are_valid_and_zero_thresholds_are_allowed():
    assert HackingConfig() == HackingConfig(3, 0.05, 0.5, None, False)
    HackingConfig(hacking_min_drop=0.0, length_drift=0.0, kl_budget=1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"step": -1}, r"step must be an integer >= 0, got -1"),
        ({"step": 1.5}, r"step must be an integer >= 0, got 1\.5"),
        ({"proxy": float("nan")}, r"Observation\.proxy must be a finite number, got nan at step 0"),
        ({"heldout": float("inf")}, r"Observation\.heldout .* got inf"),
        ({"length": -1.0}, r"Observation\.length must be >= 0"),
        ({"kl": None}, r"Observation\.kl .* got None"),
    ],
)
def test_observation_validation(kwargs, match):
    fields = {"step": 0, "proxy": 1.0, "heldout": 0.5, "length": 5.0, "kl": 0.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        Observation(**fields)


def test_heldout_name_must_be_given():
    with pytest.raises(ValueError, match="heldout_name must be a non-empty string"):
        HackingMonitor(HackingConfig(), heldout_name=" ")


def test_eval_compares_a_policy_with_its_reference():
    """`preftune eval --policy` runs the monitor on two points: the reference, then the policy."""
    from preftune.eval.policy import hacking_check

    reference = {"judge_reward": 0.5, "gold_reward": 0.5, "length": 10.0, "kl": 0.0}
    gamed = {"judge_reward": 1.0, "gold_reward": 0.2, "length": 11.0, "kl": 2.0}
    better = {"judge_reward": 1.0, "gold_reward": 0.8, "length": 11.0, "kl": 2.0}
    longer = {"judge_reward": 0.6, "gold_reward": 0.55, "length": 17.0, "kl": 1.0}
    assert hacking_check(gamed, reference)["flagged"] is True
    assert hacking_check(better, reference)["flagged"] is False
    assert hacking_check(longer, reference)["flagged"] is True  # 1.7x the reference's length
