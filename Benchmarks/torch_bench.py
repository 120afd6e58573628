#!/usr/bin/env python3
"""The PyTorch side of `make bench`: the same workloads as DiffuseBench, driven
over stdin by run-bench.py (protocol: `setup NAME` -> ok, `run NAME` -> ms of
one repetition, `rss` -> peak resident MB, `quit`)."""
import resource
import sys
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(2)
torch.manual_seed(0)


def gemm(size):
    a, b = torch.randn(size, size), torch.randn(size, size)

    def run():
        with torch.no_grad():
            torch.mm(a, b)
    return run


def conv_forward(batch, channels, size, out_channels=None, kernel=3, stride=1):
    out_channels = out_channels or channels
    x = torch.randn(batch, channels, size, size)
    weight = torch.randn(out_channels, channels, kernel, kernel) * 0.05
    bias = torch.randn(out_channels)

    def run():
        with torch.no_grad():
            F.conv2d(x, weight, bias, stride=stride, padding=kernel // 2)
    return run


def conv_backward(batch, channels, size, out_channels=None, kernel=3, stride=1):
    out_channels = out_channels or channels
    x = torch.randn(batch, channels, size, size, requires_grad=True)
    weight = (torch.randn(out_channels, channels, kernel, kernel) * 0.05).requires_grad_()
    out_size = (size + 2 * (kernel // 2) - kernel) // stride + 1
    upstream = torch.randn(batch, out_channels, out_size, out_size)

    def run():
        output = F.conv2d(x, weight, stride=stride, padding=kernel // 2)
        start = time.perf_counter()
        torch.autograd.grad(output, [x, weight], upstream)
        return time.perf_counter() - start
    return run


def groupnorm():
    x = torch.randn(128, 64, 14, 14, requires_grad=True)
    weight = torch.randn(64, requires_grad=True)
    bias = torch.randn(64, requires_grad=True)
    upstream = torch.randn(128, 64, 14, 14)

    def run():
        F.group_norm(x, 32, weight, bias).backward(upstream)
        x.grad = weight.grad = bias.grad = None
    return run


def attention():
    q, k, v = (torch.randn(128, 196, 64, requires_grad=True) for _ in range(3))
    upstream = torch.randn(128, 196, 64)

    def run():
        F.scaled_dot_product_attention(q, k, v).backward(upstream)
        q.grad = k.grad = v.grad = None
    return run


def attention_sd(tokens, depth, keys=None, backward=False, batch=2, heads=8, dtype=torch.float32):
    """Stable Diffusion 1.x's attention at 512x512 (a 64x64 latent, 8 heads): [batch, heads, tokens, depth]."""
    q = torch.randn(batch, heads, tokens, depth, requires_grad=backward).to(dtype)
    k, v = (torch.randn(batch, heads, keys or tokens, depth, requires_grad=backward).to(dtype) for _ in range(2))
    upstream = torch.randn(batch, heads, tokens, depth)

    def run():
        if backward:
            F.scaled_dot_product_attention(q, k, v).backward(upstream)
            q.grad = k.grad = v.grad = None
        else:
            with torch.no_grad():
                F.scaled_dot_product_attention(q, k, v)
    return run


def course_unet(channels=1, size=28):
    from diffusers import UNet2DModel
    torch.manual_seed(0)
    return UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=2,
                       block_out_channels=(32, 64, 64),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"))


def butterflies_unet():
    from diffusers import UNet2DModel
    torch.manual_seed(0)
    return UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                       block_out_channels=(64, 128, 128, 256),
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))


def unet_forward(batch):
    model = course_unet().eval()
    x = torch.randn(batch, 1, 28, 28)
    t = torch.randint(0, 1000, (batch,))

    def run():
        with torch.no_grad():
            model(x, t)
    return run


def unet_train(model, batch, channels, size):
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    clean = torch.randn(batch, channels, size, size)
    noise = torch.randn(batch, channels, size, size)
    t = torch.randint(0, 1000, (batch,))

    def run():
        prediction = model(clean + noise, t).sample
        loss = F.mse_loss(prediction, noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return run


def ddim_sampling(batch, steps):
    from diffusers import DDIMPipeline, DDIMScheduler
    model = course_unet().eval()
    pipeline = DDIMPipeline(unet=model, scheduler=DDIMScheduler())
    pipeline.set_progress_bar_config(disable=True)

    def run():
        with torch.no_grad():
            pipeline(batch_size=batch, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="np")
    return run


def clip_text_l14(bfloat16=False):
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                            projection_dim=768, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    model = CLIPTextModel(config).eval()
    rows = []
    for length in (9, 75):
        middle = torch.randint(0, 49406, (length,)).tolist()
        rows.append([49406] + middle + [49407] * (77 - length - 1))
    ids = torch.tensor(rows)

    def run():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            model(input_ids=ids)
    return run


def clip_vision_b32():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    torch.manual_seed(0)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig()).eval().requires_grad_(False)
    pixels = torch.randn(8, 3, 224, 224, requires_grad=True)

    def run():
        model(pixel_values=pixels).image_embeds.sum().backward()
        pixels.grad = None
    return run


def sd_product(m, k, n, mode=""):
    """x [m, k] · Wᵀ (W [n, k]) as a Linear computes it. mode "-bf16": weights stored in bfloat16, input
    converted each call, bfloat16 product; "-w16": weights stored in bfloat16, widened each call, float32 product."""
    x = torch.randn(m, k)
    weight = torch.randn(n, k) * 0.05
    if mode:
        weight = weight.to(torch.bfloat16)

    def run():
        with torch.no_grad():
            if mode == "-bf16":
                torch.nn.functional.linear(x.to(torch.bfloat16), weight)
            else:
                torch.nn.functional.linear(x, weight.float())
    return run


SD_PRODUCTS = [(8192, 320, 1280), (8192, 1280, 320), (154, 768, 320), (512, 1280, 1280)]


SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
                 attention_head_dim=8, cross_attention_dim=768,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))


