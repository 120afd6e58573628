#!/usr/bin/env bash
# The four measurements of the guidance issue (#7), rerunnable:
#   Benchmarks/guidance-measurements.sh train     trains the models (≈ 40 CPU-minutes on 2 cores)
#   Benchmarks/guidance-measurements.sh measure   samples and measures (≈ 15 minutes); prints the tables
#   (or one table: color, classifier, cfg)
# Environment: DIFFUSE (the binary, default .build/release/diffuse), OUT (default output),
# COUNT (samples per setting, default 100), STEPS (DDIM steps, default 25).
# The golden comparison with PyTorch (measurement 4) is the test GuidanceGoldenTests
# (Scripts/make-guidance-goldens writes its fixtures): swift test --filter GuidanceGolden
set -euo pipefail
DIFFUSE=${DIFFUSE:-.build/release/diffuse}
OUT=${OUT:-output}
COUNT=${COUNT:-100}
STEPS=${STEPS:-25}
COLOR=${COLOR:-'#1AE680'}          # the notes' target (0.1, 0.9, 0.5)
COLOR_SCALES=${COLOR_SCALES:-"3 10 30"}   # 100 already paints whole images the colour; 1000 overshoots
RESULTS=$OUT/guidance-bench
mkdir -p "$RESULTS"

train() {
    # 1. An unconditional RGB model: Fashion-MNIST, each image tinted with its own random
    #    foreground and background colour (dataset tinted-fashion-mnist), the small preset.
    DIFFUSE_NUM_THREADS=1 $DIFFUSE train --model small --dataset tinted-fashion-mnist --image-size 28 \
        --max-train-steps 400 --train-batch-size 64 --learning-rate 2e-3 --lr-scheduler cosine --lr-warmup-steps 40 \
        --beta-schedule squaredcos_cap_v2 --use-ema --ema-power 0.75 --checkpointing-steps 0 --eval-batch-size 16 \
        --eval-inference-steps 25 --output-dir "$OUT/rgb" --overwrite-output-dir --no-progress > "$OUT/rgb.log" 2>&1 &
    # 3. The class-conditional Fashion-MNIST model of `make demo` (its null class is the unconditional model of 2).
    DIFFUSE_NUM_THREADS=1 $DIFFUSE demo --no-progress > "$OUT/demo.log" 2>&1 &
    # 2./3. The judges: clean-image classifiers, trained independently (other widths, other seeds, no noise).
    #    judge-fashion-strong (88.7% test accuracy) is the one the tables report; judge-fashion (78.9%) the second column.
    DIFFUSE_NUM_THREADS=1 $DIFFUSE train-classifier --dataset fashion-mnist --clean --block-out-channels 16,32,64 \
        --steps 400 --seed 7 --output-dir "$OUT/judge-fashion" --log-every 100 > "$OUT/judge-fashion.log" 2>&1 &
    DIFFUSE_NUM_THREADS=1 $DIFFUSE train-classifier --dataset fashion-mnist --clean --block-out-channels 24,48,96 \
        --steps 1200 --seed 11 --learning-rate 2e-3 --output-dir "$OUT/judge-fashion-strong" --log-every 200 \
        > "$OUT/judge-fashion-strong.log" 2>&1 &
    # 2. The noise-aware classifier, on the demo's noise schedule (squaredcos_cap_v2).
    DIFFUSE_NUM_THREADS=1 $DIFFUSE train-classifier --dataset fashion-mnist --beta-schedule squaredcos_cap_v2 \
        --block-out-channels 32,64,64 --steps 500 --output-dir "$OUT/classifier-fashion" --log-every 100 \
        > "$OUT/classifier-fashion.log" 2>&1 &
    wait
    tail -n 3 "$OUT/judge-fashion.log" "$OUT/classifier-fashion.log"
}

# Runs `diffuse sample` under /usr/bin/time; appends "seconds peak_rss_mb" to $RESULTS/NAME.time.
timed_sample() {
    local name=$1; shift
    /usr/bin/time -f "%e %M" -o "$RESULTS/$name.time" $DIFFUSE sample "$@" --no-progress \
        --save-tensor "$RESULTS/$name.safetensors" > "$RESULTS/$name.log"
}

