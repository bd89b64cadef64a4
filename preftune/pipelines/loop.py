"""`preftune loop`: the practice loop of preference tuning, as one resumable job.

    preftune loop --model runs/sft/final --dataset data/kindness/prompts.jsonl \\
        --judge rm:runs/rm/final --rounds 3 --output_dir runs/loop

Round 0 is the starting policy, evaluated. Each round K = 1, 2, ... then:
1. **generate**: sample `num_generations` responses to each of this round's prompts (a fresh slice of
   `prompts_per_round` prompts from --dataset, walked in a seeded order) from the current policy;
2. **rate**: rank each prompt's samples with the judge (`preftune.judges.rank_groups`: a pointwise
   judge's scores, or a pairwise judge's mean preference over the other samples); with `--judge human`,
   write the round's pairs for people (`to_rate.jsonl`) and stop, then read them back rated
   (`ratings.jsonl`) on the next run and audit the ratings (docs/loop.md);
3. **build the dataset**: best vs worst per prompt, or every pair whose score difference exceeds
   `margin` (`--pairs all`); optionally only pairs the judge is confident about (`min_confidence`);
   prompts with nothing to prefer are counted, never silently dropped;
4. **tune**: DPO (any `--loss_type` of the DPO family) from the current policy, with the initial
   policy (`--reference initial`) or the previous round's (`--reference previous`) as reference;
5. **evaluate** on held-out prompts against round 0 (`preftune eval --policy`): judge and gold
   reward, win rate against round 0, KL to round 0, length.

Everything a round makes is in `OUT/round-K/`: `samples.jsonl` (every sample and its score),
`pairs.jsonl` (the DPO data; each row with its provenance: round, policy, judge, seed, sample
indices), `provenance.json` (counts, judge statistics, seeds), `train/` (the DPO run, checkpoints
and `final/`), `eval/` (eval.json, samples.jsonl, report.html) and `round.json`, written last: a
round with a round.json is finished. Killing the job and running the same command again resumes
at the first unfinished round (its data is reused when complete, and its DPO run continues from
its newest checkpoint). `OUT/summary.json` holds `{"rounds": [{"round": 0, "gold_reward": x,
"judge_reward": x, "kl": x, "length": x, "win_rate": x, ...}, ...], "trend": ...}`, and
`report.md` / `report.html` show the rounds side by side, with the reward-hacking monitor's verdict
over rounds (is the judge's reward rising while the gold reward falls, or the length drifting?).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from preftune.config import config_to_flat_dict, save_config
from preftune.data import DataConfig
from preftune.data.io import atomic_path, json_safe, write_jsonl
from preftune.data.prompts import PromptSet, load_prompts
from preftune.engine.config import RUN_CONTROL
from preftune.engine.hacking import HackingConfig, HackingMonitor, Observation
from preftune.eval.config import PolicyEvalConfig
from preftune.eval.policy import run_policy_eval
from preftune.eval.report import write_report
from preftune.judges import GroupRanking, check_judge_spec, is_pairwise_spec, load_judge, rank_groups
from preftune.models.loading import check_model_path, load_policy, load_tokenizer
from preftune.pipelines.config import LoopConfig
from preftune.rollout.experience import response_completions
from preftune.rollout.generate import TransformersBackend
from preftune.tasks import detect_task
from preftune.trainers.dpo import DPOTrainer

logger = logging.getLogger(__name__)

ROUND_FILE = "round.json"
"""Written last in a round's folder: the round is finished."""
PROVENANCE_FILE = "provenance.json"
"""Written after a round's samples.jsonl and pairs.jsonl: the round's dataset is complete."""
LOOP_STATE = "loop.json"
"""The settings that decide a loop's data and models; a resumed loop must match them."""
RESUME_SAFE = (
    "rounds",
    "disable_tqdm",
    "overwrite_output_dir",
    "logging_steps",
    "report_to",
    "output_dir",
    "device",
    "judge_batch_size",
    "save_total_limit",
    "margin",
    "min_confidence",
)
"""Settings that may change between a run and its resumption: more rounds, logging, where it runs, and the
pair filters (they apply to the rounds still to come; each round's provenance.json records its own)."""