def sd15_unet():
    """Stable Diffusion 1.5's UNet, random weights, batch 2, 4x64x64 latents, 77x768 context."""
    from diffusers import UNet2DConditionModel
    torch.manual_seed(0)
    model = UNet2DConditionModel(**SD15_UNET).eval()
    latents = torch.randn(2, 4, 64, 64)
    context = torch.randn(2, 77, 768)
    timesteps = torch.tensor([981, 981])

    def run():
        with torch.no_grad():
            model(latents, timesteps, encoder_hidden_states=context)
    return run


def sd_unet_small_train(batch=8):
    """A small UNet2DConditionModel's training step: (32, 64, 64), 32x32x4 latents, 16x64 context, AdamW."""
    from diffusers import UNet2DConditionModel
    torch.manual_seed(0)
    model = UNet2DConditionModel(sample_size=32, block_out_channels=(32, 64, 64), cross_attention_dim=64,
                                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    clean = torch.randn(batch, 4, 32, 32)
    noise = torch.randn(batch, 4, 32, 32)
    context = torch.randn(batch, 16, 64)
    t = torch.randint(0, 1000, (batch,))

    def run():
        prediction = model(clean + noise, t, encoder_hidden_states=context).sample
        loss = F.mse_loss(prediction, noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return run


SMALL_TEXT_TO_IMAGE_UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(64, 128, 128),
                                attention_head_dim=8, cross_attention_dim=128, norm_num_groups=32,
                                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))


