"""`preftune bon`: best-of-n / rejection sampling with any judge.

For every prompt of --dataset, sample --n responses from --model, score them with --judge
(and with the synthetic task's gold reward when one applies), and write into --output_dir:

- `samples.jsonl`: every sample: prompt, response, judge_score, gold_score (with a task),
  sample (0..n-1) and row (the prompt's row in --dataset);
- `best.jsonl`: the best response per prompt as prompt, completion, score (+ gold_score):
  SFT data for `preftune sft`, i.e. rejection-sampling fine-tuning (Llama 2, arXiv
  2307.09288, section 3.2.3);
- `pairs.jsonl`: best vs worst response as prompt, chosen, rejected, chosen_score,
  rejected_score: preference data for `preftune dpo` / `preftune rm`. A prompt whose samples
  all score the same has no pair; such prompts are counted (`pairs_skipped_ties`) and logged;
- `bon.json`: the best-of-n curve for n = 1, 2, 4, ... and N: the expected judge reward
  (and gold reward) of best-of-n, the analytical KL bound log n - (n-1)/n and the measured
  KL, estimated from the N samples per prompt (see preftune/ops/best_of_n.py); also
  best_judge_reward and best_gold_reward (of best.jsonl: the max of the N samples, at least the
  curve's value at n = N, whose draws are with replacement), pairs_written, pairs_skipped_ties
  and distinct_response_fraction (distinct responses per prompt / N);
- `config.yaml`: the resolved config.

    preftune bon --model runs/sft/final --dataset data/kindness/eval_prompts.jsonl \\
        --judge gold --n 16 --output_dir runs/bon-kindness

    from preftune.data import DataConfig
    from preftune.models.loading import ModelConfig
    from preftune.rollout.best_of_n import BoNConfig, run_best_of_n
    result = run_best_of_n(BoNConfig(model=ModelConfig(model="runs/sft/final"),
                                     data=DataConfig(dataset="data/kindness/eval_prompts.jsonl"),
                                     judge="rm:runs/rm/final", output_dir="runs/bon"))
    result["curve"][-1]  # {"n": 16, "judge_reward": ..., "kl_bound": 1.835, "kl_measured": ...}

Identical responses to a prompt are scored once, so copies always tie. The best (and worst)
sample of a prompt is the first one with the highest (lowest) score.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from peft import PeftModel
from torch import Tensor
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from preftune.config import save_config
from preftune.data import Completion, Prompt
from preftune.data.io import write_jsonl
from preftune.data.prompts import PromptSet, load_prompts
from preftune.judges import GoldJudge, Judge, check_judge_spec, load_judge
from preftune.models.loading import check_model_path, load_policy, load_tokenizer
from preftune.ops.best_of_n import best_of_n_kl, best_of_n_probabilities, expected_best_of_n, kl_bound
from preftune.rollout.config import BoNConfig
from preftune.rollout.experience import response_completions
from preftune.rollout.generate import sample_responses
from preftune.tasks import detect_task, get_task

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Estimates from the scored samples


def curve_sizes(num_samples: int) -> list[int]:
    """n = 1, 2, 4, ... below num_samples, then num_samples itself: [1, 2, 4, 8, 12] for 12."""
    sizes = [2**k for k in range(num_samples.bit_length()) if 2**k < num_samples]
    return [*sizes, num_samples]


def bon_curve(scores: Tensor, response_ids: Tensor, gold: Tensor | None = None) -> list[dict[str, float]]:
    """Best-of-n estimates for each n of `curve_sizes(N)`, averaged over prompts.

    scores: (P, N) judge scores; response_ids: (P, N) distinct-response ids within each prompt
    (see `best_of_n_kl`); gold: (P, N) gold rewards of the same samples, or None.
    Each point: n, judge_reward, gold_reward (with gold), kl_bound, kl_measured.
    """
    curve = []
    for n in curve_sizes(scores.shape[1]):
        probabilities = best_of_n_probabilities(scores, n)  # (P, N)
        point = {"n": n, "judge_reward": expected_best_of_n(scores, probabilities).mean().item()}
        if gold is not None:
            point["gold_reward"] = expected_best_of_n(gold, probabilities).mean().item()
        point["kl_bound"] = kl_bound(n)
        point["kl_measured"] = best_of_n_kl(probabilities, response_ids).mean().item()
        curve.append(point)
    return curve


def distinct_response_ids(texts: list[str], num_samples: int) -> Tensor:
    """(P, N) id of each sample's response within its prompt: the index of its first copy.

    `texts` holds P * N responses, the N samples of each prompt consecutive.
    """
    ids = []
    for start in range(0, len(texts), num_samples):
        first: dict[str, int] = {}
        ids.append([first.setdefault(text, k) for k, text in enumerate(texts[start : start + num_samples])])
    return torch.tensor(ids, dtype=torch.long)


# ---------------------------------------------------------------------------------------------
# The command


def _load_prompts(config: BoNConfig, tokenizer: PreTrainedTokenizerBase) -> PromptSet:
    """The validated prompts (first --max_prompts) and their token ids, cut to leave room to generate."""
    data = config.data
    prompts = load_prompts(
        tokenizer, data.dataset, data.dataset_split, data.max_length - config.max_new_tokens, data, "bon"
    )
    if not config.max_prompts:
        return prompts
    keep = config.max_prompts
    return PromptSet(prompts.prompts[:keep], prompts.ids[:keep], prompts.rows[:keep])


def _gold_task(config: BoNConfig, prompts: list[Prompt]) -> str | None:
    """The task whose gold reward is reported, or None (with a warning if 'auto' found one that does not fit)."""
    task = detect_task(config.data.dataset, config.task)
    if task is None:
        return None
    if all(isinstance(p, str) and get_task(task).is_task_prompt(p) for p in prompts):
        return task
    if config.task != "auto":
        raise ValueError(
            f"--task {task}: not every prompt of {config.data.dataset} is a prompt of that task, so its gold "
            "reward does not apply. Pass --task none (or auto)."
        )
    logger.warning("task.json names %r, but not every prompt is one of its prompts: no gold reward.", task)
    return None


def _sample(
    policy: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[list[int]],
    config: BoNConfig,
) -> list[list[int]]:
    """config.n response ids per prompt, the samples of each prompt consecutive (P * N lists)."""
    repeated = [ids for ids in prompt_ids for _ in range(config.n)]
    sampling, size = config.sampling_config(), config.generation_batch_size
    responses: list[list[int]] = []
    starts = range(0, len(repeated), size)
    for index, start in enumerate(tqdm(starts, desc="sampling", unit="batch", disable=config.disable_tqdm)):
        # An independent random stream per batch (one seed for all would repeat a stream in every batch).
        batch_seed = int(np.random.SeedSequence([config.seed, index]).generate_state(1)[0])
        responses += sample_responses(policy, tokenizer, repeated[start : start + size], sampling, batch_seed)
    return responses


def _score(
    judge: Judge, prompts: list[Prompt], completions: list[Completion], config: BoNConfig, name: str
) -> Tensor:
    """(M,) float64 scores; each distinct (prompt, response) is scored once, so copies tie exactly."""
    position: dict[str, int] = {}  # (prompt, response) as JSON -> index into `distinct`
    distinct: list[int] = []  # index of the first copy of each distinct (prompt, response)
    keys = [json.dumps([p, c]) for p, c in zip(prompts, completions, strict=True)]
    for i, key in enumerate(keys):
        if key not in position:
            position[key] = len(distinct)
            distinct.append(i)
    chunk = config.judge_batch_size * 8
    parts = []
    for start in tqdm(range(0, len(distinct), chunk), desc=f"scoring ({name})", disable=config.disable_tqdm):
        items = distinct[start : start + chunk]
        part = judge.score([prompts[i] for i in items], [completions[i] for i in items])
        parts.append(torch.as_tensor(part, dtype=torch.float64).reshape(-1))
    scores = torch.cat(parts)  # (number of distinct items,)
    num_bad = int((~torch.isfinite(scores)).sum())
    if num_bad:
        raise ValueError(
            f"The judge {name!r} returned {num_bad} non-finite scores (NaN or inf) for {len(scores)} responses; "
            "check the reward model (e.g. load it with --dtype float32)."
        )
    return scores[[position[key] for key in keys]]


def run_best_of_n(config: BoNConfig) -> dict[str, Any]:
    """The `preftune bon` command: sample, score, select; writes the four files (module docstring)."""
    check_model_path(config.model.model)
    check_judge_spec(config.judge, config.judge_options)
    tokenizer = load_tokenizer(config.model.model, config.model.trust_remote_code)
    data = _load_prompts(config, tokenizer)
    task = _gold_task(config, data.prompts)
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    defaults = {"device": device, "dtype": config.model.dtype, "batch_size": config.judge_batch_size}
    judge = load_judge(config.judge, **{**defaults, **config.judge_options})
    policy = load_policy(config.model)
    cast(torch.nn.Module, policy).to(torch.device(device))
    P, N = len(data.prompts), config.n
    logger.info("Sampling %d responses for each of %d prompts (%d in all).", N, P, P * N)
    texts = [
        str(tokenizer.decode(r, skip_special_tokens=True))
        for r in _sample(policy, tokenizer, data.ids, config)
    ]
    prompts = [p for p in data.prompts for _ in range(N)]
    completions = response_completions(prompts, texts)
    scores = _score(judge, prompts, completions, config, config.judge).reshape(P, N)
    gold = (
        None if task is None else _score(GoldJudge(task), prompts, completions, config, "gold").reshape(P, N)
    )
    curve = bon_curve(scores, distinct_response_ids(texts, N), gold)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    num_pairs = _write_rows(out, data, completions, scores, gold)
    result: dict[str, Any] = {
        "n": N,
        "num_prompts": P,
        "judge": config.judge,
        "model": config.model.model,
        "dataset": config.data.dataset,
        "task": task,
        "curve": curve,
        "best_judge_reward": scores.max(dim=1).values.mean().item(),
        "pairs_written": num_pairs,
        "pairs_skipped_ties": P - num_pairs,
        "distinct_response_fraction": sum(len(set(texts[i : i + N])) for i in range(0, P * N, N)) / (P * N),
    }
    if gold is not None:
        result["best_gold_reward"] = gold.gather(1, scores.argmax(dim=1, keepdim=True)).mean().item()
    (out / "bon.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    log = logger.warning if P - num_pairs else logger.info
    log(
        "pairs.jsonl: %d best-vs-worst pairs; %d of %d prompts have none, as all their samples scored the same.",
        num_pairs,
        P - num_pairs,
        P,
    )
    logger.info("Wrote samples.jsonl, best.jsonl, pairs.jsonl and bon.json to %s", out)
    return result


def _write_rows(
    out: Path, data: PromptSet, completions: list[Completion], scores: Tensor, gold: Tensor | None
) -> int:
    """Write samples.jsonl, best.jsonl and pairs.jsonl; returns the number of pairs written."""
    N = scores.shape[1]

    def gold_score(i: int, k: int) -> dict[str, float]:
        return {} if gold is None else {"gold_score": gold[i, k].item()}

    samples = [
        {
            "prompt": prompt,
            "response": completions[i * N + k],
            "judge_score": scores[i, k].item(),
            **gold_score(i, k),
            "sample": k,
            "row": data.rows[i],
        }
        for i, prompt in enumerate(data.prompts)
        for k in range(N)
    ]
    best, worst = scores.argmax(dim=1).tolist(), scores.argmin(dim=1).tolist()  # the first highest / lowest
    best_rows = [
        {
            "prompt": prompt,
            "completion": completions[i * N + best[i]],
            "score": scores[i, best[i]].item(),
            **gold_score(i, best[i]),
        }
        for i, prompt in enumerate(data.prompts)
    ]
    pairs = [
        {
            "prompt": prompt,
            "chosen": completions[i * N + best[i]],
            "rejected": completions[i * N + worst[i]],
            "chosen_score": scores[i, best[i]].item(),
            "rejected_score": scores[i, worst[i]].item(),
        }
        for i, prompt in enumerate(data.prompts)
        if scores[i, best[i]] > scores[i, worst[i]]  # all samples tied: no pair (counted by the caller)
    ]
    write_jsonl(out / "samples.jsonl", samples)
    write_jsonl(out / "best.jsonl", best_rows)
    write_jsonl(out / "pairs.jsonl", pairs)
    return len(pairs)