HUMAN = "human"
"""--judge human: people rate each round's pairs through a file (`human_rating_plan`, `read_human_ratings`)."""
TO_RATE_FILE = "to_rate.jsonl"
"""A human round's pairs for people, in the round's folder: pair_id, prompt, response_a (shown first),
response_b, and the empty fields raters fill: choice (a, b or tie), annotator, annotator_group, order."""
RATINGS_STEM = "ratings"
"""The rated file people return, saved in the round's folder as ratings.jsonl or ratings.csv."""
RATING_PLAN_FILE = "rating_plan.json"
"""Which samples each pair_id shows, and in which order (the loop's own record of a human round)."""


@dataclasses.dataclass
class _RoundSamples:
    indices: list[int]
    prompts: list[Any]
    texts: list[str]
    responses: list[Any]
    policy: str
    seed: int
    rollout: Any


# ---------------------------------------------------------------------------------------------
# Pair construction (pure)


def human_rating_plan(
    prompts: list[Any], texts: list[str], k: int, round_number: int, rng: np.random.Generator
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The pairs people rate in a human round: each prompt's samples paired as (0, 1), (2, 3), ... (an odd
    last one left out), each shown in a random order that is recorded. Returns the plan (pair_id,
    prompt_index, sample_a, sample_b: `a` is shown first) and the rows of TO_RATE_FILE. Identical samples
    are not shown (nothing to prefer)."""
    plan: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for g, prompt in enumerate(prompts):
        for i in range(0, k - 1, 2):
            a, b = (i, i + 1) if rng.random() < 0.5 else (i + 1, i)
            if texts[g * k + a] == texts[g * k + b]:
                continue
            pair_id = f"r{round_number}-p{g}-s{min(a, b)}"
            plan.append(
                {
                    "pair_id": pair_id,
                    "prompt_index": g,
                    "sample_a": a,
                    "sample_b": b,
                    "prompt": prompt,
                    "response_a": texts[g * k + a],
                    "response_b": texts[g * k + b],
                }
            )
            rows.append(
                {
                    "pair_id": pair_id,
                    "prompt": prompt,
                    "response_a": texts[g * k + a],
                    "response_b": texts[g * k + b],
                    "choice": "",
                    "annotator": "",
                    "annotator_group": "",
                    "order": "",
                }
            )
    return plan, rows


def read_human_ratings(path: str, plan: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The rated file of a human round as DPO pairs with the rating metadata the audit reads (prompt,
    chosen, rejected, annotator, annotator_group, order, shown_first, pair_id). Each row is one rating of a
    planned pair: 'choice' a or b (the response shown first, or second) or tie (counted, not a pair). Rows
    with an unknown pair_id, another choice, or texts that differ from the plan are errors naming the rows;
    planned pairs nobody rated are counted."""
    from preftune.data.io import load_rows

    table = load_rows(path)
    by_id = {row["pair_id"]: row for row in plan}
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    counts = {"ratings": 0, "ties": 0, "pairs": 0, "planned": len(plan), "unrated": 0}
    rated: set[str] = set()
    for number, row in enumerate(table.rows, start=1):
        pair = by_id.get(str(row.get("pair_id", "")))
        choice = str(row.get("choice") or "").strip().lower()
        if pair is None:
            problems.append(f"row {number}: unknown pair_id {row.get('pair_id')!r}")
            continue
        if choice not in ("a", "b", "tie"):
            problems.append(
                f"row {number} ({pair['pair_id']}): choice {row.get('choice')!r} is not a, b or tie"
            )
            continue
        if any(key in row and row[key] != pair[key] for key in ("response_a", "response_b")):
            problems.append(f"row {number} ({pair['pair_id']}): its responses differ from the ones shown")
            continue
        counts["ratings"] += 1
        rated.add(pair["pair_id"])
        if choice == "tie":
            counts["ties"] += 1
            continue
        first, second = pair["response_a"], pair["response_b"]
        chosen, rejected = (first, second) if choice == "a" else (second, first)
        order = str(row.get("order", "")).strip()
        rows.append(
            {
                "prompt": pair["prompt"],
                "chosen": chosen,
                "rejected": rejected,
                "annotator": str(row.get("annotator") or "") or None,
                "annotator_group": str(row.get("annotator_group") or "") or None,
                "order": int(order) if order.lstrip("-").isdigit() else None,
                "shown_first": "chosen" if choice == "a" else "rejected",
                "pair_id": pair["pair_id"],
                "prompt_index": pair["prompt_index"],
                "chosen_sample": pair["sample_a"] if choice == "a" else pair["sample_b"],
                "rejected_sample": pair["sample_b"] if choice == "a" else pair["sample_a"],
            }
        )
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ValueError(
            f"{path}: {len(problems)} rating row(s) cannot be read: {shown}. Fix them and run again."
        )
    counts["pairs"], counts["unrated"] = len(rows), len(plan) - len(rated)
    return rows, counts


