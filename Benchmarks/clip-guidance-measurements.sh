#!/usr/bin/env bash
# CLIP guidance on an unconditional RGB model of tinted Fashion-MNIST (issue 16, measurement 5).
#   Benchmarks/clip-guidance-measurements.sh            samples, judges and prints the table
# Environment: DIFFUSE (binary), MODEL (the unconditional pipeline: diffuse train --dataset
# tinted-fashion-mnist, see Benchmarks/clip-guidance.md), CLIP (diffuse train-clip's folder),
# JUDGE (diffuse train-classifier --clean --dataset tinted-fashion-mnist), OUT, COUNT, STEPS, SCALES.
set -euo pipefail
DIFFUSE=${DIFFUSE:-.build/release/diffuse}
MODEL=${MODEL:-output/rgb}
CLIP=${CLIP:-output/clip}
JUDGE=${JUDGE:-output/judge-tinted}
OUT=${OUT:-output/clip-guidance}
COUNT=${COUNT:-32}
STEPS=${STEPS:-25}
SCALES=${SCALES:-"10 30 60"}
CUTOUTS=${CUTOUTS:-4}
mkdir -p "$OUT"
# prompt | Fashion-MNIST class of the item | the colour's RGB (the captioned dataset's named colours)
PROMPTS=(
  "a red bag|8|#DC1E1E"
  "a blue trouser|1|#1E46DC"
  "a yellow sneaker|7|#FADC1E"
  "a green dress|3|#1EA032"
  "a purple ankle boot|9|#8228AA"
)
echo "| prompt | mode | scale | item accuracy | colour distance | colour match | seconds | peak RSS (MB) |"
echo "|---|---|---|---|---|---|---|---|"
index=0
for entry in "${PROMPTS[@]}"; do
  IFS='|' read -r prompt class colour <<< "$entry"
  for mode in none shortcut full; do
    scales=$SCALES
    [ "$mode" = none ] && scales=0
    for scale in $scales; do
      name="p$index-$mode-$scale"
      arguments=(sample "$MODEL" --scheduler ddim --steps "$STEPS" --count "$COUNT" --seed 1 --columns 8
                 --save-tensor "$OUT/$name.safetensors" -o "$OUT/$name.png" --no-progress --guidance-report-every 0)
      if [ "$mode" != none ]; then
        arguments+=(--guide "clip=$prompt" --clip-model "$CLIP" --clip-cutouts "$CUTOUTS" --guide-scale "$scale" --guide-mode "$mode")
      fi
      timing=$( { /usr/bin/time -f "%e %M" "$DIFFUSE" "${arguments[@]}" > /dev/null; } 2>&1 | tail -1 )
      measures=$("$DIFFUSE" measure "$OUT/$name.safetensors" --judge "$JUDGE" --expect "$class" --foreground-color "$colour")
      accuracy=$(sed -nE 's/.*class_accuracy=([0-9.]+).*/\1/p' <<< "$measures")
      distance=$(sed -nE 's/.*foreground_distance=([0-9.]+).*/\1/p' <<< "$measures")
      match=$(sed -nE 's/.*foreground_match=([0-9.]+).*/\1/p' <<< "$measures")
      read -r seconds kilobytes <<< "$timing"
      echo "| $prompt | $mode | $scale | $accuracy | $distance | $match | $seconds | $((kilobytes / 1024)) |"
    done
  done
  index=$((index + 1))
done
