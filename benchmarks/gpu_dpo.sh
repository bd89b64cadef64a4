#!/usr/bin/env bash
# DPO on one GPU in bf16, side by side: preftune (prefix sharing, and padded) against TRL 1.16 (default, and
# with precomputed reference log-probs), on a random-init model with a real checkpoint's shape and HH-RLHF
# pairs. The prepared device check of issue 14; at most 10 minutes on an H100. It prints the device, and
# writes the tables and JSON under $OUT (or runs/gpu_dpo).
#
#   bash benchmarks/gpu_dpo.sh                                  # on the GPU machine, from the repository root
#
# The machine has no network and receives only the repository, so the HH pairs and a TRL 1.16 wheel travel in
# an ignored folder, prepared here before the call (and named in the device call's `carry`):
#
#   mkdir -p .device && echo /.device/ >> .git/info/exclude
#   cp ../shared/data/hh-rlhf-harmless/train.jsonl.gz .device/ && pip download trl==1.16.0 --no-deps -d .device
#
# TRL is installed there without dependencies (torch and transformers are the machine's). TRL 1.16 turns
# padding_free=True back to False with a warning ("temporarily unavailable"), so its padding-free setting
# cannot be timed; its two timed setups are its default and precompute_ref_log_probs. Last, a smoke test of
# preftune's FSDP2 path on CUDA in one process (bf16, accelerate's FSDP2 mixed precision), 8 DPO steps on the
# Qwen2.5-0.5B shape: its last log lines and summary. ZeRO-3 is not run: preftune refuses DeepSpeed
# (docs/architecture.md), and a smoke test of a refusal measures nothing.
set -euo pipefail
out="${OUT:-runs/gpu_dpo}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
    | tee -a "$out/device.txt"
python -c "import trl" 2>/dev/null || pip install --no-deps .device/trl-1.16.0-*.whl
pip install --no-deps -e . > /dev/null
for shape in smollm2-135m qwen2.5-0.5b; do  # models and worker logs in /tmp; tables and JSON in $out
    timeout 240 python benchmarks/dpo_vs_trl.py --shape "$shape" --data .device/train.jsonl.gz --bf16 --padded \
        --num_rows 1200 --num_pairs 512 --batch_size 8 --max_length 1024 --learning_rate 1e-5 \
        --workdir "/tmp/gpu_dpo/$shape" --out "$out/$shape.json" | tee "$out/$shape.txt"
done
w=/tmp/gpu_dpo/qwen2.5-0.5b
timeout 120 python -m accelerate.commands.launch --use_fsdp --fsdp_version 2 --num_processes 1 --num_machines 1 \
    --mixed_precision bf16 --dynamo_backend no -m preftune.cli dpo --model "$w/policy" \
    --dataset "$w/train_preftune.jsonl" --max_steps 8 --per_device_train_batch_size 8 --max_length 1024 \
    --learning_rate 1e-5 --bf16 true --logging_steps 1 --disable_tqdm true --overwrite_output_dir true \
    --output_dir /tmp/gpu_dpo/fsdp2 2>&1 | tail -5 | tee "$out/fsdp2_smoke.txt"
cp /tmp/gpu_dpo/fsdp2/summary.json "$out/fsdp2_summary.json"
