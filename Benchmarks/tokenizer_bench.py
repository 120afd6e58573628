#!/usr/bin/env python3
"""CLIP tokenization speed: Diffuse beside transformers' CLIPTokenizer (Python) and CLIPTokenizerFast (Rust).

A fourth row times the Rust tokenizer's own encode_batch, without transformers' Python wrapper.

All of them tokenize the same 10,000 prompts (Stable Diffusion style, with some accents, CJK and
emoji; made deterministically by Scripts/make-tokenizer-goldens' generator) without padding or
truncation, in one batch call, on the same machine. Two numbers each: the first call on a freshly
loaded tokenizer (empty word cache: all three cache BPE results per word) and the best of
--repeats further calls (warm cache). Loading and process start are not timed: Diffuse runs
`diffuse tokenize VOCAB --file prompts.txt --benchmark N`, which times inside the process.

Needs transformers 4.x (transformers 5 has no slow tokenizer) without ftfy, e.g. the venv of
Scripts/make-tokenizer-goldens, and a release build:
    swift build -c release --product diffuse
    /tmp/tf4env/bin/python Benchmarks/tokenizer_bench.py [--repeats 5]
"""
import argparse
import importlib.machinery
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
goldens = importlib.machinery.SourceFileLoader("goldens", os.path.join(ROOT, "Scripts", "make-tokenizer-goldens")).load_module()
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from transformers import CLIPTokenizer, CLIPTokenizerFast  # noqa: E402


def bench_prompts(count):
    rng = random.Random(77)
    extras = goldens.ACCENTED + goldens.CJK + goldens.EMOJI + goldens.SCRIPTS + goldens.CONTRACTIONS
    prompts = []
    for _ in range(count):
        text = goldens.sd_prompt(rng)
        if rng.random() < 0.2:
            text += ", " + rng.choice(extras)
        if rng.random() < 0.3:
            text += ", " + " ".join(rng.choice(goldens.WORDS) for _ in range(rng.randint(3, 15)))
        prompts.append(text.replace("\n", " ").replace("\r", " "))
    return prompts


def python_timings(make, prompts, repeats):
    tokenizer = make()
    start = time.perf_counter()
    ids = tokenizer(prompts)["input_ids"]
    cold = time.perf_counter() - start
    warm = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        tokenizer(prompts)
        warm = min(warm, time.perf_counter() - start)
    return sum(len(x) for x in ids), cold, warm, ids


def rust_timings(backend, prompts, repeats):
    """The Rust tokenizer's own batch call (`tokenizers.Tokenizer.encode_batch`), without
    transformers' Python wrapper that builds the BatchEncoding; it runs on all cores."""
    backend = type(backend).from_str(backend.to_str())  # a fresh copy: empty cache
    start = time.perf_counter()
    encodings = backend.encode_batch(prompts)
    cold = time.perf_counter() - start
    warm = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        backend.encode_batch(prompts)
        warm = min(warm, time.perf_counter() - start)
    return sum(len(e.ids) for e in encodings), cold, warm


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--diffuse", default=os.path.join(ROOT, ".build", "release", "diffuse"))
    arguments = parser.parse_args()
    prompts = bench_prompts(arguments.prompts)
    with tempfile.TemporaryDirectory() as temporary:
        folder = os.path.join(temporary, "tokenizer")
        goldens.write_folder(folder, "<|endoftext|>")
        prompt_file = os.path.join(temporary, "prompts.txt")
        with open(prompt_file, "w", encoding="utf-8") as f:
            f.write("\n".join(prompts) + "\n")
        slow = python_timings(lambda: CLIPTokenizer.from_pretrained(folder), prompts, arguments.repeats)
        fast = python_timings(lambda: CLIPTokenizerFast.from_pretrained(folder), prompts, arguments.repeats)
        raw = rust_timings(CLIPTokenizerFast.from_pretrained(folder).backend_tokenizer, prompts, arguments.repeats)
        run = subprocess.run([arguments.diffuse, "tokenize", folder, "--file", prompt_file, "--benchmark", str(arguments.repeats)],
                             check=True, capture_output=True, text=True)
        diffuse = json.loads(run.stdout.strip().splitlines()[-1])
        lines = subprocess.run([arguments.diffuse, "tokenize", folder, "--file", prompt_file], check=True,
                               capture_output=True, text=True).stdout.splitlines()
    diffuse_ids = [json.loads(line)["ids"] for line in lines]
    truncated = [x if len(x) <= 77 else x[:76] + [x[-1]] for x in slow[3]]
    agree_slow = sum(a == b for a, b in zip(diffuse_ids, truncated))
    agree_fast = sum(a == b for a, b in zip(slow[3], fast[3]))
    assert diffuse["tokens"] == slow[0], (diffuse["tokens"], slow[0])

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    rows = [("Diffuse (Swift, release)", diffuse["tokens"], diffuse["cold_seconds"], diffuse["warm_seconds"]),
            (f"transformers {transformers.__version__} CLIPTokenizer (Python)", *slow[:3]),
            (f"transformers CLIPTokenizerFast (Rust, tokenizers {tokenizers.__version__})", *fast[:3]),
            (f"tokenizers {tokenizers.__version__} Tokenizer.encode_batch (Rust alone, {os.cpu_count()} threads)", *raw)]
    print(f"{len(prompts)} prompts, {slow[0]} tokens; CPU: {cpu}, {os.cpu_count()} cores; Python {platform.python_version()}")
    print(f"Diffuse ids (truncated to 77) equal to CLIPTokenizer's for {agree_slow} of {len(prompts)} prompts; "
          f"CLIPTokenizerFast equal to CLIPTokenizer for {agree_fast} of {len(prompts)}")
    print()
    print("| tokenizer | cold: tokens/s | warm: tokens/s | Diffuse is × faster (cold / warm) |")
    print("| --- | ---: | ---: | ---: |")
    for name, tokens, cold, warm in rows:
        ratio = "—" if name.startswith("Diffuse") else f"{cold / diffuse['cold_seconds']:.1f} / {warm / diffuse['warm_seconds']:.1f}"
        print(f"| {name} | {tokens / cold:,.0f} | {tokens / warm:,.0f} | {ratio} |")


if __name__ == "__main__":
    main()
