"""Loads a weight folder sqdf writes (`sqdf random-weights OUT`) with the reference libraries'
own `from_pretrained`, and fails on any missing, unexpected or mismatched key.

    tools/parity/check_folder.py OUT
"""

import sys

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

out = sys.argv[1]
problems = []


def check(name, info):
    bad = {k: v for k, v in info.items() if k != "error_msgs" and v} | (
        {"error_msgs": info["error_msgs"]} if info.get("error_msgs") else {}
    )
    print(f"{name}: {'OK' if not bad else bad}")
    if bad:
        problems.append(name)


unet, info = UNet2DConditionModel.from_pretrained(f"{out}/unet", output_loading_info=True, torch_dtype=torch.float32)
check("unet", info)
vae, info = AutoencoderKL.from_pretrained(f"{out}/vae", output_loading_info=True, torch_dtype=torch.float32)
check("vae", info)
text, info = CLIPTextModel.from_pretrained(f"{out}/text_encoder", output_loading_info=True, torch_dtype=torch.float32)
check("text_encoder", info)
clip, info = CLIPModel.from_pretrained(f"{out}/clip-vit-large-patch14", output_loading_info=True, torch_dtype=torch.float32)
check("clip", info)
tok = CLIPTokenizer.from_pretrained(f"{out}/tokenizer")

# One forward of each, at the folder's sizes.
with torch.no_grad():
    ids = tok(["a cat"], padding="max_length", max_length=text.config.max_position_embeddings,
              truncation=True, return_tensors="pt").input_ids
    states = text(ids).last_hidden_state
    s = unet.config.sample_size
    eps = unet(torch.randn(1, unet.config.in_channels, s, s), 10, encoder_hidden_states=states).sample
    img = vae.decode(torch.randn(1, vae.config.latent_channels, s, s)).sample
    enc = vae.encode(img).latent_dist.mean
    v = clip.config.vision_config
    emb = clip.get_image_features(pixel_values=torch.randn(1, 3, v.image_size, v.image_size))
print("forward: text", tuple(states.shape), "eps", tuple(eps.shape), "image", tuple(img.shape),
      "encoded", tuple(enc.shape))
sys.exit(1 if problems else 0)
