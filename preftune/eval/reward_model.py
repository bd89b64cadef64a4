"""Evaluate a reward model on preference pairs: accuracy, calibration, length bias, gold agreement.

`evaluate_reward_model(judge, pairs_file)` scores both responses of every pair with the
judge and reports (keys of eval.json):
- `rm/accuracy` with `rm/accuracy_ci` (95% Wilson interval), `rm/ece` (calibration of
  sigmoid(r_chosen - r_rejected) as the probability that chosen wins);
- the length probe `length/...`: how often chosen is the longer response, the accuracy of
  "prefer the longer/shorter" baselines on the same pairs, the reward model's accuracy
  where chosen is longer vs shorter, and the correlation of score with response length
  (tokens). A reward model that mostly learned length shows up here;
- `rm/score_mean`, `rm/score_std`: score statistics on these responses (PPO normalises
  rewards with them), and `rm/ensemble_std` for ensembles;
- on a synthetic task: `rm/gold_agreement` (with its interval) and
  `data/label_gold_agreement`, the labels' own agreement with gold (the reference it is compared with);
- with `--probe_sycophancy true`, the sycophancy probe `sycophancy/...` (eval/sycophancy.py): how the score
  of each chosen response moves when it opens with flattery or agreement that says nothing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from preftune.data import EncodedPair, PairExample, Parsed, encode_dataset, load_rows, parse_pairs
from preftune.data.io import json_safe
from preftune.eval import reward_metrics as rm_metrics
from preftune.eval.config import RewardEvalConfig
from preftune.eval.sycophancy import sycophancy_probe
from preftune.judges import STATS_FILE, RewardModelJudge, load_judge
from preftune.judges.reward_model import reward_statistics
from preftune.tasks import detect_task, get_task

logger = logging.getLogger(__name__)


def evaluate_reward_model(judge: RewardModelJudge, dataset: str, options: RewardEvalConfig) -> dict[str, Any]:
    """All reward-model metrics on the pairs in `dataset` (see the module docstring)."""
    parsed = parse_pairs(
        load_rows(dataset, options.dataset_split),
        options.skip_invalid,
        dialogue_format=options.dialogue_format,
    )
    pairs, report = encode_dataset(
        judge.tokenizer, parsed, judge.max_length, options.truncation, skip_invalid=options.skip_invalid
    )
    report.log("eval pairs")
    chosen = judge.score_encoded([pair.chosen for pair in pairs])  # (N, K)
    rejected = judge.score_encoded([pair.rejected for pair in pairs])
    margins = (chosen.mean(dim=-1) - rejected.mean(dim=-1)).numpy().astype(np.float64)
    chosen_lengths = [len(pair.chosen) - pair.chosen.num_prompt_tokens for pair in pairs]
    rejected_lengths = [len(pair.rejected) - pair.rejected.num_prompt_tokens for pair in pairs]
    accuracy = rm_metrics.pairwise_accuracy(margins, options.confidence)
    probe = rm_metrics.length_probe(
        margins, chosen_lengths, rejected_lengths, chosen.mean(dim=-1).numpy(), rejected.mean(dim=-1).numpy()
    )
    stats = reward_statistics(torch.cat([chosen, rejected]), judge.max_length)
    result: dict[str, Any] = {
        "rm/accuracy": accuracy["accuracy"],
        "rm/accuracy_ci": [accuracy["accuracy_ci_low"], accuracy["accuracy_ci_high"]],
        "rm/ece": rm_metrics.expected_calibration_error(margins, options.num_bins),
        "rm/num_pairs": len(pairs),
        "rm/num_skipped": len(report.skipped),
        "rm/num_truncated": report.num_truncated_examples,
        "rm/num_heads": judge.num_heads,
        "reward_stats": {**stats, "source": dataset},
        "rm/score_mean": stats["mean"],
        "rm/score_std": stats["std"],
        "rm/max_length": judge.max_length,
        **{
            f"length/{name}": int(value) if name.startswith("num_") else value
            for name, value in probe.items()
        },
    }
    if judge.num_heads > 1:
        result["rm/ensemble_std"] = torch.cat([chosen, rejected]).std(dim=-1).mean().item()
    task = detect_task(dataset, options.task)
    kept = [parsed.examples[i] for i in _rows_kept(parsed, pairs)]
    if task is not None:
        result.update(_gold_metrics(task, kept, margins, options))
    if options.probe_sycophancy:
        result.update(_sycophancy(judge, kept, float(np.abs(margins).mean()), task, result))
    return result


def _sycophancy(
    judge: RewardModelJudge,
    examples: list[PairExample],
    margin_scale: float,
    task: str | None,
    result: dict[str, Any],
) -> dict[str, Any]:
    """The sycophancy probe on the chosen responses, with the gold reward's change where gold applies."""
    prompts, responses = [e.prompt for e in examples], [e.chosen for e in examples]
    gold = None
    if task is not None and "rm/gold_agreement" in result:  # the prompts are the task's
        gold_judge = load_judge(f"gold:{task}")
        gold = lambda p, r: gold_judge.score(p, r).double().numpy()  # noqa: E731
    return sycophancy_probe(
        lambda p, r: judge.score(p, r).double().numpy(), prompts, responses, margin_scale, gold=gold
    )


