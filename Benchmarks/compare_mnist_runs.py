#!/usr/bin/env python3
"""Compares the course's MNIST run in Diffuse with the PyTorch + diffusers run (issue 6, point 1).

    python3 Benchmarks/compare_mnist_runs.py \
        --diffuse output/mnist/logs/train.jsonl --pytorch output/torch-mnist.jsonl

Prints the mean training loss per epoch of each run, the mean loss over windows of equal
steps side by side, and the median seconds per step of each (Diffuse's from the wall-clock
time between consecutive logged steps of one process, so resumes, checkpoints and sample
grids do not count; PyTorch's from its own per-step timer). The two runs draw different
random numbers (data order, noise, timesteps), so their losses agree in trend, not digits.
"""
import argparse
import json
import statistics

STEPS_PER_EPOCH = 60000 // 128


def read_diffuse(path):
    """Step → (loss, seconds since the previous step of the same process, or None), and the
    segments of steps each process ran without interruption (first step, last step)."""
    steps = {}
    segments = []
    previous = None
    for line in open(path):
        record = json.loads(line)
        if "event" in record:
            if record["event"] == "interrupted":
                previous = None  # the next step comes from another process
            continue
        step, loss, time = record["step"], record["loss"], record["time"]
        if previous and previous[0] == step - 1:
            seconds = time - previous[1]
            segments[-1][1] = step
        else:
            seconds = None
            segments.append([step, step])
        steps[step] = (loss, seconds)  # a step repeated after a resume: the last run's value
        previous = (step, time)
    return steps, segments


def read_pytorch(path):
    steps = {}
    for line in open(path):
        record = json.loads(line)
        steps[record["step"]] = (record["loss"], record["seconds"])
    return steps


def epoch_means(steps):
    epochs = {}
    for step, (loss, _) in steps.items():
        epochs.setdefault((step - 1) // STEPS_PER_EPOCH + 1, []).append(loss)
    return {epoch: (statistics.fmean(losses), len(losses)) for epoch, losses in sorted(epochs.items())}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--diffuse", default="output/mnist/logs/train.jsonl")
    parser.add_argument("--pytorch", default="output/torch-mnist.jsonl")
    parser.add_argument("--window", type=int, default=50)
    arguments = parser.parse_args()
    diffuse, segments = read_diffuse(arguments.diffuse)
    pytorch = read_pytorch(arguments.pytorch)

    print("mean training loss per epoch (steps logged)")
    pytorch_epochs = epoch_means(pytorch)
    for epoch, (mean, count) in epoch_means(diffuse).items():
        other = pytorch_epochs.get(epoch)
        beside = f"   pytorch {other[0]:.4f} ({other[1]} steps)" if other else ""
        print(f"  epoch {epoch}: diffuse {mean:.4f} ({count} steps){beside}")

    print(f"\nmean loss over windows of {arguments.window} steps, at equal steps")
    print("  steps        diffuse   pytorch")
    last = max(pytorch) if pytorch else 0
    for start in range(1, last + 1, arguments.window):
        window = range(start, min(start + arguments.window, last + 1))
        ours = [diffuse[s][0] for s in window if s in diffuse]
        theirs = [pytorch[s][0] for s in window if s in pytorch]
        if ours and theirs:
            print(f"  {start:4d}-{window[-1]:4d}  {statistics.fmean(ours):8.4f}  {statistics.fmean(theirs):8.4f}")

    # Seconds per step of each Diffuse process; the ratio uses the longest one (a run resumed
    # on a busy machine would otherwise mix loads).
    print("\nmedian seconds per step of each Diffuse process (steps it ran)")
    longest = None
    for first, last in segments:
        gaps = [diffuse[s][1] for s in range(first + 1, last + 1) if diffuse.get(s, (0, None))[1] is not None]
        if gaps:
            print(f"  steps {first:4d}-{last:4d}: {statistics.median(gaps):.2f} s")
            if longest is None or len(gaps) > len(longest[1]):
                longest = ((first, last), gaps)
    theirs = [seconds for _, seconds in pytorch.values()][1:]  # the first step warms up
    if longest and theirs:
        mine, other = statistics.median(longest[1]), statistics.median(theirs)
        print(f"median seconds per step: diffuse {mine:.2f} (steps {longest[0][0]}-{longest[0][1]}), "
              f"pytorch {other:.2f} ({len(theirs)} steps), ratio {mine / other:.2f}")


if __name__ == "__main__":
    main()
