"""Reference fixture for the ImageReward alignment metric (Xu et al. 2023), made by the
`image-reward` package's own classes (`ImageReward.ImageReward.ImageReward`, BLIP's
`VisionTransformer` and `med.py` `BertModel`, the package's `MLP` and `_transform`).

The package's `ImageReward` hard-codes ViT-L/16 at 224 (`create_vit('large', 224)`), the
tokenizer `BertTokenizer.from_pretrained('bert-base-uncased')` and `MLP(768)`. To build it at
a tiny size without downloading anything, three names are patched while it is constructed:

- `blip_pretrain.create_vit`: the real `VisionTransformer` with the 'large' branch's
  arguments (qkv bias, LayerNorm eps 1e-6, drop_path_rate 0.1), but embed 48, depth 2,
  4 heads, patch 8, image 32 (4 x 4 patches + the class token = 17 tokens). 48, not the
  text's 32, so that the cross-attention's key/value input width (the ViT's) differs from
  the text width, as 1024 differs from 768 in the real model.
- `blip.BertTokenizer.from_pretrained`: `BertTokenizer(vocab_file=<fixture>/bert-base-uncased/
  vocab.txt)` (a 57-piece vocabulary); the package's `init_tokenizer` then adds `[DEC]` (bos)
  and `[ENC]` (additional special) itself, as for the real vocabulary (30522 -> ids
  30522, 30523; here 57 -> 57, 58).
- `ImageReward.MLP`: the package's `MLP` class with input width 32 (the text hidden size)
  instead of the hard-coded 768; its hidden widths 1024, 128, 64, 16, 1 are the real ones.

`med_config.json` is the tiny BERT (hidden 32, 2 layers, 4 heads, intermediate 64, vocab
57 + 2, 40 positions). Its `encoder_width` is 24 on purpose: `BLIP_Pretrain` overwrites it
with the ViT's width (48 here; BLIP's med_config.json says 768, the real width is 1024), so a
reader must take the cross-attention's key/value input width from the ViT, not the json.

Weights are random: every matrix redrawn at unit-ish scale (N(0, 1/fan_in); embeddings,
class token and position embeddings N(0, 0.5²)) so attention is not uniform and the head's
output is O(1), and every 1-D parameter moved off its init by N(0, 0.1²). The state dict is
saved as the released `ImageReward.pt` is (`torch.save(model.state_dict())`: a flat dict,
keys `blip.visual_encoder.*`, `blip.text_encoder.*` (with the int64 `embeddings.position_ids`
buffer), `blip.vision_proj.*`, `blip.text_proj.*`, `mlp.layers.{0,2,4,6,7}.*`), then loaded
back with the package's own `RM.load(path, device="cpu", med_config=...)`, which is what
scores everything below.

Outputs (`image_reward_io.safetensors`, float32; `image_reward_io.json`):
- 3 images in [0, 1] (multiples of 1/255, so the PIL path sees the same pixels), 32 x 32,
  with 3 prompts tokenised by the package's tokenizer call (`padding='max_length',
  truncation=True, max_length=35`): the batch through `score_gard` (the differentiable path
  ReFL uses), and each pair through `model.score(prompt, PIL image)`, which must agree.
- the tokenizer alone on `TOKENIZER_CASES` (ids in the json).
- one 80 x 104 uint8 image through `model.preprocess` (the package's `_transform(32)`:
  PIL bicubic resize of the short side, centre crop, ToTensor, CLIP mean/std) and
  `model.score`; and the same image / 255 as a tensor through ReFL's tensor transform
  (`Resize(32, BICUBIC)`, `CenterCrop(32)`, `Normalize`) without and with antialias.

The package pins timm 0.6.13 and fairscale 0.4.13 and its `med.py` needs transformers 4.x;
`import ImageReward` also imports `clip`, diffusers, accelerate and datasets. A venv of its own
(pip from PyPI; torch's CUDA wheel runs on the CPU), as VERSIONS.json records:

    python3 -m venv ~/ir-venv
    ~/ir-venv/bin/pip install torch==2.1.2 torchvision==0.16.2 "numpy<2" wheel setuptools
    ~/ir-venv/bin/pip install --no-build-isolation image-reward==1.5 timm==0.6.13 \
        fairscale==0.4.13 transformers==4.36.2 tokenizers==0.15.2 huggingface-hub==0.20.3 \
        diffusers==0.25.1 accelerate==0.26.1 datasets==2.16.1 safetensors==0.4.2 \
        openai-clip==1.0.1 pyarrow==15.0.2 pandas==2.1.4 torch==2.1.2 torchvision==0.16.2 "numpy<2"
    HF_HUB_OFFLINE=1 ~/ir-venv/bin/python tools/parity/make_image_reward_fixtures.py [OUT]
    (default OUT: tests/fixtures/parity/image_reward; two runs write the same bytes)
"""