def text_to_image_train_step(model, parameters, batch, size, context_shape):
    """The step of diffusers' train_text_to_image(_lora).py on cached latents and text-encoder output:
    UNet forward on the noisy latents, MSE to the noise, backward, AdamW (the scripts' weight decay 1e-2)."""
    optimizer = torch.optim.AdamW(parameters, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    latents = torch.randn(batch, 4, size, size)
    noise = torch.randn(batch, 4, size, size)
    context = torch.randn(batch, *context_shape)
    t = torch.randint(0, 1000, (batch,))

    def run():
        prediction = model(latents + noise, t, encoder_hidden_states=context).sample
        loss = F.mse_loss(prediction.float(), noise.float(), reduction="mean")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return run


def sd_small_train(batch=32):
    """sd-small-train-b32: the small text-to-image UNet (4x8x8 latents, (64, 128, 128), 77x128 context), all parameters."""
    from diffusers import UNet2DConditionModel
    torch.manual_seed(0)
    model = UNet2DConditionModel(**SMALL_TEXT_TO_IMAGE_UNET).train()
    return text_to_image_train_step(model, model.parameters(), batch, 8, (77, 128))


def sd15_lora_train():
    """sd15-lora-train-256: SD 1.5's UNet (random weights, frozen) with peft rank-4 adapters on to_q/to_k/to_v/to_out.0,
    gradient checkpointing, 4x32x32 latents, batch 1, 77x768 context, as train_text_to_image_lora.py sets it up."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig
    torch.manual_seed(0)
    model = UNet2DConditionModel(**SD15_UNET)
    model.requires_grad_(False)
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    model.enable_gradient_checkpointing()
    model.train()
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    return text_to_image_train_step(model, parameters, 1, 32, (77, 768))


WORKLOADS = {
    "gemm-512": lambda: gemm(512),
    "gemm-1024": lambda: gemm(1024),
    "conv-fwd-32c28": lambda: conv_forward(128, 32, 28),
    "conv-bwd-32c28": lambda: conv_backward(128, 32, 28),
    "conv-fwd-64c14": lambda: conv_forward(128, 64, 14),
    "conv-bwd-64c14": lambda: conv_backward(128, 64, 14),
    "groupnorm-fwdbwd": groupnorm,
    "attention-fwdbwd": attention,
    # The course UNet's 14×14 attention at batch 128: 8 heads of 8, split from [B, 196, 64] as diffusers does.
    "attention-heads8-fwdbwd": lambda: attention_layer(128, 8, 196, 196, 8, backward=True),
    "unet-mnist-fwd-b16": lambda: unet_forward(16),
    "unet-mnist-fwd-b64": lambda: unet_forward(64),
    "unet-mnist-train-b128": lambda: unet_train(course_unet(), 128, 1, 28),
    "unet-butterflies-train-b64": lambda: unet_train(butterflies_unet(), 64, 3, 32),
    "sample-ddim50-mnist-b16": lambda: ddim_sampling(16, 50),
    "clip-text-l14-b2": clip_text_l14,
    "clip-text-l14-b2-bf16": lambda: clip_text_l14(bfloat16=True),
    "clip-vision-b32-fwdbwd-b8": clip_vision_b32,
    "attention-sd-4096": lambda: attention_sd(4096, 40),
    "attention-sd-4096-fwdbwd": lambda: attention_sd(4096, 40, backward=True),
    "attention-sd-cross-4096x77": lambda: attention_sd(4096, 40, keys=77),
    "attention-sd-1024-h80": lambda: attention_sd(1024, 80),
    "attention-sd-256-h160": lambda: attention_sd(256, 160),
    # Diffuse's -bf16 rows run in bfloat16 inference mode; PyTorch's on bfloat16 tensors.
    "attention-sd-4096-bf16": lambda: attention_sd(4096, 40, dtype=torch.bfloat16),
    "attention-sd-cross-4096x77-bf16": lambda: attention_sd(4096, 40, keys=77, dtype=torch.bfloat16),
    "attention-sd-1024-h80-bf16": lambda: attention_sd(1024, 80, dtype=torch.bfloat16),
    "attention-sd-256-h160-bf16": lambda: attention_sd(256, 160, dtype=torch.bfloat16),
    "sd15-unet-b2-64": sd15_unet,
    # Diffuse's side holds 16-bit weights (-w16: float32 compute, -bf16: bfloat16 compute); PyTorch's is
    # diffusers' default float32 model, the reference of issue #18's targets.
    "sd15-unet-b2-64-w16": sd15_unet,
    "sd15-unet-b2-64-bf16": sd15_unet,
    "sd-unet-small-train-b8": sd_unet_small_train,
    "sd-small-train-b32": sd_small_train,
    "sd15-lora-train-256": sd15_lora_train,
}
for _m, _k, _n in SD_PRODUCTS:
    for _mode in ("", "-w16", "-bf16"):
        WORKLOADS[f"gemm-sd-{_m}x{_k}x{_n}{_mode}"] = lambda m=_m, k=_k, n=_n, mode=_mode: sd_product(m, k, n, mode)


def sd15_vae(decode):
    """Stable Diffusion 1.5's VAE (random weights): a 1×4×64×64 latent to 512×512, or a 512×512 image to the posterior."""
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    model = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                          block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512).eval()
    data = torch.randn(1, 4, 64, 64) if decode else torch.randn(1, 3, 512, 512)

    def run():
        with torch.no_grad():
            if decode:
                model.decode(data)
            else:
                model.encode(data).latent_dist.mean
    return run


