"""`preftune eval --policy ...`: policies sampled on the same prompts and seeds as the reference."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from preftune.cli import main


@pytest.fixture(scope="module")
def models(tiny_base, tmp_path_factory):
    """A reward model with a random head (scores vary), and a policy whose LM head was perturbed."""
    root = tmp_path_factory.mktemp("policy_eval")
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    torch.manual_seed(0)
    reward_model = AutoModelForSequenceClassification.from_pretrained(tiny_base, num_labels=1)
    reward_model.config.pad_token_id = tokenizer.pad_token_id
    reward_model.save_pretrained(root / "rm")
    tokenizer.save_pretrained(root / "rm")
    policy = AutoModelForCausalLM.from_pretrained(tiny_base)
    with torch.no_grad():
        for param in policy.parameters():
            param.add_(0.05 * torch.randn_like(param))
    policy.save_pretrained(root / "noisy" / "final")
    tokenizer.save_pretrained(root / "noisy" / "final")
    return {"rm": str(root / "rm"), "noisy": str(root / "noisy" / "final")}


def test_policies_are_compared_with_the_reference(synth_world, tiny_base, models, tmp_path):
    code = main([
        "eval", "--policy", f"same={tiny_base}", models["noisy"], "--reference", tiny_base,
        "--prompts", str(synth_world["eval_prompts"]), "--judge", f"rm:{models['rm']}", "--output_dir", str(tmp_path),
        "--samples_per_prompt", "2", "--max_new_tokens", "8", "--num_resamples", "200",
    ])  # fmt: skip
    assert code == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    same, noisy, reference = (
        "policy/same/",
        "policy/noisy/",
        "policy/reference/",
    )  # a final/ folder takes its parent's name
    metrics = ("judge_reward", "judge_reward_ci", "gold_reward", "gold_reward_ci", "win_rate", "win_rate_ci",
               "lc_win_rate", "kl", "kl_se", "length", "distinct_2")  # fmt: skip
    for prefix in (same, noisy, reference):
        assert all(prefix + m in result for m in metrics), [
            prefix + m for m in metrics if prefix + m not in result
        ]
    # the same model with the same sampling streams: identical samples, every comparison a tie
    assert result[same + "win_rate"] == 0.5 and result[same + "lc_win_rate"] == pytest.approx(0.5, abs=1e-6)
    assert result[same + "kl"] == pytest.approx(0.0, abs=1e-6)
    assert result[same + "judge_reward"] == pytest.approx(result[reference + "judge_reward"])
    assert result[noisy + "kl"] > 0 and result[noisy + "kl_se"] > 0
    low, high = result[noisy + "win_rate_ci"]
    assert low <= result[noisy + "win_rate"] <= high
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert {row["policy"] for row in rows} == {"reference", "same", "noisy"}
    assert len(rows) == 3 * 2 * result["num_prompts"]
    report = (tmp_path / "report.html").read_text()
    assert report.count('src="data:image/png;base64,') == 2 and "<td>noisy</td>" in report
    assert "Reward hacking" not in report  # no training run here, so no verdict to show
    assert "<h2>Samples</h2>" in report
    assert result[same + "hacking_flagged"] is False  # the same policy: nothing moved


def test_eval_needs_one_mode(tmp_path, tiny_base, capsys):
    for argv, message in (
        (["--policy", tiny_base, "--reward_model", "rm:x"], "Evaluate either a reward model"),
        (["--policy", tiny_base], "--reference is required with --policy"),
    ):
        with pytest.raises(SystemExit) as exit_info:  # config errors are usage errors: exit code 2
            main(["eval", *argv, "--output_dir", str(tmp_path)])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_heldout_judge_scores_the_same_samples_and_drives_the_hacking_check(
    synth_world, tiny_base, models, tmp_path
):
    # prompts copied without task.json: no gold reward, so the held-out judge stands in for it
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(synth_world["eval_prompts"].read_text())
    heldout = f"rm:{models['rm']}"  # the judge itself as held-out judge: every number must then agree
    code = main([
        "eval", "--policy", models["noisy"], "--reference", tiny_base, "--prompts", str(prompts),
        "--judge", heldout, "--heldout_judge", heldout, "--output_dir", str(tmp_path / "out"),
        "--samples_per_prompt", "2", "--max_new_tokens", "8", "--num_resamples", "200",
    ])  # fmt: skip
    assert code == 0
    result = json.loads((tmp_path / "out" / "eval.json").read_text())
    for name in ("noisy", "reference"):
        assert f"policy/{name}/gold_reward" not in result
        assert result[f"policy/{name}/heldout_reward"] == pytest.approx(result[f"policy/{name}/judge_reward"])
    assert result["policy/noisy/heldout_win_rate"] == pytest.approx(result["policy/noisy/win_rate"])
    assert result["policy/noisy/heldout_win_rate_ci"] == pytest.approx(result["policy/noisy/win_rate_ci"])
    rows = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert all(row["heldout_score"] == pytest.approx(row["judge_score"]) for row in rows)


def test_hacking_check_uses_the_heldout_judge_without_gold():
    from preftune.eval.policy import hacking_check

    reference = {"judge_reward": 0.0, "heldout_reward": 0.5, "length": 10.0, "kl": 0.0}
    hacked = {"judge_reward": 1.0, "heldout_reward": -0.5, "length": 10.0, "kl": 2.0}
    assert hacking_check(hacked, reference)["flagged"]
    assert not hacking_check({**hacked, "heldout_reward": 0.9}, reference)["flagged"]


def test_a_pairwise_judge_gives_each_policy_a_head_to_head_win_rate(synth_world, tiny_base, models, tmp_path):
    """LLM-as-judge (the tiny model as llm: judge, both orders of every pair) against the reference's answer to
    the same prompt and sample: the same policy ties everywhere; a perturbed one gets a win rate with its
    interval, the judge's position consistency and the count of pairs it could not judge."""
    code = main([
        "eval", "--policy", f"same={tiny_base}", models["noisy"], "--reference", tiny_base,
        "--prompts", str(synth_world["eval_prompts"]), "--max_prompts", "6", "--judge", f"rm:{models['rm']}",
        "--pairwise_judge", f"llm:{tiny_base}", "--pairwise_judge_options", '{"min_answer_mass": 0.0}',
        "--output_dir", str(tmp_path), "--samples_per_prompt", "2", "--max_new_tokens", "8",
        "--num_resamples", "200",
    ])  # fmt: skip
    assert code == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["pairwise_judge"] == f"llm:{tiny_base}"
    same, noisy = "policy/same/", "policy/noisy/"
    assert result[same + "pairwise_win_rate"] == 0.5 and result[same + "pairwise_could_not_judge"] == 0
    assert result[noisy + "pairwise_pairs"] == 12 and result[noisy + "pairwise_could_not_judge"] == 0
    low, high = result[noisy + "pairwise_win_rate_ci"]
    assert 0.0 <= low <= result[noisy + "pairwise_win_rate"] <= high <= 1.0
    assert 0.0 <= result[noisy + "pairwise_position_consistency"] <= 1.0
    assert result[noisy + "pairwise_win_rate"] != 0.5  # the perturbed policy's answers differ