import importlib.metadata
import json
import os
import shutil
import sys
import warnings

import torch
from PIL import Image
from safetensors.torch import save_file

import ImageReward as RM
import transformers
from ImageReward.models.BLIP import blip as blip_module
from ImageReward.models.BLIP import blip_pretrain as blip_pretrain_module
from ImageReward.models.BLIP.vit import VisionTransformer
from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize

# `ImageReward.ImageReward` the attribute is the class (the package re-exports it); the module:
ir_module = sys.modules["ImageReward.ImageReward"]

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/parity/image_reward"
torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)

IMAGE, PATCH, VIT_WIDTH, VIT_DEPTH, VIT_HEADS = 32, 8, 48, 2, 4
TEXT_WIDTH = 32
MAX_LENGTH = 35  # hard-coded in ImageReward.score / inference_rank

# A WordPiece vocabulary, one piece a line (ids = line numbers), as bert-base-uncased's
# vocab.txt: specials, punctuation, whole words, '##' continuations.
VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "!", "'", ",", "-", ".", "4",
    "a", "an", "and", "at", "by", "in", "of", "on", "the", "under",
    "photo", "cat", "dog", "red", "green", "sit", "rid", "horse", "field", "sky",
    "star", "sun", "night", "cafe", "oil", "paint", "van", "gogh", "astro", "high",
    "detail", "trend", "art", "greg",
    "##s", "##ing", "##ting", "##ed", "##ly", "##ry", "##set", "##naut", "##k", "##station",
    "##e", "##ness",
]
MED_CONFIG = {
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": TEXT_WIDTH,
    "initializer_range": 0.02,
    "intermediate_size": 64,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 40,
    "model_type": "bert",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": len(VOCAB) + 2,  # + [DEC], [ENC], as 30522 + 2 = 30524
    "encoder_width": 24,  # overwritten by BLIP_Pretrain with the ViT's width (48)
    "add_cross_attention": True,
}
PROMPTS = [
    "A photo of a Cat sitting on a red chair.",
    "Café at night,\toil  painting by Van Gogh!!",
    "An astronaut riding a horse in a green field under the starry sky, highly detailed, "
    "sunset, 4K, dogs and cats, trending on artstation, by greg rutkowski and alphonse mucha",
]

# Tokenizer-only cases (ids in the json, no model run): special tokens written in the text (in
# and out of case), composed and combining accents, NBSP and a control character, CJK, mixed
# punctuation, an empty prompt, a word over WordPiece's 100-character limit.
TOKENIZER_CASES = [
    "a [ENC] cat [MASK] [mask] [DEC] [CLS]",
    "CAFÉ cafe\u0301 naïve ÀRT",
    "a\u00a0cat\x07dog\u200bsky  \n field",
    "猫 cat の sky",
    "sun-set's (art) [photo]... \"van\" gogh?",
    "",
    "a " + "e" * 101 + " cat",
]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def tiny_create_vit(vit, image_size, use_grad_checkpointing=False, ckpt_layer=0, drop_path_rate=0):
    """blip.create_vit's 'large' branch at the tiny size."""
    assert vit == "large" and image_size == 224, (vit, image_size)
    visual_encoder = VisionTransformer(
        img_size=IMAGE, patch_size=PATCH, embed_dim=VIT_WIDTH, depth=VIT_DEPTH,
        num_heads=VIT_HEADS, use_grad_checkpointing=use_grad_checkpointing,
        ckpt_layer=ckpt_layer, drop_path_rate=0.1 or drop_path_rate,
    )
    return visual_encoder, VIT_WIDTH


def tokenizer_from(vocab_path):
    class Tokenizer(transformers.BertTokenizer):
        @classmethod
        def from_pretrained(cls, name, *args, **kwargs):
            assert name == "bert-base-uncased", name
            return transformers.BertTokenizer(vocab_file=vocab_path)

    return Tokenizer


