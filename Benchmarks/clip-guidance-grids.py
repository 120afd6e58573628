#!/usr/bin/env python3
"""One picture per guidance scale from clip-guidance-measurements.sh's saved samples:
a row per prompt, the first 8 samples of shortcut mode on the left and of full mode on the right
(scale 0: the unguided samples). Usage: clip-guidance-grids.py OUT_DIR DESTINATION_DIR"""
import os
import sys

import numpy as np
from PIL import Image
from safetensors.numpy import load_file

SCALE = 3  # pixels per sample pixel


def tile(path, count=8):
    samples = load_file(path)["samples"][:count]
    images = ((np.clip(samples, -1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(0, 2, 3, 1)
    gap = np.full((images.shape[1], 2, 3), 255, np.uint8)
    return np.concatenate([np.concatenate([image, gap], axis=1) for image in images], axis=1)


def main():
    source, destination = sys.argv[1], sys.argv[2]
    os.makedirs(destination, exist_ok=True)
    prompts = sorted({name.split("-")[0] for name in os.listdir(source) if name.endswith(".safetensors")})
    scales = sorted({int(name.rsplit("-", 1)[1].split(".")[0]) for name in os.listdir(source) if name.endswith(".safetensors")})
    for scale in scales:
        rows = []
        for prompt in prompts:
            if scale == 0:
                row = tile(os.path.join(source, f"{prompt}-none-0.safetensors"))
            else:
                parts = [tile(os.path.join(source, f"{prompt}-{mode}-{scale}.safetensors")) for mode in ("shortcut", "full")]
                row = np.concatenate([parts[0], np.full((parts[0].shape[0], 8, 3), 255, np.uint8), parts[1]], axis=1)
            rows.append(row)
            rows.append(np.full((2, row.shape[1], 3), 255, np.uint8))
        picture = Image.fromarray(np.concatenate(rows, axis=0))
        picture = picture.resize((picture.width * SCALE, picture.height * SCALE), Image.NEAREST)
        path = os.path.join(destination, f"scale-{scale}.png")
        picture.save(path)
        print("wrote", path)


if __name__ == "__main__":
    main()
