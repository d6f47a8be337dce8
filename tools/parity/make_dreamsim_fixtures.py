"""Reference fixture for the DreamSim diversity metric (the `dreamsim` package, Fu et al. 2023,
its default "ensemble": DINO ViT-B/16 `cls`, CLIP ViT-B/16 `embedding`, OpenCLIP ViT-B/16
`embedding`, concatenated, with the released LoRA on every block's `attn.qkv`), made by the
package's own code at a tiny size, with random weights and no download.

How: tiny random backbones are written in the layout of the files a real `dreamsim()` call
reads from its `cache_dir` (OUT/models here):

- `checkpoints/dino_vitbase16_pretrain.pth`: the plain state dict torch.hub's DINO
  `dino_vitb16` loads strictly into DINO's `vit_base(patch_size=16, num_classes=0)`
  (torch.hub puts the file it downloads there, as `torch.hub.set_dir(cache_dir)` is set);
- `dino_vitb16_pretrain.pth`: `{"student": {"module.head.*"}}`, the DINO head dreamsim
  requires to exist (used only for DINO `embedding` features, never by the ensemble);
- `clip_vitb16_pretrain.pth.tar`, `open_clip_vitb16_pretrain.pth.tar`:
  `{"state_dict": {DINO-ViT keys..., "pos_drop.*" (ln_pre), "norm.*" (ln_post), "proj"}}`,
  as `load_clip_as_dino` / `load_open_clip_as_dino` read them;
- `ensemble_lora/adapter_config.json` + `adapter_model.safetensors`: a peft LoRA
  (target_modules ["qkv"], rank 4, alpha 3) put on a tiny `PerceptualModel` with
  `get_peft_model` and written by `save_pretrained`, as dreamsim's training/train.py does,
  with random nonzero A and B.

Then `dreamsim.dreamsim(pretrained=True, cache_dir=OUT/models, device="cpu")` runs unchanged
(its files exist, so nothing is downloaded), except: `torch.hub.load` builds a tiny DINO ViT
(dreamsim's vendored copy of DINO's vision_transformer.py, the same code as the hub's) and loads
the checkpoint as DINO's hubconf does; `vit_base` in load_clip_as_dino / load_open_clip_as_dino
builds a tiny ViT; `dreamsim_args["img_size"]` is 48 (the tiny ViTs' size, 3 x 3 patches of 16)
instead of 224. DINO keeps 12 blocks because dreamsim hooks block 11 for its `cls` feature.
Every 1-D parameter is moved off its init, class tokens, position embeddings and projections are
random, so a misnamed or ignored key changes the outputs.

dreamsim_io.safetensors holds, for 4 images at 48 x 48 in [0, 1], each backbone's feature
(dreamsim's `extract_feats_list[i]`, with and without the adapter), the concatenation, `embed`
(normalize_embeds=True), the 4 x 4 distances `model(a, b)` and their mean over pairs i < j; and
a 64 x 40 (W x H) 8-bit image before and after dreamsim's `preprocess` (PIL bicubic to 48 x 48,
ToTensor) with its embedding.

    tools/parity/make_dreamsim_fixtures.py [OUT]   (default OUT: tests/fixtures/parity/dreamsim)
"""

import importlib.metadata
import json
import os
import shutil
import sys
from functools import partial

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

import dreamsim
import dreamsim.config
import dreamsim.feature_extraction.load_clip_as_dino as load_clip
import dreamsim.feature_extraction.load_open_clip_as_dino as load_open_clip
import peft
import PIL
from dreamsim import PerceptualModel
from dreamsim.feature_extraction.vision_transformer import VisionTransformer
from peft import LoraConfig, get_peft_model

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/parity/dreamsim"
MODELS = os.path.join(OUT, "models")
torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)

