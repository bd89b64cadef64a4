"""preftune from Python, end to end: a model and a `datasets.Dataset` in, a reward model, a DPO policy and
an evaluation out. Run it as a script (about a minute on 2 CPU cores with the built-in tiny model):

    python docs/examples/python_api.py                        # tiny random-init model, synthetic world
    python docs/examples/python_api.py --model models/smollm2 \
        --pairs ../shared/data/hh-rlhf-harmless/train.jsonl.gz --dialogue_format hh --steps 20

Every step takes objects; the trainers write their checkpoints, metrics and final/ under --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import datasets
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from preftune import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer, SFTConfig, SFTTrainer, make_config
from preftune.data import load_rows
from preftune.eval.command import run_eval
from preftune.eval.config import EvalConfig

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--model", default=None, help="A causal LM folder; default: a tiny model built here.")
parser.add_argument("--pairs", default=None, help="Preference pairs; default: the synthetic world's.")
parser.add_argument("--dialogue_format", default="text", help="'hh' for HH-RLHF transcripts.")
parser.add_argument("--steps", type=int, default=40, help="Optimizer steps of the reward model and DPO.")
parser.add_argument("--out", default="runs/python-api", help="Folder of the runs.")
args = parser.parse_args()
out = Path(args.out)

# 1. Data and a model. Without --model, the synthetic world (preftune synth) and a tiny model trained briefly
#    by SFT on its demonstrations stand in, so the example runs in seconds with no download.
if args.model is None:
    from preftune.models.tiny import make_tiny, texts_of_row
    from preftune.tasks import SynthConfig, write_task

    files = write_task(SynthConfig(out=str(out / "data")))
    texts = (text for row in load_rows(str(files["sft"])).rows for text in texts_of_row(row))
    base = make_tiny(texts, out / "tiny")
    demonstrations = datasets.Dataset.from_list(load_rows(str(files["sft"])).rows)
    sft = SFTTrainer(
        args=make_config(SFTConfig, output_dir=str(out / "sft"), max_steps=150, learning_rate=3e-3,
                         per_device_train_batch_size=32, max_length=128, disable_tqdm=True),
        model=AutoModelForCausalLM.from_pretrained(base),
        processing_class=AutoTokenizer.from_pretrained(base),
        train_dataset=demonstrations,
    )  # fmt: skip
    sft.train()
    model_path, pairs_path, prompts = (
        str(out / "sft" / "final"),
        str(files["pairs"]),
        str(files["eval_prompts"]),
    )
else:
    model_path, pairs_path, prompts = args.model, args.pairs, args.pairs
pairs = datasets.Dataset.from_list(load_rows(pairs_path).rows)
train, held_out = (
    pairs.select(range(len(pairs) * 3 // 4)),
    pairs.select(range(len(pairs) * 3 // 4, len(pairs))),
)
tokenizer = AutoTokenizer.from_pretrained(model_path)
tiny = args.model is None  # the tiny model learns at larger learning rates than a pretrained one
common = {"max_length": 256, "per_device_train_batch_size": 16, "max_steps": args.steps, "skip_invalid": True,
          "dialogue_format": args.dialogue_format, "logging_steps": 5, "disable_tqdm": True}  # fmt: skip

# 2. A reward model: any sequence classifier object, trained with the Bradley-Terry loss.
classifier = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1)
classifier.config.pad_token_id = tokenizer.pad_token_id
reward = RewardTrainer(
    args=make_config(
        RewardConfig, output_dir=str(out / "rm"), learning_rate=3e-3 if tiny else 1e-4, **common
    ),
    model=classifier,
    processing_class=tokenizer,
    train_dataset=train,
    eval_dataset=held_out,
)
reward_summary = reward.train()
print("reward model, held-out accuracy:", reward_summary["final_metrics"].get("eval/rewards/accuracies"))

# 3. DPO from the same model; its reference is a frozen copy of the object taken before training.
policy = AutoModelForCausalLM.from_pretrained(model_path)
dpo = DPOTrainer(
    args=make_config(DPOConfig, output_dir=str(out / "dpo"), beta=0.1, learning_rate=5e-4 if tiny else 5e-6,
                     **common),
    model=policy,
    processing_class=tokenizer,
    train_dataset=train,
    eval_dataset=held_out,
)  # fmt: skip
dpo_summary = dpo.train()
print("DPO, held-out reward accuracy:", dpo_summary["final_metrics"].get("eval/rewards/accuracies"))

# 4. Evaluate the DPO policy against its starting point under the reward model: reward and win rate with
#    95% intervals, KL to the start, length; report.html shows samples side by side.
evaluation = run_eval(make_config(
    EvalConfig, policy=[f"dpo={out / 'dpo' / 'final'}"], reference=model_path, prompts=prompts,
    prompts_split="train", dialogue_format=args.dialogue_format, skip_invalid=True,
    judge=f"rm:{out / 'rm' / 'final'}", max_prompts=32, samples_per_prompt=2, max_new_tokens=32,
    output_dir=str(out / "eval"),
))  # fmt: skip
keys = ("judge_reward", "judge_reward_ci", "win_rate", "win_rate_ci", "kl", "length")
print(json.dumps({key: evaluation[f"policy/dpo/{key}"] for key in keys}, indent=2))
