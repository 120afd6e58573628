#!/usr/bin/env python3
"""The course's MNIST recipe in PyTorch + diffusers, for comparison with
`diffuse train --config Examples/train-mnist.yaml` (issue 6, point 1).

Same recipe as the YAML: UNet2DModel with the course config (28×28, 1 channel, (32, 64, 64),
Down/AttnDown/AttnDown), DDPMScheduler (1000 steps, linear betas), epsilon objective, batch 128,
AdamW (lr 1e-3, betas 0.9/0.999, weight decay 0.01, eps 1e-8), 100 warm-up steps then cosine
decay over the run's 3 epochs, gradient clipping at 1.0, images scaled to [-1, 1], seed 0.
(Random streams differ from Diffuse's, so losses agree in trend, not digit for digit.)

Writes one JSON line per step (step, loss, seconds) to --log and prints the mean loss every 50 steps.
    python3 Benchmarks/train_mnist_torch.py --max-steps 468 --log output/torch-mnist.jsonl
Needs `make data` (MNIST in data/mnist/) and torch + diffusers.
"""
import argparse
import gzip
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.optimization import get_cosine_schedule_with_warmup


def read_images(path):
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    count, rows, columns = (int.from_bytes(data[i:i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(count, 1, rows, columns)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="data/mnist/train-images-idx3-ubyte.gz")
    parser.add_argument("--max-steps", type=int, default=468, help="steps to run (468 = one epoch: 60,000 images, batches of 128, the last partial one dropped)")
    parser.add_argument("--epochs", type=int, default=3, help="length of the LR schedule, in epochs")
    parser.add_argument("--log", default="output/torch-mnist.jsonl")
    arguments = parser.parse_args()

    torch.manual_seed(0)
    images = torch.from_numpy(read_images(arguments.data).astype(np.float32) / 127.5 - 1)
    batch = 128
    steps_per_epoch = len(images) // batch
    model = UNet2DModel(sample_size=28, in_channels=1, out_channels=1, layers_per_block=2,
                        block_out_channels=(32, 64, 64),
                        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01, eps=1e-8)
    lr_schedule = get_cosine_schedule_with_warmup(optimizer, 100, steps_per_epoch * arguments.epochs)
    order = torch.randperm(len(images))
    window = []
    with open(arguments.log, "w") as log:
        for step in range(arguments.max_steps):
            start = time.perf_counter()
            index = step % steps_per_epoch
            if index == 0 and step > 0:
                order = torch.randperm(len(images))
            clean = images[order[index * batch:(index + 1) * batch]]
            noise = torch.randn_like(clean)
            timesteps = torch.randint(0, 1000, (batch,))
            noisy = scheduler.add_noise(clean, noise, timesteps)
            loss = F.mse_loss(model(noisy, timesteps).sample, noise)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            lr_schedule.step()
            seconds = time.perf_counter() - start
            log.write(json.dumps({"step": step + 1, "loss": loss.item(), "seconds": seconds}) + "\n")
            log.flush()
            window.append(loss.item())
            if (step + 1) % 50 == 0:
                print(f"step {step + 1}: mean loss {sum(window) / len(window):.4f}, last step {seconds:.2f} s", flush=True)
                window = []


if __name__ == "__main__":
    main()
