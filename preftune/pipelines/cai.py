"""`preftune cai`: Constitutional AI (Bai et al. 2022, arXiv 2212.08073) on any causal LM.

    preftune cai --model runs/sft/final --dataset data/kindness/prompts.jsonl --output_dir runs/cai

For each prompt of --dataset:
1. the model **answers** (sampled at --temperature);
2. it **critiques** its answer against a principle drawn (seeded) from the constitution;
3. it **revises** the answer following the principle's revision request, unless the critique says the
   answer has no issue (the principle's `no_issue` text): then the answer is its own revision. Critiques
   and revisions are decoded greedily: they are instructions, not open-ended answers.
The outcome is SFT data (`data/revisions.jsonl`) and preference data (`data/pairs.jsonl`), labelled
without any human:
- `--preference critique` (the default when every principle has `no_issue`): two samples per prompt from
  the revision-tuned model, each critiqued by the starting model; the one its critique finds no issue
  with is chosen over the one it does (both or neither: no pair);
- `--preference revision` (the default otherwise): the revision over the original answer, wherever the
  revision changed it;
- `--preference judge`: two samples per prompt labelled by an AI judge (`--judge llm:PATH` or
  `http:URL`) whose template is given the sampled principle (RLAIF).
Then SFT on the revisions (`sft/`), then DPO on the pairs from that model (`dpo/`), copied to `final/`:
the tuned policy.

`data/critiques.jsonl` keeps every step with its provenance (principle, answer, critique, revision);
`summary.json` has the counts and, on held-out prompts, the judge (gold, for the synthetic world)
reward of the starting model ("before"), after SFT on revisions and after DPO ("after").

A constitution is YAML: `name`, and `principles`, each with `name`, `description` (given to an AI
judge as the principle), `critique` and `revision` request templates with the placeholders {prompt},
{response} and (revision only) {critique}. The default is the built-in `kindness` constitution,
written for the synthetic world; `assistant` is a starting point for chat models (docs/cai.md).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from preftune.config import save_config
from preftune.data import DataConfig, Prompt, encode_prompt
from preftune.data.io import write_jsonl
from preftune.data.prompts import PromptSet, load_prompts
from preftune.engine.config import RUN_CONTROL
from preftune.eval.config import PolicyEvalConfig
from preftune.eval.policy import run_policy_eval
from preftune.judges import check_judge_spec, compare, load_judge
from preftune.models.loading import check_model_path, load_policy, load_tokenizer
from preftune.pipelines.config import CAIConfig
from preftune.pipelines.constitution import Constitution, load_constitution
from preftune.rollout.config import SamplingConfig
from preftune.rollout.generate import TransformersBackend
from preftune.tasks import detect_task
from preftune.trainers.dpo import DPOTrainer
from preftune.trainers.dpo_config import DPOConfig
from preftune.trainers.sft import SFTTrainer
from preftune.trainers.sft_config import SFTConfig

logger = logging.getLogger(__name__)


class _Generator:
    """Generation with one loaded model: sampled answers, greedy instructions."""

    def __init__(self, path: str, config: CAIConfig, device: str) -> None:
        self.tokenizer = load_tokenizer(path, config.model.trust_remote_code)
        model = load_policy(dataclasses.replace(config.model, model=path, use_peft=False))
        torch.nn.Module.to(model, torch.device(device))
        self.backend = TransformersBackend(model, self.tokenizer)
        self.max_prompt = config.data.max_length - config.max_new_tokens
        self.config = config

    def __call__(self, prompts: list[str], temperature: float, seed: int, num_samples: int = 1) -> list[str]:
        ids = [encode_prompt(self.tokenizer, in_chat(p, self.config), self.max_prompt) for p in prompts]
        sampling = SamplingConfig(max_new_tokens=self.config.max_new_tokens, temperature=temperature)
        rollout = self.backend.generate(ids, sampling, seed, num_samples, prompt_keys=list(range(len(ids))))
        return [str(self.tokenizer.decode(r, skip_special_tokens=True)).strip() for r in rollout.response_ids]


def in_chat(prompt: str, config: CAIConfig) -> Prompt:
    """`prompt` as the model reads it: one user message with --use_chat_template, else the text."""
    return [{"role": "user", "content": prompt}] if config.use_chat_template else prompt


def chat_row(row: dict[str, Any], config: CAIConfig, responses: tuple[str, ...]) -> dict[str, Any]:
    """A data row (prompt and the `responses` columns) in the format the model is trained on: with
    --use_chat_template a user message and assistant replies, else plain text."""
    if not config.use_chat_template:
        return row
    replies = {name: [{"role": "assistant", "content": row[name]}] for name in responses}
    return {**row, "prompt": in_chat(row["prompt"], config), **replies}


def critique_and_revise(
    generate: _Generator, prompts: list[str], constitution: Constitution, seed: int
) -> list[dict[str, Any]]:
    """Answer, critique and revise each prompt (module docstring); one record per prompt."""
    rng = np.random.default_rng([seed, 11])
    chosen = [
        constitution.principles[int(i)] for i in rng.integers(len(constitution.principles), size=len(prompts))
    ]
    answers = generate(prompts, generate.config.temperature, seed)
    critique_requests = [
        p.critique.format(prompt=x, response=y) for p, x, y in zip(chosen, prompts, answers, strict=True)
    ]
    critiques = generate(critique_requests, 0.0, seed)
    revision_requests = [
        p.revision.format(prompt=x, response=y, critique=c)
        for p, x, y, c in zip(chosen, prompts, answers, critiques, strict=True)
    ]
    needed = [
        i
        for i, (p, c) in enumerate(zip(chosen, critiques, strict=True))
        if not p.no_issue or p.no_issue not in c
    ]
    revised = set(needed)
    revisions = list(answers)  # an answer the critique finds no issue with is its own revision
    for i, text in zip(needed, generate([revision_requests[i] for i in needed], 0.0, seed), strict=True):
        revisions[i] = text
    return [
        {
            "prompt": x,
            "response": y,
            "principle": p.name,
            "critique_request": cr,
            "critique": c,
            "revision_request": rr if i in revised else None,
            "revision": r,
            "changed": r != y and bool(r),
        }
        for i, (x, y, p, cr, c, rr, r) in enumerate(
            zip(
                prompts,
                answers,
                chosen,
                critique_requests,
                critiques,
                revision_requests,
                revisions,
                strict=True,
            )
        )
    ]


def revision_pairs(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Revision over original where the revision changed the answer; the counts of the others: `unchanged`
    (no preference) and `empty` (an empty answer or revision: nothing to train on)."""
    counts = {"unchanged": 0, "empty": 0}
    rows = []
    for r in records:
        if not r["response"].strip() or not r["revision"].strip():
            counts["empty"] += 1
        elif not r["changed"]:
            counts["unchanged"] += 1
        else:
            rows.append(
                {
                    "prompt": r["prompt"],
                    "chosen": r["revision"],
                    "rejected": r["response"],
                    "principle": r["principle"],
                    "label_source": "revision",
                }
            )
    return rows, counts


