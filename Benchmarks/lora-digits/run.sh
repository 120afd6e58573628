#!/usr/bin/env bash
# Issue #20 point 3: a LoRA that teaches the text demo's small Stable Diffusion handwritten digits.
# Needs the text demo's pipeline and Fashion-MNIST judge (`make demo-text`, output/demo-text/) and MNIST (`make data`).
# Usage: Benchmarks/lora-digits/run.sh [DEMO_DIR] [OUTPUT_DIR]   (from the repository root, after `make release`)
set -euo pipefail
demo=${1:-output/demo-text}
out=${2:-output/lora-digits}
diffuse=.build/release/diffuse
mkdir -p "$out"

# 1. The judge: a clean MNIST classifier (grey 28×28), as the Fashion judge of the text demo but on MNIST.
[ -f "$out/judge/model.safetensors" ] || $diffuse train-classifier --dataset mnist --clean --block-out-channels 24,48,96 \
    --steps 1200 --seed 11 --evaluation-count 10000 --output-dir "$out/judge"

# 2. The LoRA: rank 8 on the UNet's to_q/to_k/to_v/to_out.0, on 20,000 captioned MNIST digits ("a handwritten digit seven").
[ -f "$out/lora/pytorch_lora_weights.safetensors" ] || $diffuse train-text-to-image --from "$demo/pipeline" \
    --dataset captioned-mnist --max-train-samples 20000 --rank 8 \
    --train-batch-size 64 --max-train-steps 800 --learning-rate 1e-3 --lr-scheduler cosine --lr-warmup-steps 50 \
    --checkpointing-steps 200 --checkpoints-total-limit 2 --output-dir "$out/lora" \
    --validation-prompt "a handwritten digit three" --validation-prompt "a handwritten digit seven" \
    --num-validation-images 4 --validation-guidance-scale 3 ${RESUME:+--resume-from-checkpoint latest}

# 3. The evaluation: digits before and after, the Fashion prompts after beside the demo's evaluation.json.
$diffuse evaluate-lora-digits "$demo/pipeline" --lora "$out/lora/pytorch_lora_weights.safetensors" \
    --judge "$out/judge" --fashion-judge "$demo/judge" --fashion-baseline "$demo/evaluation.json" --output-dir "$out/evaluation"