def pair_confidence(ranking: GroupRanking, group: int, chosen: int, rejected: int) -> float:
    """2 P(chosen beats rejected) - 1, in [-1, 1]: P from the pairwise judge's direct verdict on the two
    (NaN if it could not judge them; negative when that verdict goes against the ranking by scores), or
    with a pointwise judge P = sigmoid(score difference), i.e. tanh(difference / 2)."""
    if ranking.prob is not None:
        return 2.0 * float(ranking.prob[group, chosen, rejected]) - 1.0
    difference = float(ranking.scores[group, chosen] - ranking.scores[group, rejected])
    return math.tanh(difference / 2.0)


def is_empty(response: Any) -> bool:
    """True for a response with no text (a blank string, or messages whose contents are all blank)."""
    if isinstance(response, str):
        return not response.strip()
    return not any(str(message.get("content") or "").strip() for message in response)


def build_pairs(
    prompts: list[Any],
    responses: list[Any],
    ranking: GroupRanking,
    mode: str,
    margin: float,
    min_confidence: float,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Preference pairs from ranked samples (`responses`: the k samples of each prompt consecutive).

    Returns the pair rows (prompt, chosen, rejected, chosen_score, rejected_score, confidence, prompt_index,
    chosen_sample, rejected_sample) and the counts of what was left out and why: `empty_samples` (samples
    with no text, left out before pairing: DPO cannot train on them), `ties` (candidate pairs whose scores
    are equal or responses identical; with best_worst, prompts whose samples all tie), `below_margin`
    (score difference <= margin), `below_confidence` (confidence < min_confidence, or not judged directly
    when min_confidence > 0; a negative confidence, where the judge's direct verdict contradicts the
    scores, never passes)."""
    P, k = ranking.scores.shape
    if len(prompts) != P or len(responses) != P * k:
        raise ValueError(
            f"Expected {P} prompts and {P * k} responses, got {len(prompts)} and {len(responses)}."
        )
    empty = torch.tensor([is_empty(r) for r in responses], dtype=torch.bool).reshape(P, k)
    counts = {
        "prompts": P,
        "empty_samples": int(empty.sum()),
        "candidates": 0,
        "ties": 0,
        "below_margin": 0,
        "below_confidence": 0,
        "pairs": 0,
    }
    rows: list[dict[str, Any]] = []
    scores = ranking.scores.masked_fill(empty, math.nan)  # an empty sample is never chosen nor rejected
    if mode == "best_worst":
        best, worst, has_pair = dataclasses.replace(ranking, scores=scores).best_worst()
        candidates = [
            (g, int(best[g]), int(worst[g])) if bool(has_pair[g]) else (g, None, None) for g in range(P)
        ]
    elif mode == "all":
        candidates = [
            (g, i, j)
            for g in range(P)
            for i in range(k)
            for j in range(i + 1, k)
            if not (empty[g, i] or empty[g, j])
        ]
    else:
        raise ValueError(f"Unknown pairs mode {mode!r}; use best_worst or all.")
    for g, i, j in candidates:
        counts["candidates"] += 1
        if i is None or j is None:
            counts["ties"] += 1
            continue
        a, b = float(scores[g, i]), float(scores[g, j])
        if math.isnan(a) or math.isnan(b) or a == b or responses[g * k + i] == responses[g * k + j]:
            counts["ties"] += 1
            continue
        chosen, rejected = (i, j) if a > b else (j, i)
        difference = abs(a - b)
        if difference <= margin:
            counts["below_margin"] += 1
            continue
        confidence = pair_confidence(ranking, g, chosen, rejected)
        if (min_confidence > 0 and not confidence >= min_confidence) or confidence < 0:  # NaN fails too
            counts["below_confidence"] += 1
            continue
        rows.append(
            {
                "prompt": prompts[g],
                "chosen": responses[g * k + chosen],
                "rejected": responses[g * k + rejected],
                "chosen_score": float(scores[g, chosen]),
                "rejected_score": float(scores[g, rejected]),
                "confidence": None if math.isnan(confidence) else confidence,
                "prompt_index": g,
                "chosen_sample": chosen,
                "rejected_sample": rejected,
            }
        )
    counts["pairs"] = len(rows)
    return rows, counts


def round_prompt_indices(num_prompts: int, per_round: int, round_number: int, seed: int) -> list[int]:
    """The prompts of round `round_number` (1-based): consecutive slices of one seeded permutation, so
    rounds use fresh prompts until all were used (then the order wraps around); 0 = all prompts."""
    if per_round == 0 or per_round >= num_prompts:
        return list(range(num_prompts))
    order = np.random.default_rng([seed, 7]).permutation(num_prompts)
    start = (round_number - 1) * per_round
    return [int(order[(start + i) % num_prompts]) for i in range(per_round)]


def trend(rounds: list[dict[str, Any]]) -> str:
    """One line: is the loop improving (the held-out reward rose every round), drifting, or mixed?"""
    key = "gold_reward" if all(r.get("gold_reward") is not None for r in rounds) else "judge_reward"
    values = [r[key] for r in rounds]
    if len(values) < 2:
        return f"{key}: only round 0 so far"
    steps = [b - a for a, b in zip(values, values[1:], strict=False)]
    shown = " -> ".join(f"{v:.3f}" for v in values)
    if all(s > 0 for s in steps):
        return f"improving: {key} rose every round ({shown})"
    if steps[-1] < 0:
        return f"drifting: {key} fell in the last round ({shown})"
    return f"mixed: {key} did not rise every round ({shown})"


# ---------------------------------------------------------------------------------------------
# The rounds


def _write_json(path: Path, value: Any) -> None:
    """Write strict JSON atomically (`atomic_path`), so a killed job leaves no half file."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(value, indent=2, allow_nan=False) + "\n")


class PracticeLoop:
    """Runs (or resumes) the rounds of one loop; `run()` returns the summary."""

    def __init__(self, config: LoopConfig) -> None:
        self.config = config
        self.out = Path(config.train.output_dir)
        check_model_path(config.model.model)
        if config.judge == HUMAN:
            if config.judge_options:
                raise ValueError(
                    f"--judge_options {config.judge_options}: people take no judge options; drop them."
                )
        else:
            check_judge_spec(config.judge, config.judge_options)
        self.device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = load_tokenizer(config.model.model, config.model.trust_remote_code)
        max_prompt = config.data.max_length - config.sampling.max_new_tokens
        prompts = load_prompts(
            self.tokenizer, config.data.dataset, config.data.dataset_split, max_prompt, config.data, "loop"
        )
        self.task = detect_task(config.data.dataset, config.task)
        if config.data.eval_dataset:
            self.prompts, self.eval_prompts = prompts, None
        else:  # hold out the last prompts of --dataset
            n = config.num_eval_prompts
            if len(prompts) <= n:
                raise ValueError(
                    f"--dataset {config.data.dataset} has {len(prompts)} prompts; without --eval_dataset the "
                    f"last --num_eval_prompts {n} are held out, which leaves none to train on. Pass "
                    "--eval_dataset or lower --num_eval_prompts."
                )
            self.prompts = PromptSet(prompts.prompts[:-n], prompts.ids[:-n], prompts.rows[:-n])
            self.eval_prompts = prompts.prompts[-n:]
        self.eval_judge = config.eval_judge or self._default_eval_judge()
        self.judge: Any = None  # loaded when a round first needs it
        self.monitor = HackingMonitor(HackingConfig(hacking_window=2))
        self.baselines: dict[str, Any] = {}  # round 0's held-out samples, measured once per run

    def _default_eval_judge(self) -> str:
        if self.config.judge != HUMAN and not is_pairwise_spec(self.config.judge):
            return self.config.judge
        if self.task is None:
            raise ValueError(
                f"--judge {self.config.judge} gives preferences, and the held-out evaluation needs a pointwise judge "
                "(scores for a win rate and a reward): pass --eval_judge gold or --eval_judge rm:PATH."
            )
        return "gold"

    # ----------------------------------------------------------------- state
    def _check_state(self) -> None:
        """A loop resumed in OUT must have the settings that made its finished rounds."""
        settings = {k: v for k, v in config_to_flat_dict(self.config).items() if k not in RESUME_SAFE}
        path = self.out / LOOP_STATE
        if path.exists() and not self.config.train.overwrite_output_dir:
            saved = json.loads(path.read_text())["settings"]
            changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
            if changed:
                detail = ", ".join(f"{k}: {saved.get(k)!r} -> {settings.get(k)!r}" for k in changed[:5])
                raise ValueError(
                    f"{self.out} holds a loop run with other settings ({detail}). Re-run it with the same settings "
                    "to resume it (only --rounds may grow), pass --overwrite_output_dir true to start over, or "
                    "choose another --output_dir."
                )
        elif path.exists():
            import shutil

            for child in self.out.glob("round-*"):
                shutil.rmtree(child)
        self.out.mkdir(parents=True, exist_ok=True)
        if self.eval_prompts is not None:  # the held-out prompts of this run, never an older run's
            with atomic_path(self.out / "eval_prompts.jsonl") as temporary:
                write_jsonl(temporary, ({"prompt": p} for p in self.eval_prompts))
        _write_json(path, {"settings": json_safe(settings)})
        save_config(self.config, self.out / "config.yaml", leave_out=RUN_CONTROL)

    def policy_of(self, round_number: int) -> str:
        """The policy after `round_number` rounds (round 0: --model)."""
        if round_number == 0:
            return self.config.model.model
        return str(self.out / f"round-{round_number}" / "train" / "final")

    # ----------------------------------------------------------------- steps
    def generate_and_rate(self, round_number: int, folder: Path) -> Path:
        """Samples, their scores and the pairs of one round (reused when a complete set is on disk)."""
        pairs_path = folder / "pairs.jsonl"
        if (folder / PROVENANCE_FILE).exists():
            logger.info("Round %d: reusing its dataset %s.", round_number, pairs_path)
            return pairs_path
        config, k = self.config, self.config.num_generations
        samples = self._sample(round_number)
        indices, prompts, texts, responses = (
            samples.indices,
            samples.prompts,
            samples.texts,
            samples.responses,
        )
        policy_path, seed, rollout = samples.policy, samples.seed, samples.rollout
        logger.info("Round %d: rating %d samples with %s.", round_number, len(texts), config.judge)
        ranking = rank_groups(self.judge_for(round_number), prompts, responses, k)
        rows, counts = build_pairs(
            prompts, responses, ranking, config.pairs, config.margin, config.min_confidence
        )
        if not rows:  # nothing written: a rerun with other --margin / --min_confidence may go on
            raise ValueError(
                f"Round {round_number}: no preference pair could be built ({counts}); every prompt's samples tied "
                "or were filtered out. Raise --num_generations or --temperature, or lower --margin/--min_confidence "
                "(those two may change when the loop is resumed)."
            )
        provenance = {"round": round_number, "policy": policy_path, "judge": config.judge, "seed": seed}
        for row in rows:
            row["prompt_index"] = indices[row["prompt_index"]]
            row.update(provenance)
        folder.mkdir(parents=True, exist_ok=True)
        ended = rollout.ended.tolist()
        write_jsonl(
            folder / "samples.jsonl",
            (
                {
                    "prompt": prompts[i // k],
                    "prompt_index": indices[i // k],
                    "sample": i % k,
                    "response": text,
                    "score": json_safe(float(ranking.scores[i // k, i % k])),
                    "ended": bool(ended[i]),
                }
                for i, text in enumerate(texts)
            ),
        )
        write_jsonl(pairs_path, rows)
        judge_stats = ranking.verdicts.summary() if ranking.verdicts is not None else {}
        _write_json(
            folder / PROVENANCE_FILE,
            json_safe(
                {
                    **provenance,
                    "num_generations": k,
                    "prompts": len(prompts),
                    "prompt_indices": indices,
                    "sampling": dataclasses.asdict(config.sampling),
                    "pairs_mode": config.pairs,
                    "margin": config.margin,
                    "min_confidence": config.min_confidence,
                    "counts": counts,
                    "judge_stats": judge_stats,
                    "mean_score": float(torch.nanmean(ranking.scores)),
                }
            ),
        )
        left_out = counts["candidates"] - counts["pairs"] + counts["empty_samples"]
        (logger.warning if left_out else logger.info)(
            "Round %d: %d pairs from %d prompts (left out: %d empty samples, %d ties, %d below the margin, "
            "%d below the confidence).",
            round_number,
            counts["pairs"],
            len(prompts),
            counts["empty_samples"],
            counts["ties"],
            counts["below_margin"],
            counts["below_confidence"],
        )
        return pairs_path

    def _sample(self, round_number: int) -> _RoundSamples:
        """`num_generations` samples of each of this round's prompts from the previous round's policy."""
        config, k = self.config, self.config.num_generations
        policy_path = self.policy_of(round_number - 1)
        indices = round_prompt_indices(
            len(self.prompts), config.prompts_per_round, round_number, config.train.seed
        )
        prompts = [self.prompts.prompts[i] for i in indices]
        seed = int(np.random.SeedSequence([config.train.seed, round_number]).generate_state(1)[0] % 2**31)
        logger.info(
            "Round %d: sampling %d responses to each of %d prompts from %s.",
            round_number,
            k,
            len(prompts),
            policy_path,
        )
        policy = load_policy(dataclasses.replace(config.model, model=policy_path, use_peft=False))
        torch.nn.Module.to(policy, torch.device(self.device))
        rollout = TransformersBackend(policy, self.tokenizer).generate(
            [self.prompts.ids[i] for i in indices], config.sampling, seed, k, prompt_keys=indices
        )
        del policy
        texts = [str(self.tokenizer.decode(r, skip_special_tokens=True)) for r in rollout.response_ids]
        responses = response_completions(
            [p for p in prompts for _ in range(k)], texts
        )  # chat prompts: messages
        return _RoundSamples(indices, prompts, texts, responses, policy_path, seed, rollout)

    def human_round(self, round_number: int, folder: Path) -> Path | None:
        """--judge human: the first run writes the round's pairs for people to rate (TO_RATE_FILE) and stops
        (None); once the rated file (ratings.jsonl or ratings.csv) is in the round's folder, the run after reads
        it into the round's pairs, audits the ratings into `audit/` and goes on (the pairs' path)."""
        pairs_path = folder / "pairs.jsonl"
        if (folder / PROVENANCE_FILE).exists():
            logger.info("Round %d: reusing its dataset %s.", round_number, pairs_path)
            return pairs_path
        plan_path = folder / RATING_PLAN_FILE
        ratings = [
            path for path in (folder / f"{RATINGS_STEM}.{ext}" for ext in ("jsonl", "csv")) if path.exists()
        ]
        if not plan_path.exists():
            samples = self._sample(round_number)
            rng = np.random.default_rng(np.random.SeedSequence([self.config.train.seed, round_number, 5]))
            plan, to_rate = human_rating_plan(
                samples.prompts, samples.texts, self.config.num_generations, round_number, rng
            )
            for row in plan:
                row["prompt_index"] = samples.indices[row["prompt_index"]]
            folder.mkdir(parents=True, exist_ok=True)
            write_jsonl(folder / TO_RATE_FILE, to_rate)
            _write_json(
                plan_path,
                {"round": round_number, "policy": samples.policy, "seed": samples.seed, "pairs": plan},
            )
        if not ratings:
            logger.warning(
                "Round %d: %s holds the pairs to rate. Fill each row's 'choice' (a, b or tie; one row per rating, "
                "several raters may rate a pair) with 'annotator' and 'annotator_group', save the file as %s (JSONL "
                "or CSV), and run the same command again to go on.",
                round_number,
                folder / TO_RATE_FILE,
                folder / f"{RATINGS_STEM}.jsonl",
            )
            return None
        if len(ratings) > 1:
            raise ValueError(
                f"{folder} holds two rated files, {ratings[0].name} and {ratings[1].name}; keep the one "
                "to train on and remove the other."
            )
        plan = json.loads(plan_path.read_text())
        rows, counts = read_human_ratings(str(ratings[0]), plan["pairs"])
        if not rows:
            raise ValueError(f"{ratings[0]}: every rating is a tie ({counts}); there is nothing to train on.")
        provenance = {"round": round_number, "policy": plan["policy"], "judge": HUMAN, "seed": plan["seed"]}
        write_jsonl(pairs_path, ({**row, **provenance} for row in rows))
        from preftune.feedback.audit import run_audit
        from preftune.feedback.config import AuditConfig

        audit = run_audit(AuditConfig(dataset=str(pairs_path), output_dir=str(folder / "audit")))
        warnings = [flag for flag in audit.get("flags", []) if flag.get("severity") == "warning"]
        _write_json(
            folder / PROVENANCE_FILE,
            json_safe(
                {
                    **provenance,
                    "ratings_file": str(ratings[0]),
                    "counts": counts,
                    "judge_stats": {},
                    "mean_score": float("nan"),
                    "audit_warnings": [flag["finding"] for flag in warnings],
                }
            ),
        )
        logger.info(
            "Round %d: %d pairs from %d ratings (%d ties left out); the audit (%s) warns of %s.",
            round_number,
            counts["pairs"],
            counts["ratings"],
            counts["ties"],
            folder / "audit",
            [flag["finding"] for flag in warnings] or "nothing",
        )
        return pairs_path

    def judge_for(self, round_number: int) -> Any:
        """The judge (loaded once). The simulated panel draws its noise from a generator seeded per round,
        so a resumed round gets the verdicts the uninterrupted run got."""
        config = self.config
        panel = config.judge.partition(":")[0] == "panel"
        if self.judge is None or panel:
            options = {
                "device": self.device,
                "batch_size": config.judge_batch_size,
                "cache_dir": str(self.out / "judge-cache"),
            }
            if panel:
                options["seed"] = int(
                    np.random.SeedSequence([config.train.seed, round_number, 3]).generate_state(1)[0]
                )
            self.judge = load_judge(config.judge, pairwise=True, **{**options, **config.judge_options})
        return self.judge

    def tune(self, round_number: int, pairs: Path, folder: Path) -> str:
        """DPO from the previous round's policy on this round's pairs (continues from a checkpoint)."""
        final = folder / "train" / "final"
        if (folder / "train" / "summary.json").exists() and final.is_dir():
            logger.info("Round %d: its DPO run is finished; reusing %s.", round_number, final)
            return str(final)
        reference = self.config.model.model if self.config.reference == "initial" else None
        dpo = self.config.dpo_config(
            self.policy_of(round_number - 1), str(pairs), reference, folder / "train"
        )
        if dpo.train.resume:
            logger.info("Round %d: continuing its DPO run from its newest checkpoint.", round_number)
        DPOTrainer(dpo).train()
        return str(final)

    def evaluate(self, round_number: int, folder: Path) -> dict[str, Any]:
        """Held-out metrics of the round's policy against round 0 (`preftune eval --policy`)."""
        config = self.config
        name = f"round-{round_number}"
        if self.eval_prompts is None:
            prompts_file, split = str(config.data.eval_dataset), config.data.eval_dataset_split or "train"
        else:
            prompts_file, split = str(self.out / "eval_prompts.jsonl"), "train"  # written by _check_state
        eval_config = PolicyEvalConfig(
            policy=[f"{name}={self.policy_of(round_number)}"],
            reference=config.model.model,
            prompts=prompts_file,
            prompts_split=split,
            judge=self.eval_judge,
            samples_per_prompt=config.eval_samples_per_prompt,
            max_new_tokens=config.sampling.max_new_tokens,
            temperature=config.sampling.temperature,
            seed=config.train.seed,
            max_prompts=config.num_eval_prompts,
        )
        data = DataConfig(dataset=prompts_file, max_length=config.data.max_length)
        flat = run_policy_eval(
            eval_config,
            str(folder / "eval"),
            data,
            self.task or "none",
            self.device,
            config.judge_batch_size,
            self.baselines,
        )
        prefix = f"policy/{name}/"
        metrics = {key[len(prefix) :]: value for key, value in flat.items() if key.startswith(prefix)}
        keep = (
            "gold_reward",
            "gold_reward_ci",
            "judge_reward",
            "judge_reward_ci",
            "win_rate",
            "win_rate_ci",
            "lc_win_rate",
            "kl",
            "kl_se",
            "length",
            "distinct_2",
        )
        return {
            "round": round_number,
            "policy": self.policy_of(round_number),
            **{key: metrics[key] for key in keep if key in metrics},
            "example": metrics["examples"][0],
        }

    # ----------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        start = time.perf_counter()
        self._check_state()
        rounds: list[dict[str, Any]] = []
        for round_number in range(self.config.rounds + 1):
            folder = self.out / f"round-{round_number}"
            done = folder / ROUND_FILE
            if done.exists():
                logger.info("Round %d is finished (%s); skipping it.", round_number, done)
                rounds.append(json.loads(done.read_text()))
                self._observe(rounds[-1])
                continue
            logger.info("loop: round %d of %d", round_number, self.config.rounds)
            folder.mkdir(parents=True, exist_ok=True)
            record: dict[str, Any] = {}
            if round_number > 0:
                if self.config.judge == HUMAN:
                    waiting = self.human_round(round_number, folder)
                    if waiting is None:  # people rate the round's pairs; the next run goes on from here
                        summary = self._write_summary(rounds, time.perf_counter() - start)
                        return {**summary, "waiting_for_ratings": str(folder / TO_RATE_FILE)}
                    pairs = waiting
                else:
                    pairs = self.generate_and_rate(round_number, folder)
                self.tune(round_number, pairs, folder)
                provenance = json.loads((folder / PROVENANCE_FILE).read_text())
                record = {
                    "pairs": provenance["counts"]["pairs"],
                    "train_judge_score": provenance["mean_score"],
                    **{
                        f"judge_{k}": v
                        for k, v in provenance["judge_stats"].items()
                        if k in ("could_not_judge", "position_consistency")
                    },
                }
                if "audit_warnings" in provenance:
                    record["audit_warnings"] = provenance["audit_warnings"]
            result = {**self.evaluate(round_number, folder), **record}
            _write_json(done, json_safe(result))
            rounds.append(result)
            self._observe(result)
            self._write_summary(rounds, time.perf_counter() - start)
        return self._write_summary(rounds, time.perf_counter() - start)

    def _observe(self, result: dict[str, Any]) -> None:
        """The reward-hacking monitor over rounds: judge reward (proxy) against gold, length and KL."""
        self.monitor.observe(
            Observation(
                result["round"],
                result["judge_reward"],
                result.get("gold_reward"),
                result["length"],
                result["kl"],
            )
        )

    def _write_summary(self, rounds: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
        summary = {
            "rounds": rounds,
            "trend": trend(rounds),
            "judge": self.config.judge,
            "eval_judge": self.eval_judge,
            "reference": self.config.reference,
            "hacking": self.monitor.summary(),
            "wall_seconds": seconds,
        }
        _write_json(self.out / "summary.json", json_safe(summary))
        (self.out / "report.md").write_text(render_markdown(summary))
        gold = all(r.get("gold_reward") is not None for r in rounds)
        methods = {
            f"round-{r['round']}": {
                "gold_reward": r["gold_reward"] if gold else r["judge_reward"],
                "gold_reward_ci": r["gold_reward_ci"] if gold else r["judge_reward_ci"],
                "proxy_reward": r["judge_reward"],
                "win_rate_vs_sft": r.get("win_rate"),
                "kl": r["kl"],
                "length": r["length"],
            }
            for r in rounds
        }
        write_report(
            {"methods": methods, "hacking": summary["hacking"]},
            self.out,
            reward_label="gold reward" if gold else "judge reward",
        )
        return summary


def render_markdown(summary: dict[str, Any]) -> str:
    """The round-by-round table of report.md (and the terminal)."""
    rounds = summary["rounds"]
    gold = all(r.get("gold_reward") is not None for r in rounds)

    def cell(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    header = [
        "round",
        *(["gold reward"] if gold else []),
        f"judge reward ({summary['eval_judge']})",
        "win rate vs round 0",
        "KL to round 0",
        "length",
        "pairs",
    ]
    lines = [
        f"# Practice loop: {len(rounds) - 1} round(s), judge {summary['judge']}",
        "",
        f"Trend: {summary['trend']}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for r in rounds:
        values = [
            r["round"],
            *([r["gold_reward"]] if gold else []),
            r["judge_reward"],
            r.get("win_rate"),
            r["kl"],
            r["length"],
            r.get("pairs"),
        ]
        lines.append("| " + " | ".join(cell(v) for v in values) + " |")
    hacking = summary["hacking"]
    lines += [
        "",
        f"Reward hacking over rounds: {'FLAGGED' if hacking['flagged'] else 'not flagged'}. "
        f"{hacking['evidence']}",
        "",
    ]
    return "\n".join(lines)


def run_loop(config: LoopConfig) -> dict[str, Any]:
    """The `preftune loop` command (module docstring)."""
    return PracticeLoop(config).run()