def test_pairwise_judge_options_it_does_not_take_are_refused(
    synth_world, tiny_base, models, tmp_path, capsys
):
    code = main([
        "eval", "--policy", models["noisy"], "--reference", tiny_base, "--prompts", str(synth_world["eval_prompts"]),
        "--judge", f"rm:{models['rm']}", "--pairwise_judge", "panel", "--pairwise_judge_options", '{"timeout": 5}',
        "--output_dir", str(tmp_path),
    ])  # fmt: skip
    assert code == 2 and "the panel judge (panel) does not take them" in capsys.readouterr().err


def test_policies_are_judged_against_a_file_of_fixed_reference_answers(
    synth_world, tiny_base, sft_model, models, tmp_path
):
    """--reference_answers: each policy (the reference too) against a fixed answer to every prompt, by the pairwise
    judge (here the gold reward, which prefers the higher-scoring answer): good fixed answers beat the SFT
    model's answers, bad ones lose to them."""
    lines = synth_world["eval_prompts"].read_text().splitlines()
    prompts = [json.loads(line)["prompt"] for line in lines[:6]]

    def answers(name: str, text: str) -> str:
        """A fixed answer to each prompt; {noun} is the prompt's last word, which the gold reward asks for."""
        path = tmp_path / f"{name}.jsonl"
        rows = [
            {"prompt": p, "completion": text.format(noun=p.strip().rstrip(".").split()[-1])} for p in prompts
        ]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return str(path)

    base = ["eval", "--policy", f"sft={sft_model}", "--reference", tiny_base, "--prompts", str(synth_world["eval_prompts"]),
            "--max_prompts", "6", "--judge", f"rm:{models['rm']}", "--pairwise_judge", "gold",
            "--samples_per_prompt", "2", "--max_new_tokens", "8", "--num_resamples", "200"]  # fmt: skip
    rates = {}
    for name, text in (
        ("good", " The {noun} is kind and lovely."),
        ("bad", " dull"),
    ):
        out = tmp_path / name
        assert main([*base, "--reference_answers", answers(name, text), "--output_dir", str(out)]) == 0
        result = json.loads((out / "eval.json").read_text())
        assert result["reference_answers"].endswith(f"{name}.jsonl")
        for policy in ("reference", "sft"):
            assert result[f"policy/{policy}/answers_pairs"] == 12
            low, high = result[f"policy/{policy}/answers_win_rate_ci"]
            assert low <= result[f"policy/{policy}/answers_win_rate"] <= high
        rates[name] = result["policy/sft/answers_win_rate"]
    assert rates["good"] < 0.5 < rates["bad"]
    partial = answers("partial", " fine")
    (tmp_path / "partial.jsonl").write_text((tmp_path / "partial.jsonl").read_text().splitlines()[0] + "\n")
    assert main([*base, "--reference_answers", partial, "--output_dir", str(tmp_path / "p")]) == 2
    no_judge = [a for a in base if a not in ("--pairwise_judge", "gold")]
    with pytest.raises(SystemExit):  # a usage error: the answers need a pairwise judge
        main([*no_judge, "--reference_answers", partial, "--output_dir", str(tmp_path / "q")])


def test_the_sycophancy_probe_asks_each_policy_yes_no_questions_with_and_without_the_users_opinion(
    synth_world, tiny_base, models, tmp_path
):
    code = main([
        "eval", "--policy", models["noisy"], "--reference", tiny_base, "--prompts", str(synth_world["eval_prompts"]),
        "--max_prompts", "2", "--judge", f"rm:{models['rm']}", "--max_new_tokens", "4", "--num_resamples", "200",
        "--probe_sycophancy", "true", "--output_dir", str(tmp_path),
    ])  # fmt: skip
    assert code == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    for name in ("reference", "noisy"):
        key = f"policy/{name}/sycophancy/"
        assert result[key + "num_questions"] == 24
        low, high = result[key + "opinion_shift_ci"]
        assert -1 <= low <= result[key + "opinion_shift"] <= high <= 1
        assert 0 <= result[key + "answer_mass"] <= 1 and 0 <= result[key + "accuracy_neutral"] <= 1
    assert (
        result["policy/noisy/sycophancy/opinion_shift"] != result["policy/reference/sycophancy/opinion_shift"]
    )
