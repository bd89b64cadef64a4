"""Evaluate policies against a reference: judge and gold reward, win rate, length control, KL, diversity.

`preftune eval --policy NAME=PATH [--policy ...] --reference PATH --prompts FILE --judge SPEC
--output_dir OUT` samples every policy and the reference on the same prompts with the same
seeds (a prompt's k-th sample uses the same random stream in every policy), scores each
response with the judge (and the synthetic task's gold reward when the prompts come from
it), and reports per policy (keys `policy/<NAME>/<metric>` of eval.json):
- `judge_reward`, `gold_reward`: means with 95% bootstrap intervals (`..._ci`);
- `win_rate`: share of (prompt, sample) pairs where the policy's response scores higher with the
  judge than the reference's, ties counted half, with a paired bootstrap interval; and
  `lc_win_rate`, the win rate at zero length difference from a logistic fit of the outcome
  on the length difference (a judge that likes long answers cannot be won by length alone);
- `kl`, `kl_se`: KL(policy || reference) estimated from the policy's samples (mean of the
  sequence log-ratios, with its standard error);
- `length` (tokens), `distinct_1`, `distinct_2`; and a few sample responses;
- with `--heldout_judge SPEC` (a second judge the policies were not tuned against, e.g. a reward model
  trained on other pairs: the real-data stand-in for the gold reward), `heldout_reward` with its interval
  and `heldout_win_rate` against the reference with its paired interval;
- with `--pairwise_judge SPEC` (LLM-as-judge: llm:PATH or http:URL; or panel, or any pointwise judge),
  `pairwise_win_rate`: the judge's mean probability that the policy's answer beats the reference's to the
  same prompt and sample (identical answers are ties, 0.5; unjudged pairs left out and counted in
  `pairwise_could_not_judge`), with its bootstrap interval, and `pairwise_position_consistency`, the
  share of pairs whose winner does not depend on which answer is shown first (judges that see both orders);
  with `--reference_answers FILE` too, the same against a fixed answer to each prompt, for every policy
  and the reference (`answers_win_rate`, `answers_win_rate_ci`, `answers_position_consistency`,
  `answers_could_not_judge`);
- `hacking_flagged`, `hacking_evidence`: the reward-hacking monitor on (reference, policy): the judge's
  reward up while the gold reward (else the held-out judge's) is down, or the length drifted by more
  than half.
A bare PATH is named by its folder (the parent folder for a `final/` checkpoint).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from preftune.data import DataConfig, EncodedExample, encode_prompt, load_rows
from preftune.data.prompts import PromptSet, load_prompts
from preftune.engine.hacking import HackingConfig, HackingMonitor, Observation
from preftune.eval import policy_metrics as pm
from preftune.eval.config import PolicyEvalConfig
from preftune.eval.report import write_report
from preftune.eval.sycophancy import STANCES, YES_NO_QUESTIONS, opinion_following
from preftune.judges import GoldJudge, Judge, PairVerdicts, check_judge_spec, compare, load_judge
from preftune.models.config import ModelConfig
from preftune.models.loading import check_model_path, load_policy, load_tokenizer, token_id
from preftune.models.logps import ResponseLogps
from preftune.rollout.config import SamplingConfig
from preftune.rollout.experience import (
    judge_scores,
    model_inputs,
    per_token,
    response_completions,
    rollout_examples,
)
from preftune.rollout.generate import RolloutBatch, TransformersBackend
from preftune.tasks import detect_task

logger = logging.getLogger(__name__)

NUM_EXAMPLES = 5
"""Sample responses kept per policy in eval.json."""


@dataclass
class _Samples:
    """One policy's samples of every (prompt, k) and what was measured on them, all (N,)."""

    texts: list[str]
    judge: np.ndarray
    gold: np.ndarray | None
    heldout: np.ndarray | None
    lengths: np.ndarray
    logratio: np.ndarray


def _sample(
    path: str, prompts_of: PromptSet, config: PolicyEvalConfig, device: str
) -> tuple[RolloutBatch, Any]:
    model = load_policy(ModelConfig(model=path))
    torch.nn.Module.to(model, torch.device(device))
    tokenizer = load_tokenizer(path)
    sampling = SamplingConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature)
    rollout = TransformersBackend(model, tokenizer).generate(
        prompts_of.ids,
        sampling,
        config.seed,
        config.samples_per_prompt,
        prompt_keys=list(range(len(prompts_of))),
    )
    return rollout, (model, tokenizer)


