"""Reference fixtures for tests/it/parity.rs, made by the libraries sqdf's SD-1.5 path follows.

Tiny random models are built in diffusers' / transformers' / peft's own classes, saved with
their own `save_pretrained` (and diffusers' LoRA writers), and run on recorded inputs; the
inputs and outputs go into safetensors files beside them. The Rust tests load the saved
models through sqdf's real loaders and compare. Nothing here is computed by sqdf.

    tools/parity/make_fixtures.py [OUT]      (default OUT: tests/fixtures/parity)

See tools/parity/README.md for the pinned versions. The output is deterministic for given
library versions (CPU, float32, fixed seeds).
"""

import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file

import diffusers
import peft
import transformers
from diffusers import AutoencoderKL, DDIMScheduler, LCMScheduler, UNet2DConditionModel
from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
)

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/parity"
SD = os.path.join(OUT, "sd")  # a diffusers-layout folder, as sqdf's sd15 task reads it

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed):
    return torch.randn(*shape, generator=gen(seed), dtype=torch.float32)


def perturb(model, seed):
    """Random norms (scale 1 + N(0, 0.1²), shift N(0, 0.1²)) and biases: the libraries'
    inits leave them at 1 and 0, where a swapped scale and shift would go unnoticed."""
    g = gen(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and ("norm" in name or "layrnorm" in name) and name.endswith("weight"):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def save_tensors(name, tensors, meta=None):
    tensors = {k: v.detach().contiguous().to(torch.float32) for k, v in tensors.items()}
    save_file(tensors, os.path.join(OUT, name), metadata=meta)


# ---------------------------------------------------------------------------------------
# Tokenizer: a small byte-level BPE (every byte with and without </w>, merges learned here
# from a little corpus, the two special tokens last) in SD-1.5's tokenizer-folder form
# (vocab.json + merges.txt); the ids are transformers' CLIPTokenizer's.


def bytes_to_unicode():
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


CORPUS = """a photo of a cat sitting on the mat. the cat's hat is red, the dog's is blue!
a painting of a dog in the snow; a café in paris at night, crème brûlée and naïve art.
οδός και θάλασσα, σοφία. 한국어 고양이 사진. photo photograph photos 1234567890
an astronaut riding a horse on the moon, highly detailed, 4k, trending on artstation"""


def learn_merges(text, n):
    import re

    b2u = bytes_to_unicode()
    pat = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+""")
    words = {}
    for w in pat.findall(text.lower()):
        syms = tuple(b2u[b] for b in w.encode("utf-8"))
        syms = syms[:-1] + (syms[-1] + "</w>",)
        words[syms] = words.get(syms, 0) + 1
    merges = []
    for _ in range(n):
        pairs = {}
        for w, c in words.items():
            for p in zip(w, w[1:]):
                pairs[p] = pairs.get(p, 0) + c
        if not pairs:
            break
        best = max(sorted(pairs), key=lambda p: pairs[p])
        merges.append(best)
        new = {}
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] = c
        words = new
    return merges


def make_tokenizer():
    b2u = bytes_to_unicode()
    vocab = {}
    for b in range(256):
        vocab[b2u[b]] = len(vocab)
    for b in range(256):
        vocab[b2u[b] + "</w>"] = len(vocab)
    merges = learn_merges(CORPUS, 160)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    d = os.path.join(SD, "tokenizer")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(d, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return CLIPTokenizer.from_pretrained(d), len(vocab)


PROMPTS = [
    "a photo of a cat",
    "A Photo  of a CAT,\tsitting on the mat!",
    "the cat's hat isn't red; it'll be blue",
    "cafe\u0301 cre\u0300me bru\u0302le\u0301e",  # decomposed accents (NFC composes them)
    "café crème brûlée",
    "\u1100\u1161\u11a8 \u1112\u1161\u11ab",  # Hangul jamo (NFC: 각 한)
    "한국어 고양이",
    "ΟΔΟΣ ΣΟΦΙΑΣ σοφία",  # final capital sigma: lowercased to σ, not ς
    "<|ENDOFTEXT|> is text, <|endoftext|> is not",
    "x<|startoftext|>y <|EndOfText|>",
    "Ａｂｃ １２３ ﬁne İstanbul straße",
    "4k, trending on artstation, 1234567890",
    "emoji 🐱‍👤 and\u00a0nbsp\u200bzero-width",
    "",
    "   ",
    "an astronaut riding a horse on the moon, highly detailed, " * 6,
]
PAD_LEN = 77


def tokenizer_fixture(tok):
    rows = []
    for p in PROMPTS:
        ids = tok(p)["input_ids"]
        padded = tok(p, padding="max_length", max_length=PAD_LEN, truncation=True)["input_ids"]
        rows.append({"prompt": p, "ids": ids, "padded": padded})
    with open(os.path.join(OUT, "tokenizer_ids.json"), "w", encoding="utf-8") as f:
        json.dump({"max_length": PAD_LEN, "cases": rows}, f, ensure_ascii=False, indent=1)
    return torch.tensor([r["padded"] for r in rows[:4]] + [rows[7]["padded"]])


# ---------------------------------------------------------------------------------------
# CLIP


def clip_text(tok, vocab_size, ids):
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    bos = tok.convert_tokens_to_ids("<|startoftext|>")
    cfg = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=PAD_LEN,
        projection_dim=16,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    torch.manual_seed(11)
    m = CLIPTextModel(cfg).eval()
    perturb(m, 12)
    m.save_pretrained(os.path.join(SD, "text_encoder"))
    with torch.no_grad():
        o = m(input_ids=ids)
    save_tensors(
        "clip_text_io.safetensors",
        {
            "input_ids": ids.to(torch.float32),
            "last_hidden_state": o.last_hidden_state,
            "pooler_output": o.pooler_output,
        },
    )


def clip_full(tok, vocab_size, ids):
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    tc = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=PAD_LEN,
        bos_token_id=eos - 1,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    vc = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_hidden_layers=2,
        image_size=28,
        patch_size=7,
    )
    cfg = CLIPConfig(text_config=tc.to_dict(), vision_config=vc.to_dict(), projection_dim=16)
    torch.manual_seed(21)
    m = CLIPModel(cfg).eval()
    perturb(m, 22)
    m.save_pretrained(os.path.join(OUT, "clip"))
    pixels = randn(2, 3, 28, 28, seed=23)
    with torch.no_grad():
        image_embeds = m.get_image_features(pixel_values=pixels)
        text_embeds = m.get_text_features(input_ids=ids)
    if not torch.is_tensor(image_embeds):  # transformers 5 returns a model output
        image_embeds = image_embeds.pooler_output
        text_embeds = text_embeds.pooler_output
    save_tensors(
        "clip_io.safetensors",
        {
            "pixel_values": pixels,
            "image_embeds": image_embeds,
            "input_ids": ids.to(torch.float32),
            "text_embeds": text_embeds,
        },
    )


# ---------------------------------------------------------------------------------------
# UNet, with and without LoRA (peft), and the LoRA files in both formats


def unet():
    torch.manual_seed(31)
    m = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=8,
    ).eval()
    perturb(m, 32)
    m.save_pretrained(os.path.join(SD, "unet"))
    x = randn(3, 4, 16, 16, seed=33)
    t = torch.tensor([999.0, 500.0, 1.0])
    ctx = randn(3, 8, 32, seed=34)
    with torch.no_grad():
        eps = m(x, t, encoder_hidden_states=ctx).sample
    io = {"sample": x, "timestep": t, "encoder_hidden_states": ctx, "eps": eps}

    # LoRA on the attention projections and the resnets' 3x3 convolutions (what LCM-LoRA
    # adapts), rank 2, alpha 4 (scale 2: a loader that ignored alpha would be off by 2x).
    rank, alpha = 2, 4
    lcfg = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        init_lora_weights="gaussian",
        target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"],
    )
    m.add_adapter(lcfg)
    g = gen(35)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:  # peft starts B at zero; make the adapter do something
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
        eps_lora = m(x, t, encoder_hidden_states=ctx).sample
    io["eps_lora"] = eps_lora
    save_tensors("unet_io.safetensors", io)

    state = get_peft_model_state_dict(m)
    lora_dir = os.path.join(OUT, "lora")
    meta = lcfg.to_dict()
    meta["target_modules"] = sorted(meta["target_modules"])  # a set: its order varies by run
    # PEFT keys (`unet.<module>.lora_A.weight`), alpha in diffusers' adapter metadata.
    diffusers.StableDiffusionPipeline.save_lora_weights(
        lora_dir,
        unet_lora_layers=state,
        weight_name="peft.safetensors",
        unet_lora_adapter_metadata=meta,
    )
    # What diffusers' LoRA training scripts save: the state converted to diffusers' names
    # (`unet.<module>.lora.down.weight` / `.lora.up.weight`), here with the same metadata.
    diffusers.StableDiffusionPipeline.save_lora_weights(
        lora_dir,
        unet_lora_layers=convert_state_dict_to_diffusers(state),
        weight_name="diffusers.safetensors",
        unet_lora_adapter_metadata=meta,
    )
    # kohya (`lora_unet_<module_with_underscores>.lora_down.weight`, `.alpha`) by diffusers'
    # converter, which writes alpha = rank for every module; kohya's own trainer writes the
    # network alpha there, which is what the adapter above was trained with.
    kohya = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in state.items()})
    for k in list(kohya):
        if k.endswith(".alpha"):
            kohya[k] = torch.tensor(float(alpha))
    save_file({k: v.contiguous() for k, v in kohya.items()}, os.path.join(lora_dir, "kohya.safetensors"))


# ---------------------------------------------------------------------------------------
# VAE


def vae():
    torch.manual_seed(41)
    m = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,  # the image size: the UNet's 16x16 latents, upsampled 2x
    ).eval()
    perturb(m, 42)
    m.save_pretrained(os.path.join(SD, "vae"))
    z = randn(2, 4, 4, 4, seed=43)
    with torch.no_grad():
        img = m.decode(z / m.config.scaling_factor).sample
    save_tensors("vae_io.safetensors", {"latents": z, "image": img})


# ---------------------------------------------------------------------------------------
# Schedulers: SD-1.5's DDIMScheduler config, and LCMScheduler for LCM-LoRA

SD_SCHED = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


def ddim():
    out = {}
    for name, extra, steps in [
        ("leading50", dict(timestep_spacing="leading"), 50),
        ("trailing50", dict(timestep_spacing="trailing", set_alpha_to_one=True), 50),
        # 3 does not divide 1000: diffusers steps 666 -> 333 where the grid goes on at 332
        # (src/diffusion/ddim.rs, Spacing::Trailing).
        ("trailing3", dict(timestep_spacing="trailing", set_alpha_to_one=True), 3),
    ]:
        cfg = dict(SD_SCHED, **extra)
        s = DDIMScheduler(**cfg)
        s.set_timesteps(steps)
        idx = [0, 1, 24, 48, 49] if steps == 50 else list(range(steps))
        x = randn(len(idx), 4, 4, 4, seed=51)
        eps = randn(len(idx), 4, 4, 4, seed=52)
        noise = randn(len(idx), 4, 4, 4, seed=53)
        out[f"{name}.timesteps"] = s.timesteps.to(torch.float32)
        out[f"{name}.index"] = torch.tensor(idx, dtype=torch.float32)
        out[f"{name}.sample"] = x
        out[f"{name}.eps"] = eps
        out[f"{name}.noise"] = noise
        for eta in (0.0, 1.0):
            prev, x0 = [], []
            for j, i in enumerate(idx):
                r = s.step(
                    eps[j : j + 1],
                    s.timesteps[i],
                    x[j : j + 1],
                    eta=eta,
                    variance_noise=noise[j : j + 1],
                )
                prev.append(r.prev_sample)
                x0.append(r.pred_original_sample)
            out[f"{name}.eta{int(eta)}.prev_sample"] = torch.cat(prev)
            out[f"{name}.eta{int(eta)}.x0"] = torch.cat(x0)
    save_tensors("ddim_io.safetensors", out)

    # LCM: the consistency function's output (`denoised`) at the LCM timesteps of 4 steps.
    s = LCMScheduler(**dict(SD_SCHED, timestep_scaling=10.0, original_inference_steps=50))
    s.set_timesteps(4)
    ts = [int(t) for t in s.timesteps]
    x = randn(len(ts), 4, 4, 4, seed=61)
    eps = randn(len(ts), 4, 4, 4, seed=62)
    den = []
    for j, t in enumerate(ts):
        s._step_index = None
        s.set_timesteps(4)
        s._init_step_index(torch.tensor(t))
        den.append(s.step(eps[j : j + 1], t, x[j : j + 1], generator=gen(63)).denoised)
    save_tensors(
        "lcm_io.safetensors",
        {
            "timesteps": torch.tensor(ts, dtype=torch.float32),
            "sample": x,
            "eps": eps,
            "denoised": torch.cat(den),
        },
    )


# ---------------------------------------------------------------------------------------
# The digits UNet sqdf ships (models/digits/unet.safetensors), in diffusers' class: its
# config from the file's metadata, its weights loaded strictly (every key, every shape);
# ε on recorded inputs, the context of prompt c being the file's prompt_embeddings[c].

DIGITS = "models/digits/unet.safetensors"


def digits():
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(DIGITS, "pt") as f:
        cfg = json.loads(f.metadata()["config"])["unet"]
    w = load_file(DIGITS)
    prompts = w.pop("prompt_embeddings")
    m = UNet2DConditionModel(**cfg).eval()
    m.load_state_dict(w, strict=True)
    d = os.path.join(OUT, "digits")
    m.save_config(os.path.join(d, "unet"))
    DDIMScheduler(
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=False,
        timestep_spacing="trailing",
        steps_offset=0,
    ).save_config(os.path.join(d, "scheduler"))
    x = randn(3, 1, 28, 28, seed=71)
    t = torch.tensor([999.0, 479.0, 19.0])
    c = torch.tensor([3, 7, 10])
    with torch.no_grad():
        eps = m(x, t, encoder_hidden_states=prompts[c], class_labels=c).sample
    save_tensors(
        "digits_io.safetensors",
        {"sample": x, "timestep": t, "prompt": c.to(torch.float32), "eps": eps},
    )


# ---------------------------------------------------------------------------------------
# The LAION aesthetic head ("improved aesthetic predictor": an nn.Sequential of Linear
# in -> 1024 -> 128 -> 64 -> 16 -> 1 with dropouts at 1, 3, 5 and no activations), saved as
# its .pth is (torch.save of the state dict, keys `layers.N.*`). The input width is the
# fixture CLIP's projection_dim (16) rather than ViT-L/14's 768, and the weights are f16
# (computed in f32), to keep the file at ~300 KB; the hidden widths are the real ones.


class AestheticMLP(torch.nn.Module):
    def __init__(self, in_dim):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(in_dim, 1024),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(1024, 128),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(64, 16),
            torch.nn.Linear(16, 1),
        )

    def forward(self, x):
        return self.layers(x)


CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def aesthetic():
    clip = CLIPModel.from_pretrained(os.path.join(OUT, "clip")).eval()
    in_dim = clip.config.projection_dim
    torch.manual_seed(81)
    head = AestheticMLP(in_dim).eval()
    # Weights N(0, 1.5² / fan_in) and biases N(0, 0.1²): under torch's default init the
    # five layers shrink the input so much that the score hardly depends on it.
    g = gen(82)
    with torch.no_grad():
        for name, p in head.named_parameters():
            if name.endswith("weight"):
                p.copy_(1.5 * torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    head.half()
    os.makedirs(os.path.join(OUT, "aesthetic"))
    torch.save(head.state_dict(), os.path.join(OUT, "aesthetic", "head.pth"))
    head.float()  # the f16 values, exactly, computed in f32

    def normalized(e):  # LAION's `normalized`: x / ||x||_2 along the last axis
        return e / e.norm(dim=-1, keepdim=True)

    embeds = randn(4, in_dim, seed=83)
    # The reward end to end at the fixture CLIP's own size (28 x 28, so CLIP's resize is
    # the identity): [-1, 1] images -> [0, 1] (clamped) -> CLIP normalisation -> image
    # embedding -> normalised -> head.
    images = 0.7 * randn(2, 3, 28, 28, seed=84)
    pixels = ((images * 0.5 + 0.5).clamp(0, 1) - CLIP_MEAN) / CLIP_STD
    with torch.no_grad():
        scores = head(normalized(embeds)).squeeze(1)
        image_embeds = clip.get_image_features(pixel_values=pixels)
        if not torch.is_tensor(image_embeds):
            image_embeds = image_embeds.pooler_output
        image_scores = head(normalized(image_embeds)).squeeze(1)
    save_tensors(
        "aesthetic_io.safetensors",
        {"embeds": embeds, "scores": scores, "images": images, "image_scores": image_scores},
    )


# ---------------------------------------------------------------------------------------
# CLIP's preprocessing as sqdf documents it (src/rewards/clip_preprocess.rs): [-1, 1] ->
# [0, 1] clamped, resize the shortest side to S with an antialiased triangle (bilinear)
# filter on the float image -- torch's `interpolate(mode="bilinear", antialias=True)`,
# PIL's filter -- then CLIPImageProcessor's geometry (long side int(S * long / short),
# crop offset (n - S) // 2), then CLIP's mean and std. Not CLIPImageProcessor itself: that
# resizes an 8-bit PIL image with a bicubic filter, a documented difference.
# At S = 224 only a grid of rows and columns is kept (the full outputs are 600 KB each).

PRE_CASES = [  # name, (h, w), S
    ("up48x48", (48, 48), 224),
    ("up60x50", (60, 50), 224),  # long side 268, crop rows 22..246
    ("down50x40", (50, 40), 24),  # 40 -> 24 (x 0.6), long side 30, crop rows 3..27
    ("down33x43", (33, 43), 24),  # 33 -> 24, long side 31, crop columns 3..27
]
PRE_GRID = list(range(0, 224, 15)) + [223]


def preprocess():
    out = {}
    for i, (name, (h, w), size) in enumerate(PRE_CASES):
        img = 0.7 * randn(1, 3, h, w, seed=91 + i)
        x = (img * 0.5 + 0.5).clamp(0, 1)
        short, long = min(h, w), max(h, w)
        n = int(size * long / short)
        nh, nw = (n, size) if h >= w else (size, n)
        x = torch.nn.functional.interpolate(
            x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False
        )
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[:, :, top : top + size, left : left + size]
        x = (x - CLIP_MEAN) / CLIP_STD
        out[f"{name}.image"] = img
        if size == 224:
            g = torch.tensor(PRE_GRID)
            x = x[:, :, g][:, :, :, g]
            out[f"{name}.grid"] = g.to(torch.float32)
        out[f"{name}.pixels"] = x
        out[f"{name}.size"] = torch.tensor([float(size)])
    save_tensors("clip_preprocess_io.safetensors", out)


# ---------------------------------------------------------------------------------------
# The LoRA files sqdf writes (src/lora_files: `save_peft`, `save_kohya`), read by diffusers.
# Random adapters (rank 2, trained alpha 4) on the fixture UNet's modules, under sqdf's
# VarMap names (`<module>.lora_A.weight`, peft's names without the `unet.` prefix), are
# written here in sqdf's two layouts:
#   lora/sqdf_peft.safetensors:  `unet.<m>.lora_A.weight` = A, `unet.<m>.lora_B.weight` =
#       (alpha/rank) B, no `lora_adapter_metadata` (the scale folded into B), sqdf's keys;
#   lora/sqdf_kohya.safetensors: `lora_unet_<m_>.lora_down.weight` = A, `.lora_up.weight` =
#       B, `.alpha` = 4 (0-d f32), kohya's `ss_network_*` metadata;
# each is loaded into a fresh UNet by diffusers' own path (`lora_state_dict` +
# `load_lora_into_unet`, what `pipe.load_lora_weights` runs), which must warn of no
# missing or unexpected key and give the trained model's ε. tests/it/parity.rs writes the
# same adapters with sqdf's real writers and compares the files and the ε.

LORA_RANK, LORA_ALPHA = 2, 4


def save_file_sorted_metadata(tensors, path, metadata):
    """`save_file` with the metadata entries in sorted order: safetensors writes them in
    a hash map's order, which varies from run to run. Only the header's bytes move."""
    save_file(tensors, path, metadata=metadata)
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        rest = {k: v for k, v in header.items() if k != "__metadata__"}
        text = json.dumps({"__metadata__": header["__metadata__"], **rest}, separators=(",", ":"))
        text = text.encode("utf-8")
        assert len(text) <= n, "the re-serialised header is longer"
        f.seek(8)
        f.write(text + b" " * (n - len(text)))


class _Warnings(__import__("logging").Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record.getMessage())


def lora_export():
    import logging

    from diffusers import StableDiffusionPipeline

    r = load_unet_io()
    x, t, ctx = r["sample"], r["timestep"], r["encoder_hidden_states"]
    unet_dir = os.path.join(SD, "unet")
    trained = UNet2DConditionModel.from_pretrained(unet_dir).eval()
    lcfg = LoraConfig(
        r=LORA_RANK,
        lora_alpha=LORA_ALPHA,
        target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"],
    )
    trained.add_adapter(lcfg)
    shapes = {k: v.shape for k, v in get_peft_model_state_dict(trained).items()}
    names = sorted(shapes)
    adapters = {}
    for j, k in enumerate(names):
        scale = 0.1 if "lora_A" in k else 0.05
        adapters[k] = scale * randn(*shapes[k], seed=1000 + j)
    # peft's parameter names carry the adapter's name: `<m>.lora_A.default.weight`.
    set_peft_model_state_dict(trained, adapters)
    assert all(torch.equal(get_peft_model_state_dict(trained)[k], v) for k, v in adapters.items())
    with torch.no_grad():
        eps_trained = trained(x, t, encoder_hidden_states=ctx).sample

    lora_dir = os.path.join(OUT, "lora")
    scale = LORA_ALPHA / LORA_RANK
    peft_file = {}
    for k, v in adapters.items():
        peft_file[f"unet.{k}"] = v * scale if k.endswith(".lora_B.weight") else v
    save_file_sorted_metadata(
        {k: v.contiguous() for k, v in peft_file.items()},
        os.path.join(lora_dir, "sqdf_peft.safetensors"),
        {
            "format": "pt",
            "sqdf.rank": str(LORA_RANK),
            "sqdf.trained_alpha": str(LORA_ALPHA),  # Rust's f64 Display of 4.0: "4"
            "sqdf.note": "lora_B holds (trained_alpha/rank) * B: the file means W + B A (alpha = rank)",
        },
    )
    kohya_file = {}
    for k, v in adapters.items():
        m, suffix = k.rsplit(".lora_", 1)
        kn = "lora_unet_" + m.replace(".", "_")
        kohya_file[f"{kn}.lora_down.weight" if suffix == "A.weight" else f"{kn}.lora_up.weight"] = v
        kohya_file[f"{kn}.alpha"] = torch.tensor(float(LORA_ALPHA))
    save_file_sorted_metadata(
        {k: v.contiguous() for k, v in kohya_file.items()},
        os.path.join(lora_dir, "sqdf_kohya.safetensors"),
        {
            "ss_network_module": "networks.lora",
            "ss_network_dim": str(LORA_RANK),
            "ss_network_alpha": str(LORA_ALPHA),
        },
    )

    io = {f"adapter.{k}": v for k, v in adapters.items()}
    io["eps_trained"] = eps_trained
    handler = _Warnings()
    for name in ["diffusers", "peft"]:
        logging.getLogger(name).addHandler(handler)
    for fmt in ["peft", "kohya"]:
        unet = UNet2DConditionModel.from_pretrained(unet_dir).eval()
        state, alphas, meta = StableDiffusionPipeline.lora_state_dict(
            lora_dir, weight_name=f"sqdf_{fmt}.safetensors", return_lora_metadata=True
        )
        StableDiffusionPipeline.load_lora_into_unet(
            state, alphas, unet, adapter_name="sqdf", metadata=meta
        )
        assert not handler.records, f"diffusers warned loading sqdf's {fmt} file: {handler.records}"
        loaded = get_peft_model_state_dict(unet, adapter_name="sqdf")
        assert sorted(loaded) == names, f"{fmt}: adapters loaded differ from the file's"
        with torch.no_grad():
            eps = unet(x, t, encoder_hidden_states=ctx).sample
        # The file means the trained model (rank 2, alpha 4).
        torch.testing.assert_close(eps, eps_trained, rtol=0, atol=1e-5)
        io[f"eps_{fmt}"] = eps
    for name in ["diffusers", "peft"]:
        logging.getLogger(name).removeHandler(handler)
    save_tensors("lora_export_io.safetensors", io)


def load_unet_io():
    from safetensors.torch import load_file

    return load_file(os.path.join(OUT, "unet_io.safetensors"))


# What the other generators own (make_alignment_fixtures.py, make_lpips_fixtures.py,
# make_dreamsim_fixtures.py, make_image_reward_fixtures.py, make_legacy_pth_fixture.py):
# kept as it is.
OTHER_GENERATORS = {"alignment", "lpips", "dreamsim", "image_reward", "legacy_py3.pth"}


def main():
    if os.path.isdir(OUT):
        for name in os.listdir(OUT):
            if name in OTHER_GENERATORS:
                continue
            path = os.path.join(OUT, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    os.makedirs(SD)
    tok, vocab_size = make_tokenizer()
    ids = tokenizer_fixture(tok)
    clip_text(tok, vocab_size, ids)
    clip_full(tok, vocab_size, ids)
    unet()
    vae()
    ddim()
    digits()
    aesthetic()
    preprocess()
    lora_export()
    with open(os.path.join(OUT, "VERSIONS.json"), "w") as f:
        json.dump(
            {
                "torch": torch.__version__,
                "diffusers": diffusers.__version__,
                "transformers": transformers.__version__,
                "peft": peft.__version__,
            },
            f,
            indent=1,
        )


if __name__ == "__main__":
    main()