def critique_pairs(
    critic: _Generator,
    policy: _Generator,
    prompts: list[str],
    constitution: Constitution,
    temperature: float,
    seed: int,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Two samples of `policy` per prompt, each critiqued by `critic` against the prompt's sampled principle:
    the sample whose critique contains the principle's `no_issue` text is chosen over the one whose critique
    does not. The counts of prompts without a pair: `both_no_issue`, `both_issue`, `identical` samples and
    `empty` (a sample with no text)."""
    rng = np.random.default_rng([seed, 17])
    principles = [
        constitution.principles[int(i)] for i in rng.integers(len(constitution.principles), size=len(prompts))
    ]
    samples = policy(prompts, temperature, seed + 1, num_samples=2)
    requests = [
        principles[i // 2].critique.format(prompt=prompts[i // 2], response=y) for i, y in enumerate(samples)
    ]
    critiques = critic(requests, 0.0, seed)
    rows = []
    counts = {"both_no_issue": 0, "both_issue": 0, "identical": 0, "empty": 0}
    for i, (prompt, principle) in enumerate(zip(prompts, principles, strict=True)):
        ok = [principle.no_issue in critiques[2 * i + j] for j in (0, 1)]
        if not samples[2 * i].strip() or not samples[2 * i + 1].strip():
            counts["empty"] += 1
            continue
        if samples[2 * i] == samples[2 * i + 1]:
            counts["identical"] += 1
            continue
        if ok[0] == ok[1]:
            counts["both_no_issue" if ok[0] else "both_issue"] += 1
            continue
        good, bad = (0, 1) if ok[0] else (1, 0)
        rows.append(
            {
                "prompt": prompt,
                "chosen": samples[2 * i + good],
                "rejected": samples[2 * i + bad],
                "principle": principle.name,
                "label_source": "critique",
                "chosen_critique": critiques[2 * i + good],
                "rejected_critique": critiques[2 * i + bad],
            }
        )
    return rows, counts


def judged_pairs(
    generate: _Generator, prompts: list[str], constitution: Constitution, config: CAIConfig, device: str
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """RLAIF: two samples per prompt, labelled by the AI judge under the prompt's sampled principle; the
    counts of prompts without a pair: `identical` or `empty` samples, `could_not_judge`, `no_preference`."""
    rng = np.random.default_rng([config.train.seed, 13])
    principles = [
        constitution.principles[int(i)] for i in rng.integers(len(constitution.principles), size=len(prompts))
    ]
    samples = generate(prompts, config.temperature, config.train.seed + 1, num_samples=2)
    rows = []
    counts = {"identical": 0, "empty": 0, "could_not_judge": 0, "no_preference": 0}
    for i in range(len(prompts)):
        if not samples[2 * i].strip() or not samples[2 * i + 1].strip():
            counts["empty"] += 1
        elif samples[2 * i] == samples[2 * i + 1]:
            counts["identical"] += 1
    for principle in constitution.principles:
        mine = [
            i
            for i, p in enumerate(principles)
            if p is principle
            and samples[2 * i] != samples[2 * i + 1]
            and samples[2 * i].strip()
            and samples[2 * i + 1].strip()
        ]
        if not mine:
            continue
        options = {
            "device": device,
            "batch_size": config.judge_batch_size,
            "principle": principle.description or principle.name,
            "cache_dir": str(Path(config.train.output_dir) / "judge-cache"),
            **config.judge_options,
        }
        judge = load_judge(config.judge, pairwise=True, **options)
        verdicts = compare(
            judge,
            [prompts[i] for i in mine],
            [samples[2 * i] for i in mine],
            [samples[2 * i + 1] for i in mine],
        )
        for i, p in zip(mine, verdicts.prob_first.tolist(), strict=True):
            if p != p or p == 0.5:
                counts["could_not_judge" if p != p else "no_preference"] += 1
                continue
            first, second = samples[2 * i], samples[2 * i + 1]
            chosen, rejected = (first, second) if p > 0.5 else (second, first)
            rows.append(
                {
                    "prompt": prompts[i],
                    "chosen": chosen,
                    "rejected": rejected,
                    "principle": principle.name,
                    "label_source": config.judge,
                    "confidence": abs(2 * p - 1),
                }
            )
    return rows, counts


def run_cai(config: CAIConfig) -> dict[str, Any]:
    """The `preftune cai` command (module docstring)."""
    start = time.perf_counter()
    out = Path(config.train.output_dir)
    check_model_path(config.model.model)
    if config.judge:
        check_judge_spec(config.judge, config.judge_options)
    constitution = load_constitution(config.constitution)
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(config.model.model, config.model.trust_remote_code)
    data = load_prompts(
        tokenizer,
        config.data.dataset,
        config.data.dataset_split,
        config.data.max_length - config.max_new_tokens,
        config.data,
        "cai",
    )
    task = detect_task(config.data.dataset, config.task)
    eval_prompts: list[Any] | None = None
    if not config.data.eval_dataset:
        n = config.num_eval_prompts
        if len(data) <= n:
            raise ValueError(
                f"--dataset has {len(data)} prompts; without --eval_dataset the last --num_eval_prompts {n} are "
                "held out, leaving none. Pass --eval_dataset or lower --num_eval_prompts."
            )
        data, eval_prompts = PromptSet(data.prompts[:-n], data.ids[:-n], data.rows[:-n]), data.prompts[-n:]
    elif config.use_chat_template:  # the held-out prompts are asked as user messages too
        held_out = load_prompts(
            tokenizer,
            config.data.eval_dataset,
            config.data.eval_dataset_split or "train",
            config.data.max_length - config.max_new_tokens,
            config.data,
            "cai evaluation",
        )
        eval_prompts = held_out.prompts[: config.num_eval_prompts]
    prompts = data.prompts[: config.num_prompts or None]
    if not all(isinstance(p, str) for p in [*prompts, *(eval_prompts or [])]):
        raise ValueError(
            "preftune cai takes plain-text prompts (a `prompt` column of strings); for a chat model add "
            "--use_chat_template true, which asks each of them as a user message."
        )
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml", leave_out=RUN_CONTROL)

    logger.info(
        "cai [1/4] answering, critiquing and revising %d prompts with %d principle(s) of %r.",
        len(prompts),
        len(constitution.principles),
        constitution.name,
    )
    generate = _Generator(config.model.model, config, device)
    records = critique_and_revise(generate, [str(p) for p in prompts], constitution, config.train.seed)
    (out / "data").mkdir(exist_ok=True)
    write_jsonl(out / "data" / "critiques.jsonl", records)
    write_jsonl(
        out / "data" / "revisions.jsonl",
        (
            chat_row({"prompt": r["prompt"], "completion": r["revision"]}, config, ("completion",))
            for r in records
            if r["revision"]
        ),
    )
    empty = sum(not r["revision"] for r in records)
    if empty == len(records):
        raise ValueError(
            f"Every revision is empty ({empty} prompts): the model does not follow the constitution's revision "
            f"requests. Read {out / 'data' / 'critiques.jsonl'}; tune the model on the critique and revision "
            "instructions first, or write requests it understands (docs/cai.md)."
        )
    (logger.warning if empty else logger.info)(
        "cai: %d of %d revisions changed the answer; %d empty revisions are left out of the SFT data.",
        sum(r["changed"] for r in records),
        len(records),
        empty,
    )

    logger.info("cai [2/4] SFT on the revisions.")
    sft_train = dataclasses.replace(
        config.train,
        output_dir=str(out / "sft"),
        learning_rate=config.sft_learning_rate,
        num_train_epochs=config.sft_epochs,
        max_steps=-1,
        overwrite_output_dir=True,
    )
    SFTTrainer(
        SFTConfig(
            model=config.model,
            train=sft_train,
            data=DataConfig(dataset=str(out / "data" / "revisions.jsonl"), max_length=config.data.max_length),
        )
    ).train()
    sft = str(out / "sft" / "final")

    logger.info("cai [3/4] preference pairs (%s) and DPO.", config.preference)
    if config.preference == "revision":
        pairs, left_out = revision_pairs(records)
    elif config.preference == "critique":
        policy = _Generator(sft, config, device)
        pairs, left_out = critique_pairs(
            generate, policy, [str(p) for p in prompts], constitution, config.temperature, config.train.seed
        )
    else:
        pairs, left_out = judged_pairs(
            _Generator(sft, config, device), [str(p) for p in prompts], constitution, config, device
        )
    (logger.warning if any(left_out.values()) else logger.info)(
        "cai: %d preference pairs; prompts without one: %s.", len(pairs), left_out
    )
    preference = config.preference
    if not pairs and preference != "revision":  # e.g. a weak model whose critiques find an issue everywhere
        pairs, revision_left_out = revision_pairs(records)
        logger.warning(
            "cai: no %s pair (prompts without one: %s), so DPO trains on revision-over-original pairs instead "
            "(%d pairs; without one: %s). The model may not follow the constitution's critique format: read "
            "%s.",
            preference,
            left_out,
            len(pairs),
            revision_left_out,
            out / "data" / "critiques.jsonl",
        )
        preference, left_out = "revision (fallback)", {**left_out, **revision_left_out}
    if not pairs:
        raise ValueError(
            f"No preference pair ({config.preference} labels; prompts without one: {left_out}). Check the critiques in "
            f"{out / 'data' / 'critiques.jsonl'}: the model may not follow the constitution's requests."
        )
    write_jsonl(
        out / "data" / "pairs.jsonl", (chat_row(row, config, ("chosen", "rejected")) for row in pairs)
    )
    dpo_train = dataclasses.replace(config.train, output_dir=str(out / "dpo"), overwrite_output_dir=True)
    pairs_data = DataConfig(dataset=str(out / "data" / "pairs.jsonl"), max_length=config.data.max_length)
    policy = dataclasses.replace(config.model, model=sft)
    DPOTrainer(
        DPOConfig(model=policy, data=pairs_data, train=dpo_train, **dataclasses.asdict(config.dpo))
    ).train()
    if (out / "final").exists():
        shutil.rmtree(out / "final")
    shutil.copytree(out / "dpo" / "final", out / "final")

    logger.info("cai [4/4] evaluation before and after.")
    summary: dict[str, Any] = {
        "constitution": constitution.source,
        "principles": [p.name for p in constitution.principles],
        "prompts": len(records),
        "revisions_changed": sum(r["changed"] for r in records),
        "revisions_empty": sum(not r["revision"] for r in records),
        "pairs": len(pairs),
        "pairs_left_out": left_out,
        "preference": preference,
    }
    summary |= _evaluate(config, out, sft, task, eval_prompts, device)
    summary["wall_seconds"] = time.perf_counter() - start
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _evaluate(
    config: CAIConfig, out: Path, sft: str, task: str | None, eval_prompts: list[Any] | None, device: str
) -> dict[str, Any]:
    """Judge reward (gold for the synthetic world) of the model before, after SFT on revisions, and after DPO."""
    judge = config.eval_judge or ("gold" if task else "")
    if not judge:
        logger.warning("No --eval_judge and no synthetic task: the before/after evaluation is skipped.")
        return {}
    if eval_prompts is None:
        prompts_file, split = str(config.data.eval_dataset), config.data.eval_dataset_split or "train"
    else:
        prompts_file, split = str(out / "data" / "eval_prompts.jsonl"), "train"
        write_jsonl(Path(prompts_file), ({"prompt": in_chat(p, config)} for p in eval_prompts))
    eval_config = PolicyEvalConfig(
        policy=[f"sft_on_revisions={sft}", f"cai={out / 'final'}"],
        reference=config.model.model,
        prompts=prompts_file,
        prompts_split=split,
        judge=judge,
        samples_per_prompt=2,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        seed=config.train.seed,
        max_prompts=config.num_eval_prompts,
    )
    eval_data = DataConfig(dataset=prompts_file, max_length=config.data.max_length)
    flat = run_policy_eval(
        eval_config, str(out / "eval"), eval_data, task or "none", device, config.judge_batch_size
    )
    keep = ("gold_reward", "gold_reward_ci", "judge_reward", "judge_reward_ci", "win_rate", "kl", "length")
    return {
        stage: {key: flat[f"policy/{name}/{key}"] for key in keep if f"policy/{name}/{key}" in flat}
        for stage, name in (("before", "reference"), ("after_sft", "sft_on_revisions"), ("after", "cai"))
    } | {"eval_judge": judge}