# "| accuracy (strong judge) | accuracy (small judge) | histogram (strong judge) |" cells for samples NAME.
judged() {
    local strong small
    strong=$($DIFFUSE measure "$RESULTS/$1.safetensors" --judge "$OUT/judge-fashion-strong" --expect 0-9)
    small=$($DIFFUSE measure "$RESULTS/$1.safetensors" --judge "$OUT/judge-fashion" --expect 0-9)
    echo "$(echo "$strong" | sed 's/.*class_accuracy=\([^ ]*\).*/\1/') | $(echo "$small" | sed 's/.*class_accuracy=\([^ ]*\).*/\1/') | $(echo "$strong" | sed 's/.*predicted=//')"
}

measure_color() {
    echo "## 1. Colour guidance towards $COLOR ($COUNT samples, DDIM $STEPS steps, tinted Fashion-MNIST model)"
    echo "| setting | mean distance to colour | time (s) | peak RSS (MB) |"
    echo "|---|---|---|---|"
    timed_sample color-unguided "$OUT/rgb" --scheduler ddim --steps "$STEPS" --count "$COUNT" --seed 1 -o "$RESULTS/color-unguided.png"
    read -r seconds kilobytes < "$RESULTS/color-unguided.time"
    echo "| unguided | $($DIFFUSE measure "$RESULTS/color-unguided.safetensors" --color "$COLOR" | sed 's/.*color_distance=//') | $seconds | $((kilobytes / 1024)) |"
    for mode in shortcut full; do
        for scale in $COLOR_SCALES; do
            name=color-$mode-$scale
            timed_sample "$name" "$OUT/rgb" --scheduler ddim --steps "$STEPS" --count "$COUNT" --seed 1 \
                --guide "color=$COLOR" --guide-scale "$scale" --guide-mode "$mode" -o "$RESULTS/$name.png"
            read -r seconds kilobytes < "$RESULTS/$name.time"
            echo "| $mode, scale $scale | $($DIFFUSE measure "$RESULTS/$name.safetensors" --color "$COLOR" | sed 's/.*color_distance=//') | $seconds | $((kilobytes / 1024)) |"
        done
    done

}

measure_classifier() {
    echo "## 2. Classifier guidance (demo model's unconditional class, --guidance-scale 0; classes 0-9, $COUNT samples)"
    echo "| classifier scale | accuracy (judge 88.7%) | accuracy (judge 78.9%) | predicted class histogram | time (s) | peak RSS (MB) |"
    echo "|---|---|---|---|---|---|"
    for scale in 0 1 3 10; do
        name=classifier-$scale
        timed_sample "$name" "$OUT/demo" --scheduler ddim --steps "$STEPS" --count "$COUNT" --seed 2 --class 0-9 \
            --guidance-scale 0 --classifier "$OUT/classifier-fashion" --classifier-scale "$scale" -o "$RESULTS/$name.png"
        read -r seconds kilobytes < "$RESULTS/$name.time"
        echo "| $scale | $(judged "$name") | $seconds | $((kilobytes / 1024)) |"
    done

}

measure_cfg() {
    echo "## 3. Classifier-free guidance (demo model, classes 0-9, $COUNT samples)"
    echo "| guidance scale | accuracy (judge 88.7%) | accuracy (judge 78.9%) | predicted class histogram | time (s) | peak RSS (MB) |"
    echo "|---|---|---|---|---|---|"
    mkdir -p Benchmarks/guidance
    for scale in 0 1 3 7.5; do
        name=cfg-$scale
        timed_sample "$name" "$OUT/demo" --scheduler ddim --steps "$STEPS" --count "$COUNT" --seed 3 --class 0-9 \
            --guidance-scale "$scale" -o "Benchmarks/guidance/cfg-scale-$scale.png"
        read -r seconds kilobytes < "$RESULTS/$name.time"
        echo "| $scale | $(judged "$name") | $seconds | $((kilobytes / 1024)) |"
    done
}

case "${1:-}" in
    train) train ;;
    measure) measure_color; echo; measure_classifier; echo; measure_cfg ;;
    color) measure_color ;;
    classifier) measure_classifier ;;
    cfg) measure_cfg ;;
    *) echo "usage: $0 train|measure|color|classifier|cfg" >&2; exit 2 ;;
esac