WORKLOADS["sd15-vae-decode-64"] = lambda: sd15_vae(decode=True)
WORKLOADS["sd15-vae-encode-512"] = lambda: sd15_vae(decode=False)


def sd15_txt2img():
    """diffusers' StableDiffusionPipeline at Stable Diffusion 1.5's configuration, random weights (CLIP ViT-L/14's
    text tower, the SD 1.5 UNet and VAE, the full CLIP tokenizer built from openai's merges file), SD 1.5's
    scheduler configuration as DPMSolverMultistepScheduler: a prompt, 20 steps, guidance 7.5, 512x512, decoded.
    DIFFUSE_BENCH_TXT2IMG=SIZE:STEPS makes it small (to check that the row starts)."""
    import gzip
    import json
    import os
    import tempfile
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    size, steps = (int(v) for v in os.environ.get("DIFFUSE_BENCH_TXT2IMG", "512:20").split(":"))
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=0, eos_token_id=2,
        pad_token_id=1)).eval()
    unet = UNet2DConditionModel(**SD15_UNET).eval()
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512).eval()
    scheduler = DPMSolverMultistepScheduler.from_config({
        "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
        "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
        "trained_betas": None})
    # The CLIP tokenizer files from openai's merges file, as openai/CLIP builds its vocabulary.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    vocab_path = os.environ.get("DIFFUSE_CLIP_VOCAB", os.path.join(root, "data", "clip", "bpe_simple_vocab_16e6.txt.gz"))
    merges = [tuple(m.split()) for m in gzip.open(vocab_path).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]]
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    characters = [chr(c) for c in cs]
    vocab = characters + [c + "</w>" for c in characters] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    folder = tempfile.mkdtemp(prefix="diffuse-bench-tokenizer-")
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(dict(zip(vocab, range(len(vocab)))), f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tokenizer = CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"), model_max_length=77,
                              pad_token="<|endoftext|>")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def run():
        with torch.no_grad():
            pipe("a photo of an astronaut riding a horse on mars", height=size, width=size, num_inference_steps=steps,
                 guidance_scale=7.5, generator=torch.Generator().manual_seed(1), output_type="pt")
    return run


WORKLOADS["sd15-txt2img-512-20"] = sd15_txt2img
# Diffuse's -bf16 row holds bfloat16 weights and computes in bfloat16; PyTorch's side is the float32 pipeline.
WORKLOADS["sd15-txt2img-512-20-bf16"] = sd15_txt2img


def shaped_convolution(name):
    """`conv-fwd:BATCH:IN:OUT:SIZE[:kK][:sS]` or `conv-bwd:...`: one layer's shape (not a make bench row)."""
    parts = name.split(":")
    if len(parts) < 5 or parts[0] not in ("conv-fwd", "conv-bwd"):
        return None
    batch, channels, out_channels, size = map(int, parts[1:5])
    options = {"k": 3, "s": 1}
    for option in parts[5:]:
        options[option[0]] = int(option[1:])
    make = conv_forward if parts[0] == "conv-fwd" else conv_backward
    return lambda: make(batch, channels, size, out_channels, options["k"], options["s"])