def tiny_mlp(input_size):
    assert input_size == 768, input_size
    return ir_module._real_MLP(TEXT_WIDTH)


def patch(vocab_path):
    blip_pretrain_module.create_vit = tiny_create_vit
    blip_module.BertTokenizer = tokenizer_from(vocab_path)
    if not hasattr(ir_module, "_real_MLP"):
        ir_module._real_MLP = ir_module.MLP
    ir_module.MLP = tiny_mlp


def randomise(model, seed):
    g = gen(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            elif "embeddings" in name or name.endswith(("cls_token", "pos_embed")):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)


def save_tensors(path, tensors):
    save_file({k: v.detach().contiguous().to(torch.float32) for k, v in tensors.items()}, path)


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    tok_dir = os.path.join(OUT, "bert-base-uncased")
    os.makedirs(tok_dir)
    vocab_path = os.path.join(tok_dir, "vocab.txt")
    with open(vocab_path, "w") as f:
        f.write("".join(t + "\n" for t in VOCAB))
    med_path = os.path.join(OUT, "med_config.json")
    with open(med_path, "w") as f:
        json.dump(MED_CONFIG, f, indent=2)
    patch(vocab_path)

    torch.manual_seed(1)
    built = ir_module.ImageReward(med_config=med_path, device="cpu")
    randomise(built, 2)
    ckpt = os.path.join(OUT, "ImageReward.pt")
    torch.save(built.state_dict(), ckpt)

    # The package's own loader: torch.load -> ImageReward(...) -> load_state_dict(strict=False) -> eval().
    model = RM.load(ckpt, device="cpu", med_config=med_path)
    loaded, saved = model.state_dict(), torch.load(ckpt, map_location="cpu")
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert not model.training
    model.preprocess = ir_module._transform(IMAGE)  # ImageReward.__init__ hard-codes _transform(224)
    tok = model.blip.tokenizer
    assert (tok.bos_token_id, tok.enc_token_id) == (len(VOCAB), len(VOCAB) + 1)

    # Three 32 x 32 images, pixel values k / 255.
    images = torch.randint(0, 256, (3, 3, IMAGE, IMAGE), generator=gen(3)).to(torch.float32) / 255
    norm = Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    pixels = norm(images)
    text = tok(PROMPTS, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    with torch.no_grad():
        image_embeds = model.blip.visual_encoder(pixels)
        atts = torch.ones(image_embeds.size()[:-1], dtype=torch.long)
        hidden = model.blip.text_encoder(
            text.input_ids, attention_mask=text.attention_mask, encoder_hidden_states=image_embeds,
            encoder_attention_mask=atts, return_dict=True,
        ).last_hidden_state
        text_features = hidden[:, 0, :].float()
        mlp_out = model.mlp(text_features)
        scores = model.score_gard(text.input_ids, text.attention_mask, pixels)
    assert torch.equal(scores, (mlp_out - model.mean) / model.std)
    pil_scores = []
    for i, prompt in enumerate(PROMPTS):
        arr = (images[i] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        pil = Image.fromarray(arr, "RGB")
        assert torch.equal(model.preprocess(pil), pixels[i])
        with torch.no_grad():
            pil_scores.append(model.score(prompt, pil))
    pil_scores = torch.tensor(pil_scores, dtype=torch.float32)
    assert torch.allclose(pil_scores, scores[:, 0], atol=1e-5), (pil_scores, scores)
    with torch.no_grad():
        _, ranked = model.inference_rank(PROMPTS[0], [Image.fromarray(
            (images[i] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy(), "RGB") for i in range(3)])

    # One 80 x 104 image through the package's PIL preprocess, and through ReFL's tensor path.
    big = torch.randint(0, 256, (80, 104, 3), generator=gen(4), dtype=torch.uint8)
    big_pil = Image.fromarray(big.numpy(), "RGB")
    big_pixels = model.preprocess(big_pil).unsqueeze(0)
    rw, rh = model.preprocess.transforms[0](big_pil).size  # PIL: (width, height)
    with torch.no_grad():
        big_score = model.score(PROMPTS[0], big_pil)
        big_score_gard = model.score_gard(text.input_ids[:1], text.attention_mask[:1], big_pixels)
    assert abs(big_score - big_score_gard.item()) < 1e-5
    big_tensor = big.permute(2, 0, 1).unsqueeze(0).to(torch.float32) / 255
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 0.16's "antialias default will change" warning
        refl = Compose([Resize(IMAGE, interpolation=InterpolationMode.BICUBIC), CenterCrop(IMAGE), norm])
        refl_pixels = refl(big_tensor)  # as ReFL.py calls it: torchvision <= 0.16 -> antialias False
    refl_aa = Compose([
        Resize(IMAGE, interpolation=InterpolationMode.BICUBIC, antialias=True), CenterCrop(IMAGE), norm,
    ])(big_tensor)  # torchvision >= 0.17's default
    with torch.no_grad():
        refl_scores = model.score_gard(
            text.input_ids[:1].repeat(2, 1), text.attention_mask[:1].repeat(2, 1),
            torch.cat([refl_pixels, refl_aa]),
        )

    save_tensors(
        os.path.join(OUT, "image_reward_io.safetensors"),
        {
            "images": images,
            "pixels": pixels,
            "input_ids": text.input_ids.to(torch.float32),
            "attention_mask": text.attention_mask.to(torch.float32),
            "image_embeds": image_embeds,
            "text_hidden": hidden,
            "text_features": text_features,
            "mlp_out": mlp_out,
            "scores": scores[:, 0],
            "pil_scores": pil_scores,
            "rank_scores_prompt0": torch.tensor(ranked, dtype=torch.float32),
            "big_image_u8": big.permute(2, 0, 1).to(torch.float32),
            "big_pixels": big_pixels,
            "big_score": torch.tensor([big_score], dtype=torch.float32),
            "refl_pixels": refl_pixels,
            "refl_pixels_antialias": refl_aa,
            "refl_scores": refl_scores[:, 0],
        },
    )
    meta = {
        "prompts": PROMPTS,
        "tokens": [tok.convert_ids_to_tokens(ids) for ids in text.input_ids.tolist()],
        "input_ids": text.input_ids.tolist(),
        "attention_mask": text.attention_mask.tolist(),
        "max_length": MAX_LENGTH,
        "tokenizer_cases": TOKENIZER_CASES,
        "tokenizer_case_ids": [
            tok(c, padding="max_length", truncation=True, max_length=MAX_LENGTH).input_ids
            for c in TOKENIZER_CASES
        ],
        "special_ids": {
            "pad": tok.pad_token_id, "unk": tok.unk_token_id, "cls": tok.cls_token_id,
            "sep": tok.sep_token_id, "mask": tok.mask_token_id, "dec_bos": tok.bos_token_id,
            "enc": tok.enc_token_id,
        },
        "vit": {"image_size": IMAGE, "patch_size": PATCH, "embed_dim": VIT_WIDTH, "depth": VIT_DEPTH,
                "num_heads": VIT_HEADS, "mlp_ratio": 4.0, "qkv_bias": True, "layer_norm_eps": 1e-6},
        "mlp_in": TEXT_WIDTH,
        "mean": model.mean,
        "std": model.std,
        "big_image": {"height": 80, "width": 104, "resized_hw": [rh, rw],
                      "crop_top_left": [int(round((rh - IMAGE) / 2.0)), int(round((rw - IMAGE) / 2.0))],
                      "prompt": 0},
        "refl_scores": ["antialias False (torchvision <= 0.16, as ReFL.py ran)",
                        "antialias True (torchvision >= 0.17 default)"],
    }
    meta["tokens"] = [" ".join(t) for t in meta["tokens"]]  # pieces have no spaces
    meta["tokenizer_case_tokens"] = [" ".join(tok.convert_ids_to_tokens(i)) for i in meta["tokenizer_case_ids"]]
    with open(os.path.join(OUT, "image_reward_io.json"), "w") as f:
        items = [f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in meta.items()]
        f.write("{\n" + ",\n".join(items) + "\n}\n")
    with open(os.path.join(OUT, "VERSIONS.json"), "w") as f:
        versions = {"torch": torch.__version__, "transformers": transformers.__version__}
        for name in ["image-reward", "torchvision", "timm", "fairscale", "tokenizers", "pillow", "numpy"]:
            versions[name] = importlib.metadata.version(name)
        json.dump(versions, f, indent=1)


if __name__ == "__main__":
    main()