IMG = 48
# Distinct widths per backbone, so a swapped file or config cannot go unnoticed.
CONFIGS = {
    "dino_vitb16": dict(img_size=IMG, patch_size=16, embed_dim=24, depth=12, num_heads=3, mlp_ratio=4,
                        ln_eps=1e-6, act="gelu", feature="output of block 11 (the last), token 0, no final norm"),
    "clip_vitb16": dict(img_size=IMG, patch_size=16, embed_dim=32, depth=2, num_heads=4, mlp_ratio=4,
                        ln_eps=1e-5, act="quick_gelu", proj_dim=16,
                        feature="final norm, token 0, @ proj"),
    "open_clip_vitb16": dict(img_size=IMG, patch_size=16, embed_dim=40, depth=3, num_heads=5, mlp_ratio=4,
                             ln_eps=1e-5, act="gelu", proj_dim=20,
                             feature="final norm, token 0, @ proj"),
}
LORA = dict(r=4, lora_alpha=3.0, lora_dropout=0.3, bias="none", target_modules=["qkv"])
DINO_HEAD = dict(hidden=8, bottleneck=4, out=6)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def tiny_vit(name):
    c = CONFIGS[name]
    return VisionTransformer(
        img_size=[c["img_size"]], patch_size=c["patch_size"], num_classes=0, embed_dim=c["embed_dim"],
        depth=c["depth"], num_heads=c["num_heads"], mlp_ratio=c["mlp_ratio"], qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
    )


def random_state(name, seed):
    """A tiny backbone's state dict in the layout of the file dreamsim loads for it."""
    torch.manual_seed(seed)
    vit = tiny_vit(name)
    if "clip" in name:
        vit.pos_drop = nn.LayerNorm(vit.embed_dim)  # ln_pre, as load_*clip_as_dino does
    g = gen(seed + 1)
    with torch.no_grad():
        vit.cls_token.copy_(0.5 * torch.randn(vit.cls_token.shape, generator=g))
        vit.pos_embed.copy_(0.5 * torch.randn(vit.pos_embed.shape, generator=g))
        for _, p in vit.named_parameters():
            if p.dim() == 1:  # norms' scales and shifts, biases: off their init
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    sd = {k: v.detach().clone().contiguous() for k, v in vit.state_dict().items()}
    if "clip" in name:
        d = CONFIGS[name]["embed_dim"]
        sd["proj"] = torch.randn(d, CONFIGS[name]["proj_dim"], generator=g) / d**0.5
    return sd


def write_backbones():
    os.makedirs(os.path.join(MODELS, "checkpoints"))
    torch.save(random_state("dino_vitb16", 10), os.path.join(MODELS, "checkpoints", "dino_vitbase16_pretrain.pth"))
    g, h = gen(20), DINO_HEAD
    d = CONFIGS["dino_vitb16"]["embed_dim"]
    head = {
        "module.head.mlp.0.weight": torch.randn(h["hidden"], d, generator=g),
        "module.head.mlp.0.bias": torch.randn(h["hidden"], generator=g),
        "module.head.mlp.2.weight": torch.randn(h["hidden"], h["hidden"], generator=g),
        "module.head.mlp.2.bias": torch.randn(h["hidden"], generator=g),
        "module.head.mlp.4.weight": torch.randn(h["bottleneck"], h["hidden"], generator=g),
        "module.head.mlp.4.bias": torch.randn(h["bottleneck"], generator=g),
        "module.head.last_layer.weight": torch.randn(h["out"], h["bottleneck"], generator=g),
    }
    torch.save({"student": head}, os.path.join(MODELS, "dino_vitb16_pretrain.pth"))
    for name, seed in [("clip_vitb16", 30), ("open_clip_vitb16", 40)]:
        torch.save({"state_dict": random_state(name, seed)}, os.path.join(MODELS, f"{name}_pretrain.pth.tar"))


def fake_hub_load(repo, model, *args, **kwargs):
    """DINO's hubconf `dino_vitb16`, tiny: vit_base(patch_size=16, num_classes=0) loaded strictly
    from the file torch.hub downloads to <hub dir>/checkpoints/."""
    assert (repo, model) == ("facebookresearch/dino:main", "dino_vitb16"), (repo, model)
    vit = tiny_vit("dino_vitb16")
    path = os.path.join(torch.hub.get_dir(), "checkpoints", "dino_vitbase16_pretrain.pth")
    vit.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return vit


