#!/usr/bin/env bash
# Issue #20 point 3: a LoRA that teaches the text demo's small Stable Diffusion handwritten digits.
# Needs the text demo's pipeline and Fashion-MNIST judge (`make demo-text`, output/demo-text/) and MNIST (`make data`).
# Usage: Benchmarks/lora-digits/run.sh [DEMO_DIR] [OUTPUT_DIR]   (from the repository root, after `make release`)
set -euo pipefail
demo=${1:-output/demo-text}
out=${2:-output/lora-digits}
diffuse=.build/release/diffuse
mkdir -p "$out"

# 0. train-text-to-image --from builds a DDPMScheduler from the pipeline's scheduler_config.json, and the demo saves
#    DPMSolverMultistepScheduler with "variance_type": null, which DDPMScheduler refuses. Until the trainer defaults it,
#    fine-tune a copy whose scheduler says "fixed_small" (no effect on DPM-Solver++; the weights are the same files).
if [ ! -f "$out/base-pipeline/model_index.json" ]; then
    mkdir -p "$out/base-pipeline/scheduler"
    for part in model_index.json text_encoder tokenizer unet vae; do cp -r "$demo/pipeline/$part" "$out/base-pipeline/"; done
    sed 's/"variance_type": null/"variance_type": "fixed_small"/' "$demo/pipeline/scheduler/scheduler_config.json" \
        > "$out/base-pipeline/scheduler/scheduler_config.json"
fi

# 1. The judge: a clean MNIST classifier (grey 28×28), the text demo's Fashion judge recipe on MNIST.
[ -f "$out/judge/model.safetensors" ] || $diffuse train-classifier --dataset mnist --clean --block-out-channels 24,48,96 \
    --steps 1200 --seed 11 --evaluation-count 10000 --output-dir "$out/judge"

# 2a. LoRA on the UNet only: rank 8 on to_q/to_k/to_v/to_out.0, 800 steps of 64 on the first 20,000 digits.
[ -f "$out/lora-unet/pytorch_lora_weights.safetensors" ] || $diffuse train-text-to-image --from "$out/base-pipeline" \
    --dataset captioned-mnist --max-train-samples 20000 --rank 8 \
    --train-batch-size 64 --max-train-steps 800 --learning-rate 1e-3 --lr-scheduler cosine --lr-warmup-steps 50 \
    --checkpointing-steps 200 --checkpoints-total-limit 2 --output-dir "$out/lora-unet" \
    --validation-prompt "a handwritten digit three" --validation-prompt "a handwritten digit seven" \
    --num-validation-images 4 --validation-guidance-scale 3

# 2b. LoRA on the UNet and the text encoder (q/k/v/out_proj): rank 8, 1,200 steps of 64 on all 60,000 digits, lr 2e-3.
[ -f "$out/lora-text/pytorch_lora_weights.safetensors" ] || $diffuse train-text-to-image --from "$out/base-pipeline" \
    --dataset captioned-mnist --rank 8 --train-text-encoder-lora \
    --train-batch-size 64 --max-train-steps 1200 --learning-rate 2e-3 --lr-scheduler cosine --lr-warmup-steps 50 \
    --checkpointing-steps 300 --checkpoints-total-limit 2 --output-dir "$out/lora-text" \
    --validation-prompt "a handwritten digit three" --validation-prompt "a handwritten digit seven" \
    --num-validation-images 4 --validation-guidance-scale 3

# 3. The evaluations: digits before and after, the Fashion prompts after beside the demo's evaluation.json.
for lora in lora-unet lora-text; do
    $diffuse evaluate-lora-digits "$demo/pipeline" --lora "$out/$lora/pytorch_lora_weights.safetensors" \
        --judge "$out/judge" --fashion-judge "$demo/judge" --fashion-baseline "$demo/evaluation.json" \
        --output-dir "$out/evaluation-$lora"
done