def shaped_attention(name):
    """`attention-fwd:BATCH:HEADS:TOKENS:KEYS:DEPTH` or `attention-fwdbwd:...`: one attention layer's shape, each
    operand split into heads from [batch, tokens, heads * depth] as diffusers' attention processor does."""
    parts = name.split(":")
    if len(parts) != 6 or parts[0] not in ("attention-fwd", "attention-fwdbwd"):
        return None
    batch, heads, tokens, keys, depth = map(int, parts[1:])
    return lambda: attention_layer(batch, heads, tokens, keys, depth, parts[0] == "attention-fwdbwd")


def attention_layer(batch, heads, tokens, keys, depth, backward):
    q = torch.randn(batch, tokens, heads * depth, requires_grad=backward)
    k, v = (torch.randn(batch, keys, heads * depth, requires_grad=backward) for _ in range(2))
    upstream = torch.randn(batch, heads, tokens, depth)

    def split(tensor):
        return tensor.view(batch, tensor.shape[1], heads, depth).transpose(1, 2)

    def run():
        if backward:
            F.scaled_dot_product_attention(split(q), split(k), split(v)).backward(upstream)
            q.grad = k.grad = v.grad = None
        else:
            with torch.no_grad():
                F.scaled_dot_product_attention(split(q), split(k), split(v))
    return run


def shaped_bfloat16_convolution(name):
    """`conv-fwd-bf16:BATCH:IN:OUT:SIZE[:kK][:sS]`: a bfloat16 convolution, channels-last, weights stored in bfloat16."""
    parts = name.split(":")
    if len(parts) < 5 or parts[0] != "conv-fwd-bf16":
        return None
    batch, channels, out_channels, size = map(int, parts[1:5])
    options = {"k": 3, "s": 1}
    for option in parts[5:]:
        options[option[0]] = int(option[1:])
    kernel, stride = options["k"], options["s"]

    def make():
        x = torch.randn(batch, channels, size, size).to(memory_format=torch.channels_last)
        weight = (torch.randn(out_channels, channels, kernel, kernel) * 0.05).to(torch.bfloat16).to(memory_format=torch.channels_last)
        bias = torch.randn(out_channels).to(torch.bfloat16)

        def run():
            with torch.no_grad():
                torch.nn.functional.conv2d(x.to(torch.bfloat16), weight, bias, stride=stride, padding=kernel // 2)
        return run
    return make


def shaped_gemm(name):
    """`gemm:M:N:K:OPS`, OPS nn, nt (B given transposed) or tn (A given transposed): one product's shape."""
    parts = name.split(":")
    if len(parts) != 5 or parts[0] != "gemm" or parts[4] not in ("nn", "nt", "tn"):
        return None
    m, n, k = map(int, parts[1:4])
    a = torch.randn(k, m).t() if parts[4] == "tn" else torch.randn(m, k)
    b = torch.randn(n, k).t() if parts[4] == "nt" else torch.randn(k, n)

    def make():
        def run():
            with torch.no_grad():
                torch.mm(a, b)
        return run
    return make


def main():
    prepared = {}
    for line in sys.stdin:
        parts = line.split()
        if not parts:
            continue
        command = parts[0]
        if command == "setup":
            name = parts[1] if len(parts) > 1 else ""
            make = (WORKLOADS.get(name) or shaped_convolution(name) or shaped_bfloat16_convolution(name) or shaped_gemm(name)
                    or shaped_attention(name))
            if make is None:
                print(f"error unknown workload {name}", flush=True)
                continue
            prepared = {name: make()}
            print("ok", flush=True)
        elif command == "run":
            body = prepared.get(parts[1] if len(parts) > 1 else "")
            if body is None:
                print("error not set up", flush=True)
                continue
            start = time.perf_counter()
            partial = body()
            elapsed = partial if partial is not None else time.perf_counter() - start
            print(f"{elapsed * 1000:.4f}", flush=True)
        elif command == "rss":
            print(f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}", flush=True)
        elif command == "quit":
            return
        else:
            print(f"error unknown command {command}", flush=True)


if __name__ == "__main__":
    main()