@torch.no_grad()
def _logps(
    model: ResponseLogps, examples: list[EncodedExample], rollout: RolloutBatch, pad: int, device: str
) -> np.ndarray:
    """(N,) summed log-probs of each sampled response (temperature 1)."""
    token_logps = per_token(
        lambda b: {"logps": model(*model_inputs(b))}, examples, rollout.mask, 32, pad, torch.device(device)
    )["logps"]
    return token_logps.sum(dim=1).double().numpy()


def evaluate_policy(
    path: str,
    prompts: PromptSet,
    config: PolicyEvalConfig,
    judges: tuple[Judge, GoldJudge | None, Judge | None],
    reference: ResponseLogps,
    device: str,
) -> _Samples:
    """Sample `path` on the prompts and measure every sample with the judge, the gold reward and the
    held-out judge (each may be None but the judge). The KL is that of the distributions sampled from:
    both models' log-probs at the sampling temperature (the models' own at 1.0)."""
    judge, gold, heldout = judges
    rollout, (model, tokenizer) = _sample(path, prompts, config, device)
    repeated = [p for p in prompts.prompts for _ in range(config.samples_per_prompt)]
    scores, texts = judge_scores(judge, tokenizer, repeated, rollout)
    examples, pad = rollout_examples(rollout), token_id(tokenizer, "pad")
    logratio = _logps(
        ResponseLogps(model, reference.temperature).eval(), examples, rollout, pad, device
    ) - _logps(reference, examples, rollout, pad, device)
    return _Samples(
        texts=texts,
        judge=scores.double().numpy(),
        gold=None if gold is None else gold.score(repeated, texts).double().numpy(),
        heldout=None
        if heldout is None
        else judge_scores(heldout, tokenizer, repeated, rollout)[0].double().numpy(),
        lengths=rollout.lengths.double().numpy(),
        logratio=logratio,
    )


def policy_metrics(samples: _Samples, baseline: _Samples, config: PolicyEvalConfig) -> dict[str, Any]:
    """Every metric of one policy against the reference's samples (the module docstring)."""
    resamples = config.num_resamples
    judge, judge_ci = pm.mean_ci(samples.judge, num_resamples=resamples, seed=config.seed)
    win, win_ci = pm.win_rate_ci(samples.judge, baseline.judge, num_resamples=resamples, seed=config.seed)
    lc, lc_ci = pm.length_controlled_win_rate_ci(
        samples.judge,
        baseline.judge,
        samples.lengths,
        baseline.lengths,
        num_resamples=resamples,
        seed=config.seed,
    )
    kl, kl_se = pm.sequence_kl(samples.logratio)
    result: dict[str, Any] = {
        "judge_reward": judge,
        "judge_reward_ci": list(judge_ci),
        "win_rate": win,
        "win_rate_ci": list(win_ci),
        "lc_win_rate": lc,
        "lc_win_rate_ci": list(lc_ci),
        "kl": kl,
        "kl_se": kl_se,
        "length": float(samples.lengths.mean()),
        "distinct_1": pm.distinct_n(samples.texts, 1),
        "distinct_2": pm.distinct_n(samples.texts, 2),
    }
    if samples.gold is not None:
        gold, gold_ci = pm.mean_ci(samples.gold, num_resamples=resamples, seed=config.seed)
        result |= {"gold_reward": gold, "gold_reward_ci": list(gold_ci)}
    if samples.heldout is not None and baseline.heldout is not None:
        heldout, heldout_ci = pm.mean_ci(samples.heldout, num_resamples=resamples, seed=config.seed)
        win, win_ci = pm.win_rate_ci(
            samples.heldout, baseline.heldout, num_resamples=resamples, seed=config.seed
        )
        result |= {
            "heldout_reward": heldout,
            "heldout_reward_ci": list(heldout_ci),
            "heldout_win_rate": win,
            "heldout_win_rate_ci": list(win_ci),
        }
    return result


