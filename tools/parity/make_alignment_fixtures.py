"""Reference fixtures for the alignment metrics (tests/it/parity_alignment.rs): HPSv2 and
PickScore, made by the packages that define them.

- HPSv2: a tiny CLIP built with the open_clip that the `hpsv2` package vendors
  (`hpsv2.src.open_clip.model.CLIP`, the class `hpsv2.score` loads its checkpoint into),
  saved as HPSv2 ships its checkpoint (`torch.save({"state_dict": ...})`), scored with
  `hpsv2.score`'s formula: `model(image, text)` -> normalised features -> the diagonal of
  `image_features @ text_features.T`.
- PickScore: a tiny transformers `CLIPModel` (exact GELU, as ViT-H/14), saved with
  `save_pretrained`, scored with its model card's formula: `logit_scale.exp()` x
  normalised text embeds @ normalised image embeds.

Images are at the models' own size (28 x 28), so CLIP's resize is the identity and the
pixels are [-1, 1] -> [0, 1] -> OpenAI's mean and std, as for the aesthetic fixture.

    tools/parity/make_alignment_fixtures.py [OUT]   (default OUT: tests/fixtures/parity/alignment)
"""

import importlib.metadata
import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file

import hpsv2
import transformers
from hpsv2.src.open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/parity/alignment"
torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
VOCAB, CONTEXT, EMBED = 64, 8, 16


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed):
    return torch.randn(*shape, generator=gen(seed), dtype=torch.float32)


def perturb(model, seed):
    """Every 1-D parameter (norms' scales and shifts, biases, class token) moved off its
    init by N(0, 0.1²): swapped or misnamed ones then change the outputs."""
    g = gen(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def inputs():
    images = 0.7 * randn(3, 3, 28, 28, seed=2)
    pixels = ((images * 0.5 + 0.5).clamp(0, 1) - MEAN) / STD
    # Start token, a few tokens, the end token (the largest id), padding 0 as open_clip pads.
    ids = torch.zeros(3, CONTEXT, dtype=torch.long)
    for i, n in enumerate([3, 6, 1]):
        ids[i, 0] = VOCAB - 2
        ids[i, 1 : 1 + n] = torch.randint(1, VOCAB - 2, (n,), generator=gen(10 + i))
        ids[i, 1 + n] = VOCAB - 1
    return images, pixels, ids


def save_tensors(path, tensors):
    save_file({k: v.detach().contiguous().to(torch.float32) for k, v in tensors.items()}, path)


def hps(images, pixels, ids):
    vision = dict(layers=2, width=32, head_width=8, patch_size=7, image_size=28)
    text = dict(context_length=CONTEXT, vocab_size=VOCAB, width=32, heads=4, layers=2)
    torch.manual_seed(1)
    model = CLIP(
        EMBED, CLIPVisionCfg(**vision), CLIPTextCfg(**text), quick_gelu=False, output_dict=True
    ).eval()
    perturb(model, 3)
    os.makedirs(os.path.join(OUT, "hps"))
    torch.save({"state_dict": model.state_dict()}, os.path.join(OUT, "hps", "HPS_v2.1_compressed.pt"))
    with open(os.path.join(OUT, "hps", "open_clip_config.json"), "w") as f:
        json.dump({"embed_dim": EMBED, "vision_cfg": vision, "text_cfg": text}, f, indent=1)
    with torch.no_grad():
        out = model(pixels, ids)
        scores = torch.diagonal(out["image_features"] @ out["text_features"].T)
    save_tensors(
        os.path.join(OUT, "hps_io.safetensors"),
        {
            "images": images,
            "input_ids": ids.to(torch.float32),
            "image_features": out["image_features"],
            "text_features": out["text_features"],
            "scores": scores,
        },
    )


def pickscore(images, pixels, ids):
    tc = CLIPTextConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=CONTEXT,
        hidden_act="gelu",
        bos_token_id=VOCAB - 2,
        eos_token_id=VOCAB - 1,
        pad_token_id=0,
    )
    vc = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_hidden_layers=2,
        image_size=28,
        patch_size=7,
        hidden_act="gelu",
    )
    cfg = CLIPConfig(text_config=tc.to_dict(), vision_config=vc.to_dict(), projection_dim=EMBED)
    torch.manual_seed(4)
    model = CLIPModel(cfg).eval()
    perturb(model, 5)
    with torch.no_grad():
        model.logit_scale.fill_(4.2)  # not the init ln(1/0.07): the file's value must be read
    model.save_pretrained(os.path.join(OUT, "pickscore"))
    with torch.no_grad():
        img = model.get_image_features(pixel_values=pixels)
        txt = model.get_text_features(input_ids=ids)
        if not torch.is_tensor(img):  # transformers 5 returns a model output
            img, txt = img.pooler_output, txt.pooler_output
        img = img / torch.norm(img, dim=-1, keepdim=True)
        txt = txt / torch.norm(txt, dim=-1, keepdim=True)
        scores = model.logit_scale.exp() * torch.diagonal(txt @ img.T)
    save_tensors(
        os.path.join(OUT, "pickscore_io.safetensors"),
        {"images": images, "input_ids": ids.to(torch.float32), "scores": scores},
    )


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    images, pixels, ids = inputs()
    hps(images, pixels, ids)
    pickscore(images, pixels, ids)
    with open(os.path.join(OUT, "VERSIONS.json"), "w") as f:
        versions = {"torch": torch.__version__, "transformers": transformers.__version__}
        versions["hpsv2"] = importlib.metadata.version("hpsv2")
        json.dump(versions, f, indent=1)


if __name__ == "__main__":
    main()
