#!/usr/bin/env python3
"""`make bench`: runs each workload in Diffuse and in PyTorch on this machine,
in the same run, interleaved repetition by repetition, and prints one row per
workload: `NAME diffuse_ms=... pytorch_ms=... ratio=...` (ratio = Diffuse time /
PyTorch time, medians of the repetitions). Both sides use 2 threads; every row
starts a fresh process on each side.

Usage: run-bench.py DIFFUSE_BENCH_BINARY [--only PREFIX] [--repeats N] [--results FILE]
(--only also takes comma-separated shaped convolutions, `conv-fwd:BATCH:IN:OUT:SIZE`
or `conv-bwd:...`, to look into one layer; they are not rows of the table.)
"""
import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# Floating-point operations per repetition (torch's flop counter on diffusers' model), for the
# GFLOP/s printed beside a row.
FLOPS = {"sd15-unet-b2-64": 1354e9, "sd15-unet-b2-64-w16": 1354e9, "sd15-unet-b2-64-bf16": 1354e9}


class Worker:
    def __init__(self, command, environment):
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, bufsize=1, env=environment)

    def ask(self, line):
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline().strip()
        if not answer or answer.startswith("error"):
            raise RuntimeError(f"{line!r}: {answer or 'worker exited'}")
        return answer

    def close(self):
        try:
            self.process.stdin.write("quit\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            pass
        self.process.wait(timeout=30)


def machine_description():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("--only", default="")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--results", default="")
    parser.add_argument("--pause", type=float, default=0.3,
                        help="seconds between one side's run and the other's, for the other side's threads to go idle")
    parser.add_argument("--warmups", type=int, default=1,
                        help="untimed runs before the timed ones (0 for the minutes-long whole-generation rows)")
    arguments = parser.parse_args()

    environment = dict(os.environ, DIFFUSE_NUM_THREADS="2", OMP_NUM_THREADS="2")
    names = subprocess.run([arguments.binary, "--list"], capture_output=True, text=True, check=True).stdout.split()
    exact = [part for part in arguments.only.split(",") if part]
    if "," in arguments.only and all(part in names for part in exact):
        selected = exact  # exact names ("NAME," for one), e.g. the timing rows without their -rss rows
    else:
        selected = [name for name in names if name.startswith(arguments.only)]
    if not selected and ":" in arguments.only:
        selected = arguments.only.split(",")  # shaped convolutions, e.g. conv-bwd:64:256:256:4
    if not selected:
        sys.exit(f"no workload starts with {arguments.only!r}; workloads: {', '.join(names)}")

    diffuse_command = [arguments.binary]
    pytorch_command = [sys.executable, os.path.join(HERE, "torch_bench.py")]
    memory_rows = [name for name in selected if name.endswith("-rss")]
    selected = [name for name in selected if not name.endswith("-rss")]
    rows = []
    for name in memory_rows:
        row = measure_memory(name, diffuse_command, pytorch_command, environment)
        print(row, flush=True)
        rows.append(row)
    for name in selected:
        # Each row in a fresh pair of processes, as a user runs it (`diffuse sample` or a
        # training run is a process of its own): no allocator or cache state carried over
        # from the rows before, on either side.
        diffuse = Worker(diffuse_command, environment)
        pytorch = Worker(pytorch_command, environment)
        try:
            timings = {"diffuse": [], "pytorch": []}
            for side, worker in (("diffuse", diffuse), ("pytorch", pytorch)):
                worker.ask(f"setup {name}")
                for _ in range(arguments.warmups):
                    worker.ask(f"run {name}")  # warm-up
            for _ in range(arguments.repeats):
                for side, worker in (("diffuse", diffuse), ("pytorch", pytorch)):
                    # Let the other side's threads go idle: PyTorch's OpenMP workers (GNU libgomp) spin for tens of
                    # milliseconds after each parallel region and took a core from Diffuse's next run with 0.05 s here
                    # (a 2 ms gemm-512 measured 6–10 ms on Zen 3).
                    time.sleep(arguments.pause)
                    timings[side].append(float(worker.ask(f"run {name}")))
        finally:
            diffuse.close()
            pytorch.close()
        diffuse_ms = statistics.median(timings["diffuse"])
        pytorch_ms = statistics.median(timings["pytorch"])
        row = f"{name} diffuse_ms={diffuse_ms:.2f} pytorch_ms={pytorch_ms:.2f} ratio={diffuse_ms / pytorch_ms:.2f}"
        if name in FLOPS:
            row += f" diffuse_gflops={FLOPS[name] / diffuse_ms / 1e6:.1f} pytorch_gflops={FLOPS[name] / pytorch_ms / 1e6:.1f}"
        row += per_step_columns(name, diffuse_ms, pytorch_ms)
        if arguments.warmups != 1 or arguments.repeats < 3:
            row += f" repeats={arguments.repeats} warmups={arguments.warmups}"
        print(row, flush=True)
        rows.append(row)

    if arguments.results:
        write_results(arguments.results, rows, arguments.repeats)


def per_step_columns(name, diffuse_ms, pytorch_ms):
    """Seconds per denoising step beside a whole-generation row (the whole time / the steps, text encoding and
    decoding included); DIFFUSE_BENCH_TXT2IMG=SIZE:STEPS changes the steps of sd15-txt2img-512-20."""
    if not name.startswith("sd15-txt2img-512-20"):
        return ""
    steps = int(os.environ.get("DIFFUSE_BENCH_TXT2IMG", "512:20").split(":")[1])
    return f" diffuse_s_per_step={diffuse_ms / 1000 / steps:.2f} pytorch_s_per_step={pytorch_ms / 1000 / steps:.2f}"


def measure_memory(name, diffuse_command, pytorch_command, environment, steps=3):
    """Peak resident memory of the workload NAME without its -rss suffix, each
    side in a fresh process of its own."""
    workload = name[: -len("-rss")]
    peaks = {}
    for side, command in (("diffuse", diffuse_command), ("pytorch", pytorch_command)):
        worker = Worker(command, environment)
        try:
            worker.ask(f"setup {workload}")
            for _ in range(steps):
                worker.ask(f"run {workload}")
            peaks[side] = float(worker.ask("rss"))
        finally:
            worker.close()
    return (f"{name} diffuse_mb={peaks['diffuse']:.0f} pytorch_mb={peaks['pytorch']:.0f} "
            f"ratio={peaks['diffuse'] / peaks['pytorch']:.2f}")


def machine_kind():
    """The kind of CPU the rows describe (the model name alone says "AMD EPYC" for Zen 3 and Zen 4 alike):
    the vector extensions Diffuse's kernels can use, or the forced AVX2 set."""
    flags = set()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    model = machine_description().split(",")[0]
    if "avx512f" in flags:
        isa = "AVX-512" + (" + AVX512-BF16" if "avx512_bf16" in flags else "")
        if os.environ.get("DIFFUSE_ISA", "").lower() == "avx2":
            isa += ", AVX2 kernels forced (DIFFUSE_ISA=avx2)"
    else:
        isa = "AVX2, no AVX-512" if "avx2" in flags else "no AVX2"
    return f"{model}, {isa}"


def is_row(line):
    return line.startswith("    ") and (" diffuse_ms=" in line or " diffuse_mb=" in line)


def write_results(path, rows, repeats):
    """Merges the rows into the results file's section for this kind of machine (`## Rows on KIND`), keeping the
    newest row per workload and every other line of the file (the notes beside the tables) as it is."""
    import torch  # only for its version string
    lines = open(path).read().splitlines() if os.path.exists(path) else ["# Benchmark results", ""]
    heading = f"## Rows on {machine_kind()}"
    header = [f"- {datetime.date.today().isoformat()}: {machine_description()}; PyTorch {torch.__version__}; "
              f"medians of {repeats} repetitions; rows in fresh processes, 2 threads each; ratio = Diffuse / PyTorch", ""]
    if heading not in lines:
        lines += ["", heading, ""] + header
    start = lines.index(heading) + 1
    end = next((index for index in range(start, len(lines)) if lines[index].startswith("## ")), len(lines))
    section = lines[start:end]
    existing = {line.split()[0]: line.strip() for line in section if is_row(line)}
    for row in rows:
        existing[row.split()[0]] = row
    table = [f"    {existing[name]}" for name in sorted(existing)]
    # The section: the run's line, its table, then the notes kept from before.
    notes = [line for line in section if not is_row(line) and not (line.startswith("- ") and "medians of" in line and "; PyTorch " in line)]
    while notes and not notes[0].strip():
        notes.pop(0)
    while notes and not notes[-1].strip():
        notes.pop()
    section = [""] + header + table + ([""] + notes if notes else []) + [""]
    lines[start:end] = section
    with open(path, "w") as results:
        results.write("\n".join(lines).rstrip("\n") + "\n")


if __name__ == "__main__":
    main()