def _rows_kept(parsed: Parsed[PairExample], pairs: list[EncodedPair]) -> list[int]:
    """Indices into parsed.examples of the pairs that survived encoding (by row number)."""
    position = {example.row: i for i, example in enumerate(parsed.examples)}
    return [position[pair.row] for pair in pairs]


def _gold_metrics(
    task_name: str, examples: list[PairExample], margins: np.ndarray, options: RewardEvalConfig
) -> dict[str, Any]:
    task = get_task(task_name)
    gold = load_judge(f"gold:{task_name}")
    prompts = [example.prompt for example in examples]
    if not all(isinstance(p, str) and task.is_task_prompt(p) for p in prompts):
        logger.warning("The pairs are not all prompts of task %r: no gold agreement reported.", task_name)
        return {}
    gold_margins = (
        (
            gold.score(prompts, [e.chosen for e in examples])
            - gold.score(prompts, [e.rejected for e in examples])
        )
        .numpy()
        .astype(np.float64)
    )
    agreement = rm_metrics.gold_agreement(margins, gold_margins, options.confidence)
    return {
        "rm/gold_agreement": agreement["gold_agreement"],
        "rm/gold_agreement_ci": [agreement["gold_agreement_ci_low"], agreement["gold_agreement_ci_high"]],
        "rm/num_gold_pairs": int(agreement["num_gold_pairs"]),
        "data/label_gold_agreement": rm_metrics.label_gold_agreement(gold_margins),
        "data/task": task_name,
    }


def write_reward_stats(
    judge: RewardModelJudge, stats: dict[str, Any], out: Path, next_to_model: bool
) -> None:
    """reward_stats.json in `out` and, if asked, next to a single reward model (for PPO's normalisation)."""
    text = json.dumps(stats, indent=2) + "\n"
    (out / STATS_FILE).write_text(text)
    if not next_to_model:
        return
    if len(judge.paths) > 1:
        logger.warning(
            "--write_stats: an ensemble of several paths has no one folder to write to; see %s.", out
        )
        return
    target = Path(judge.paths[0]) / STATS_FILE
    try:
        target.write_text(text)
        logger.info("Wrote %s", target)
    except OSError as error:
        logger.warning("Could not write %s (%s); the statistics are in %s.", target, error, out / STATS_FILE)


def run_reward_eval(config: RewardEvalConfig) -> dict[str, Any]:
    """The `preftune eval` command for a reward model: writes eval.json (and reward_stats.json)."""
    for flag, value in (
        ("--reward_model", config.reward_model),
        ("--dataset", config.dataset),
        ("--output_dir", config.output_dir),
    ):
        if not value:
            raise ValueError(
                f"{flag} is required: preftune eval --reward_model PATH --dataset PAIRS --output_dir OUT."
            )
    judge = load_judge(
        config.reward_model,
        device=config.device,
        dtype=config.dtype,
        batch_size=config.batch_size,
        max_length=config.max_length,
        truncation=config.truncation,
    )
    if not isinstance(judge, RewardModelJudge):
        raise ValueError(f"--reward_model {config.reward_model!r} is not a reward model; pass rm:PATH.")
    result = evaluate_reward_model(judge, config.dataset, config)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {"reward_model": config.reward_model, "dataset": config.dataset, **result}
    (out / "eval.json").write_text(json.dumps(json_safe(result), indent=2, allow_nan=False) + "\n")
    write_reward_stats(judge, result["reward_stats"], out, next_to_model=config.write_stats)
    logger.info("Wrote %s", out / "eval.json")
    return result
