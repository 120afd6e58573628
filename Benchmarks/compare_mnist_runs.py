#!/usr/bin/env python3
"""Compares the course's MNIST run in Diffuse with the PyTorch + diffusers run (issue 6, point 1).

    python3 Benchmarks/compare_mnist_runs.py \
        --diffuse output/mnist/logs/train.jsonl --pytorch output/torch-mnist.jsonl \
        --plot Benchmarks/mnist/loss.png

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


def plot(path, diffuse, pytorch, smoothing=10):
    """Both loss curves (running means over `smoothing` steps, log scale) as a PNG, with Pillow."""
    import math
    from PIL import Image, ImageDraw
    width, height, margin = 720, 360, 48
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    last = max(diffuse)
    low, high = math.log10(0.01), math.log10(2.0)

    def point(step, loss):
        x = margin + (width - 2 * margin) * (step - 1) / max(last - 1, 1)
        y = height - margin - (height - 2 * margin) * (math.log10(max(loss, 0.01)) - low) / (high - low)
        return x, y

    draw.rectangle([margin, margin, width - margin, height - margin], outline="black")
    for loss in (0.01, 0.03, 0.1, 0.3, 1.0):
        _, y = point(1, loss)
        draw.line([margin, y, width - margin, y], fill=(225, 225, 225))
        draw.text((4, y - 6), f"{loss:g}", fill="black")
    for epoch in range(1, last // STEPS_PER_EPOCH + 1):
        x, _ = point(epoch * STEPS_PER_EPOCH, 1)
        draw.line([x, margin, x, height - margin], fill=(225, 225, 225))
        draw.text((x - 20, height - margin + 6), f"epoch {epoch}", fill="black")
    for steps, colour, label, row in ((diffuse, (200, 60, 20), "Diffuse", 0), (pytorch, (30, 90, 200), "PyTorch + diffusers", 1)):
        ordered = sorted(steps.items())
        points = []
        for index in range(len(ordered)):
            window = ordered[max(0, index - smoothing + 1):index + 1]
            points.append(point(ordered[index][0], statistics.fmean(loss for _, (loss, _) in window)))
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        draw.text((width - margin - 150, margin + 8 + 14 * row), label, fill=colour)
    draw.text((margin, 16), f"training loss (mean of {smoothing} steps, log scale) by step, batch 128", fill="black")
    image.save(path)
    print(f"\nplot: {path}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--diffuse", default="output/mnist/logs/train.jsonl")
    parser.add_argument("--pytorch", default="output/torch-mnist.jsonl")
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--plot", help="write both loss curves to this PNG (needs Pillow)")
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
    if arguments.plot:
        plot(arguments.plot, diffuse, pytorch)


if __name__ == "__main__":
    main()