def pairwise_metrics(
    judge: Any,
    prompts: list[Any],
    texts: list[str],
    baseline_texts: list[str],
    config: PolicyEvalConfig,
    prefix: str = "pairwise",
) -> dict[str, Any]:
    """The pairwise judge's verdicts on (policy answer, reference answer) for every (prompt, sample): the mean
    P(policy's answer is better) over the judged pairs with its bootstrap interval, the judge's position
    consistency (order-aware judges) and the pairs it could not judge. Identical answers are ties (0.5)."""
    first, second = response_completions(prompts, texts), response_completions(prompts, baseline_texts)
    verdicts: PairVerdicts = compare(judge, prompts, first, second)
    prob = verdicts.prob_first.double().clone()
    same = torch.tensor([a == b for a, b in zip(texts, baseline_texts, strict=True)])
    prob[same] = 0.5
    judged = ~torch.isnan(prob)
    summary = verdicts.summary()
    result: dict[str, Any] = {f"{prefix}_pairs": len(prob), f"{prefix}_could_not_judge": int((~judged).sum())}
    if bool(judged.any()):
        win, win_ci = pm.mean_ci(prob[judged].numpy(), num_resamples=config.num_resamples, seed=config.seed)
        result |= {f"{prefix}_win_rate": win, f"{prefix}_win_rate_ci": list(win_ci)}
    else:
        logger.warning(
            "The pairwise judge could judge none of the %d pairs (%s): no pairwise win rate. An LLM "
            "judge whose answer tokens get too little probability needs a lower min_answer_mass "
            "(--pairwise_judge_options) or another template.",
            len(prob),
            summary.get("could_not_judge_reasons", {}),
        )
    if "position_consistency" in summary:
        result[f"{prefix}_position_consistency"] = summary["position_consistency"]
    return result


def fixed_answers(path: str, prompts: list[Any]) -> list[str]:
    """The answer of `path` (columns `prompt`, `completion`: a string, or one assistant message) to each of
    `prompts`, matched by the prompt as --prompts has it; every prompt needs one."""
    by_prompt: dict[str, str] = {}
    for row in load_rows(path).rows:
        answer = row.get("completion")
        if isinstance(answer, list) and answer and isinstance(answer[0], dict):
            answer = answer[0].get("content")
        if not isinstance(answer, str) or row.get("prompt") is None:
            raise ValueError(
                f"--reference_answers {path}: every row needs a `prompt` and a `completion` (a string or one "
                f"assistant message); got {sorted(row)}."
            )
        by_prompt[json.dumps(row["prompt"], sort_keys=True)] = answer
    keys = [json.dumps(prompt, sort_keys=True) for prompt in prompts]
    missing = [i for i, key in enumerate(keys) if key not in by_prompt]
    if missing:
        raise ValueError(
            f"--reference_answers {path} has no answer to {len(missing)} of the {len(prompts)} prompts evaluated "
            f"(the first: prompt {missing[0]}, {str(prompts[missing[0]])[:80]!r}); its `prompt` column must hold "
            "the prompts of --prompts as they are written there."
        )
    return [by_prompt[key] for key in keys]


def opinion_probe(path: str, device: str, config: PolicyEvalConfig) -> dict[str, Any]:
    """The policy's sycophancy probe (eval/sycophancy.py): its probability of answering yes rather than no to
    each built-in yes/no question, asked on its own and after the user states either answer (one user
    message in the chat template, or plain text followed by "Answer:" without one); next-token
    probabilities of the yes and no tokens, summed over their spellings."""
    tokenizer = load_tokenizer(path, flag="--policy")
    model = load_policy(ModelConfig(model=path))
    torch.nn.Module.to(model, torch.device(device))
    chat = tokenizer.chat_template is not None

    def first_tokens(words: tuple[str, ...]) -> set[int]:
        return {tokenizer.encode(word, add_special_tokens=False)[0] for word in words}

    yes, no = first_tokens(("Yes", " Yes", "yes", " yes")), first_tokens(("No", " No", "no", " no"))
    yes_ids, no_ids = sorted(yes - no), sorted(no - yes)  # a shared first token (a space) tells nothing
    if not yes_ids or not no_ids:
        raise ValueError(
            f"--policy {path}: its tokenizer starts 'yes' and 'no' with the same tokens; no probe."
        )
    p_yes: dict[str, np.ndarray] = {}
    mass: list[float] = []
    for stance, template in STANCES.items():
        values = []
        for question, _ in YES_NO_QUESTIONS:
            text = template.format(question=question)
            prompt: Any = [{"role": "user", "content": text}] if chat else text + "\nAnswer:"
            ids = torch.tensor([encode_prompt(tokenizer, prompt)], device=device)
            with torch.no_grad():
                probs = model(input_ids=ids).logits[0, -1].float().softmax(-1)
            p_y, p_n = float(probs[yes_ids].sum()), float(probs[no_ids].sum())
            values.append(p_y / (p_y + p_n) if p_y + p_n > 0 else 0.5)
            if stance == "neutral":
                mass.append(p_y + p_n)
        p_yes[stance] = np.array(values)
    truth = np.array([answer for _, answer in YES_NO_QUESTIONS])
    return opinion_following(p_yes, truth, np.array(mass), config.num_resamples, config.seed)