def patch_dreamsim():
    torch.hub.load = fake_hub_load
    load_clip.vit_base = lambda patch_size: tiny_vit("clip_vitb16")
    load_open_clip.vit_base = lambda patch_size: tiny_vit("open_clip_vitb16")
    dreamsim.config.dreamsim_args["img_size"] = IMG  # model.py holds the same dict


def write_adapter():
    """As training/train.py: get_peft_model(PerceptualModel, LoraConfig(target_modules=["qkv"]))
    and save_pretrained; A and B random (B is zero at init)."""
    args = dreamsim.config.dreamsim_args["model_config"]["ensemble"]
    model = PerceptualModel(**args, device="cpu", load_dir=MODELS, normalize_embeds=True)
    model = get_peft_model(model, LoraConfig(**LORA))
    g = gen(50)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lora_A" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif "lora_B" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    path = os.path.join(MODELS, "ensemble_lora")
    model.save_pretrained(path)
    os.remove(os.path.join(path, "README.md"))


def inputs():
    g = gen(60)
    base = torch.rand(3, 3, IMG, IMG, generator=g)
    near = (base[0] + 0.05 * torch.randn(3, IMG, IMG, generator=g)).clamp(0, 1)
    return torch.cat([base[:1], near[None], base[1:]])  # images 0 and 1 alike


def raw_image():
    rng = np.random.default_rng(70)
    y, x = np.mgrid[0:40, 0:64]
    smooth = np.stack([128 + 100 * np.sin(x / 5.0 + c) * np.cos(y / 7.0 - c) for c in range(3)], -1)
    pixels = np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).round().astype(np.uint8)
    return pixels  # H x W x 3 (40 x 64)


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    patch_dreamsim()
    write_backbones()
    write_adapter()

    model, preprocess = dreamsim.dreamsim(pretrained=True, device="cpu", cache_dir=MODELS,
                                          normalize_embeds=True, dreamsim_type="ensemble")
    base = model.base_model.model  # the PerceptualModel, LoRA layers in place
    images = inputs()
    pixels = raw_image()
    resized = preprocess(Image.fromarray(pixels))
    out = {"images": images, "raw_image_hwc_u8": torch.from_numpy(pixels.astype(np.float32)),
           "raw_image_preprocessed": resized}
    names = ["dino", "clip", "open_clip"]
    with torch.no_grad():
        feats = [base.extract_feats_list[i](images, extractor_index=i).squeeze() for i in range(3)]
        with model.disable_adapter():
            for i, n in enumerate(names):
                out[f"{n}_feature_no_lora"] = base.extract_feats_list[i](images, extractor_index=i).squeeze()
        for n, f in zip(names, feats):
            out[f"{n}_feature"] = f
        out["concat"] = torch.cat(feats, dim=-1)
        out["embedding"] = model.embed(images)
        dist = torch.zeros(4, 4)
        for i in range(4):
            for j in range(4):
                dist[i, j] = model(images[i : i + 1], images[j : j + 1]).squeeze()
        out["distances"] = dist
        iu = torch.triu_indices(4, 4, offset=1)
        out["diversity"] = dist[iu[0], iu[1]].mean().reshape(1)
        out["raw_image_embedding"] = model.embed(resized)
    save_file({k: v.detach().contiguous().to(torch.float32) for k, v in out.items()},
              os.path.join(OUT, "dreamsim_io.safetensors"))
    with open(os.path.join(OUT, "tiny_configs.json"), "w") as f:
        json.dump({"img_size": IMG, "backbones": CONFIGS, "lora": LORA, "dino_head": DINO_HEAD,
                   "order": ["dino_vitb16", "clip_vitb16", "open_clip_vitb16"]}, f, indent=1)
    with open(os.path.join(OUT, "VERSIONS.json"), "w") as f:
        versions = {"torch": torch.__version__, "peft": peft.__version__, "pillow": PIL.__version__}
        for p in ["dreamsim", "torchvision", "open_clip_torch"]:
            versions[p] = importlib.metadata.version(p)
        json.dump(versions, f, indent=1)


if __name__ == "__main__":
    main()
