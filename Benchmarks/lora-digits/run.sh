#!/usr/bin/env bash
# Issue #20 point 3: a LoRA that teaches the text demo's small Stable Diffusion handwritten digits, and what it costs the
# demo's own Fashion prompts. Needs the text demo's pipeline and Fashion-MNIST judge (`make demo-text`,
# output/demo-text/) and MNIST (`make data`).
# Usage: Benchmarks/lora-digits/run.sh [DEMO_DIR] [OUTPUT_DIR]   (from the repository root, after `make release`)
# The current runs (Benchmarks/lora-digits.md, first section); OLDER=1 also runs the older section's two LoRAs.
set -euo pipefail
demo=${1:-output/demo-text}
out=${2:-output/lora-digits}
diffuse=.build/release/diffuse
mkdir -p "$out"

# 1. The judge: a clean MNIST classifier (grey 28×28), the text demo's Fashion judge recipe on MNIST.
[ -f "$out/judge/model.safetensors" ] || $diffuse train-classifier --dataset mnist --clean --block-out-channels 24,48,96 \
    --steps 1200 --seed 11 --evaluation-count 10000 --output-dir "$out/judge"

# 2. UNet + text-encoder LoRAs, rank 8, 800 steps of 64, lr 2e-3: on the digits only, and on the digits mixed half and
#    half with the demo's own captioned tinted Fashion-MNIST (taken in turn; the demo's held-out pairs left out).
lora() {  # lora NAME DATASET [FLAGS…]
    local name=$1 dataset=$2; shift 2
    [ -f "$out/$name/pytorch_lora_weights.safetensors" ] || $diffuse train-text-to-image --from "$demo/pipeline" \
        --dataset "$dataset" "$@" --rank 8 --train-text-encoder-lora \
        --train-batch-size 64 --learning-rate 2e-3 --lr-scheduler cosine --lr-warmup-steps 50 \
        --checkpointing-steps 200 --checkpoints-total-limit 2 --output-dir "$out/$name" \
        --validation-prompt "a handwritten digit three" --validation-prompt "a handwritten digit seven" \
        --num-validation-images 4 --validation-guidance-scale 3
}
lora lora-digits-800 captioned-mnist --max-train-steps 800
lora lora-mixed-800 captioned-mnist+captioned-tinted-fashion-mnist --held-out-demo-pairs --max-train-steps 800
lora lora-digits-1200 captioned-mnist --max-train-steps 1200   # (a′): the older LoRA 2's length
lora lora-mixed-1200 captioned-mnist+captioned-tinted-fashion-mnist --held-out-demo-pairs --max-train-steps 1200   # (b′)

# 3. The evaluations: digits before and after, the Fashion prompts after beside the demo's evaluation.json;
#    the digits-only LoRA also at scale 0.5.
evaluate() {  # evaluate NAME [SCALE]
    local name=$1 scale=${2:-}
    $diffuse evaluate-lora-digits "$demo/pipeline" --lora "$out/$name/pytorch_lora_weights.safetensors${scale:+:$scale}" \
        --judge "$out/judge" --fashion-judge "$demo/judge" --fashion-baseline "$demo/evaluation.json" \
        --output-dir "$out/evaluation-$name${scale:+-scale-$scale}"
}
evaluate lora-mixed-800
evaluate lora-digits-800
evaluate lora-digits-800 0.5
evaluate lora-digits-1200
evaluate lora-mixed-1200

# The older section (demo without noise offset, Zen 4): a UNet-only LoRA (lr 1e-3, first 20,000 digits) and the
# UNet + text-encoder LoRA at 1,200 steps.
if [ "${OLDER:-0}" = 1 ]; then
    [ -f "$out/lora-unet/pytorch_lora_weights.safetensors" ] || $diffuse train-text-to-image --from "$demo/pipeline" \
        --dataset captioned-mnist --max-train-samples 20000 --rank 8 \
        --train-batch-size 64 --max-train-steps 800 --learning-rate 1e-3 --lr-scheduler cosine --lr-warmup-steps 50 \
        --checkpointing-steps 200 --checkpoints-total-limit 2 --output-dir "$out/lora-unet" \
        --validation-prompt "a handwritten digit three" --validation-prompt "a handwritten digit seven" \
        --num-validation-images 4 --validation-guidance-scale 3
    lora lora-text captioned-mnist --max-train-steps 1200
    evaluate lora-unet
    evaluate lora-text
fi