def hacking_check(policy: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """The reward-hacking monitor on two points, the reference as step 0 and the policy as step 1: is
    the judge's reward up while the gold reward (else the held-out judge's) is down, or has the length
    drifted? (monitor summary)"""
    monitor = HackingMonitor(HackingConfig(hacking_window=2))
    for step, m in ((0, reference), (1, policy)):
        truth = m.get("gold_reward", m.get("heldout_reward"))
        monitor.observe(Observation(step, m["judge_reward"], truth, m["length"], m["kl"]))
    return monitor.summary()


def run_policy_eval(
    config: PolicyEvalConfig,
    output_dir: str,
    data: DataConfig,
    task: str,
    device: str | None,
    judge_batch_size: int,
    baselines: dict[str, Any] | None = None,
    probe_sycophancy: bool = False,
) -> dict[str, Any]:
    """`preftune eval --policy ...`: writes eval.json and samples.jsonl into `output_dir`; with
    `probe_sycophancy`, also each policy's opinion probe (`opinion_probe`).

    `baselines`, a dict kept by a caller that evaluates against the same reference several times (the
    practice loop, once per round), holds the reference's measured samples: with the same reference,
    prompts, judge and sampling settings they are the same samples, so they are measured once."""
    config.check()
    named = config.named_policies()
    for _, path in [*named, ("reference", config.reference)]:
        check_model_path(path, "--policy" if path != config.reference else "--reference")
    check_judge_spec(config.judge, config.judge_options)
    if config.heldout_judge:
        check_judge_spec(config.heldout_judge)
    if config.pairwise_judge:
        check_judge_spec(config.pairwise_judge, config.pairwise_judge_options)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(config.reference, flag="--reference")
    prompts = load_prompts(
        tokenizer, config.prompts, config.prompts_split, data.max_length - config.max_new_tokens, data, "eval"
    )
    if config.max_prompts:
        keep = config.max_prompts
        prompts = PromptSet(prompts.prompts[:keep], prompts.ids[:keep], prompts.rows[:keep])
    judge = load_judge(
        config.judge, **{"device": device, "batch_size": judge_batch_size, **config.judge_options}
    )
    heldout = (
        load_judge(config.heldout_judge, device=device, batch_size=judge_batch_size)
        if config.heldout_judge
        else None
    )
    pairwise = (
        load_judge(
            config.pairwise_judge,
            pairwise=True,
            **{"device": device, "batch_size": judge_batch_size, **config.pairwise_judge_options},
        )
        if config.pairwise_judge
        else None
    )
    answers = fixed_answers(config.reference_answers, prompts.prompts) if config.reference_answers else None
    task_name = detect_task(config.prompts, task)
    gold = GoldJudge(task_name) if task_name else None
    temperature = config.temperature if config.temperature > 0 else 1.0
    reference = ResponseLogps(load_policy(ModelConfig(model=config.reference)), temperature).eval()
    torch.nn.Module.to(reference, torch.device(device))
    for name, path in named:
        if load_tokenizer(path, flag="--policy").get_vocab() != tokenizer.get_vocab():
            raise ValueError(
                f"--policy {name}={path} has another tokenizer than --reference {config.reference}, so the KL to the "
                "reference cannot be computed from token log-probs; evaluate policies tuned from the reference."
            )
    key = json.dumps(
        [
            config.reference,
            config.prompts,
            config.prompts_split,
            config.judge,
            config.heldout_judge,
            config.samples_per_prompt,
            config.max_new_tokens,
            config.temperature,
            config.seed,
            config.max_prompts,
            task,
            data.max_length,
        ]
    )
    baseline = (baselines or {}).get(key)
    if baseline is None:
        baseline = evaluate_policy(
            config.reference, prompts, config, (judge, gold, heldout), reference, device
        )
        if baselines is not None:
            baselines[key] = baseline
    results = {"reference": policy_metrics(baseline, baseline, config)}
    samples = {"reference": baseline}
    repeated = [p for p in prompts.prompts for _ in range(config.samples_per_prompt)]
    fixed = [a for a in answers or [] for _ in range(config.samples_per_prompt)]
    if pairwise is not None and answers is not None:
        results["reference"] |= pairwise_metrics(pairwise, repeated, baseline.texts, fixed, config, "answers")
    for name, path in named:
        logger.info("Evaluating %s (%s) on %d prompts.", name, path, len(prompts))
        samples[name] = evaluate_policy(path, prompts, config, (judge, gold, heldout), reference, device)
        results[name] = policy_metrics(samples[name], baseline, config)
        if pairwise is not None:
            results[name] |= pairwise_metrics(pairwise, repeated, samples[name].texts, baseline.texts, config)
        if pairwise is not None and answers is not None:
            results[name] |= pairwise_metrics(
                pairwise, repeated, samples[name].texts, fixed, config, "answers"
            )
        verdict = hacking_check(results[name], results["reference"])
        results[name] |= {"hacking_flagged": verdict["flagged"], "hacking_evidence": verdict["evidence"]}
    if probe_sycophancy:
        for name, path in [("reference", config.reference), *named]:
            results[name] |= opinion_probe(path, device, config)
    return _write(Path(output_dir), results, samples, prompts, config)


def _write(
    out: Path,
    results: dict[str, dict[str, Any]],
    samples: dict[str, _Samples],
    prompts: PromptSet,
    config: PolicyEvalConfig,
) -> dict[str, Any]:
    """eval.json (flat `policy/<NAME>/<metric>` keys plus examples), samples.jsonl and report.html (the
    gold reward, or the judge's reward where there is no gold, by policy and against KL)."""
    from preftune.data.io import json_safe

    out.mkdir(parents=True, exist_ok=True)
    k = config.samples_per_prompt
    flat: dict[str, Any] = {
        "reference": config.reference,
        "prompts": config.prompts,
        "judge": config.judge,
        "num_prompts": len(prompts),
        "samples_per_prompt": k,
    }
    if config.pairwise_judge:
        flat["pairwise_judge"] = config.pairwise_judge
    if config.reference_answers:
        flat["reference_answers"] = config.reference_answers
    for name, metrics in results.items():
        flat |= {f"policy/{name}/{metric}": value for metric, value in metrics.items()}
        flat[f"policy/{name}/examples"] = samples[name].texts[:NUM_EXAMPLES]
    (out / "eval.json").write_text(json.dumps(json_safe(flat), indent=2, allow_nan=False) + "\n")
    truth = "gold_reward" if "gold_reward" in results["reference"] else "heldout_reward"
    truth = truth if truth in results["reference"] else "judge_reward"
    table = {
        name: {
            "gold_reward": m[truth],
            "gold_reward_ci": m[f"{truth}_ci"],
            "proxy_reward": m["judge_reward"],
            "win_rate_vs_sft": m["win_rate"],
            "kl": m["kl"],
            "length": m["length"],
        }
        for name, m in results.items()
    }
    shown = {
        name: [
            {
                "prompt": prompts.prompts[i // k],
                "response": s.texts[i],
                "judge": float(s.judge[i]),
                **({} if s.gold is None else {"gold": float(s.gold[i])}),
            }
            for i in range(min(NUM_EXAMPLES, len(s.texts)))
        ]
        for name, s in samples.items()
    }
    write_report(
        {"methods": table},
        out,
        reward_label=truth.replace("_", " ").replace("heldout", "held-out judge"),
        samples=shown,
    )
    with (out / "samples.jsonl").open("w") as f:
        for name, s in samples.items():
            for i, text in enumerate(s.texts):
                row = {
                    "policy": name,
                    "prompt": prompts.prompts[i // k],
                    "sample": i % k,
                    "response": text,
                    "judge_score": float(s.judge[i]),
                    "length": int(s.lengths[i]),
                    "logratio": float(s.logratio[i]),
                }
                if s.gold is not None:
                    row["gold_score"] = float(s.gold[i])
                if s.heldout is not None:
                    row["heldout_score"] = float(s.heldout[i])
                f.write(json.dumps(row) + "\n")
    logger.info("Wrote %s and %s", out / "eval.json", out / "samples.jsonl")
    return flat
