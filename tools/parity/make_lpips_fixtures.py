"""Reference fixture for the diversity_lpips metric (mean pairwise LPIPS distance among the
images of one prompt), made by the `lpips` package itself: `lpips.LPIPS(net="alex",
version="0.1")` with a random AlexNet trunk (`pnet_rand=True`, so torchvision downloads
nothing) and the linear layers the lpips wheel ships (`lpips/weights/v0.1/alex.pth`), both
perturbed so that a swapped or misnamed key changes the outputs:

- AlexNet: every conv weight scaled per output channel by 2.5 exp(0.2 N(0, 1)) (near He's
  scale, so that the deep layers are not all bias), every bias moved by N(0, 0.05²). Saved as torchvision's checkpoint `alexnet-owt-7be5be79.pth` is
  (`torch.save` of `AlexNet().state_dict()`, the zip format), with only its `features.*` keys
  (the real file also has `classifier.*`) and in float16 (4.9 MB instead of 9.9 MB; the real
  file is float32). The float16 values are loaded back into the model before anything is
  computed, so the outputs are those of exactly the stored weights.
- Linear layers: each shipped weight x exp(0.3 N(0, 1)) + U(0, 0.1) (all positive, no zero
  channel left), float32. `alex.pth` is the wheel's own file with only its tensor bytes
  replaced: the legacy (non-zip) `torch.save` format, written by Python 2 (SHORT_BINSTRING
  strings, LONG1 sizes, storages located at 'cuda:0', the OrderedDict as a list of [key, value]
  pairs, storages stored in the order of their sorted keys, not the dict's), keys
  `lin{0..4}.model.1.weight` of shape [1, C, 1, 1].

Inputs: four 64 x 64 images in [-1, 1] (a smooth image, two noisy copies of it, an unrelated
one) and two 48 x 40 ones, where AlexNet's convolution and pooling floor. `lpips_io.safetensors`
holds them, the 4 x 4 matrix of `model(img_i, img_j)` (normalize=False: the inputs already are
in [-1, 1]), the per-layer terms (`retPerLayer=True`) of pairs (0, 1) and (0, 3) and of the
48 x 40 pair, and image 0's five tapped ReLU outputs, so that a mismatch can be localised.

The script checks that the files load back through lpips's and torchvision's own loaders to
the same distances, and that a plain-torch re-implementation from the saved files alone
matches lpips to 1e-6.

    pip install lpips==0.1.4 torchvision==0.29.2   # beside tools/parity/requirements.txt
    tools/parity/make_lpips_fixtures.py [OUT]   (default OUT: tests/fixtures/parity/lpips)
"""

import collections
import hashlib
import importlib.metadata
import io
import json
import os
import pickle
import shutil
import struct
import sys
import tempfile
import warnings

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/parity/lpips"
# Nothing may be fetched: torchvision would cache a download here.
_TORCH_HOME = tempfile.mkdtemp(prefix="lpips-fixture-torch-home-")
os.environ["TORCH_HOME"] = _TORCH_HOME

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import lpips  # noqa: E402

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)

ALEX_FILE = "alexnet-owt-7be5be79.pth"
LIN_FILE = "alex.pth"
# lpips.ScalingLayer (v0.1): (x - SHIFT) / SCALE per RGB channel.
SHIFT = [-0.030, -0.088, -0.188]
SCALE = [0.458, 0.448, 0.450]
CONVS = [0, 3, 6, 8, 10]  # AlexNet features.* indices; a ReLU follows each and is tapped
CHANNELS = [64, 192, 384, 256, 256]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed):
    return torch.randn(*shape, generator=gen(seed), dtype=torch.float32)


def build():
    torch.manual_seed(0)
    with warnings.catch_warnings():  # torchvision's deprecation of `pretrained=`
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    assert not any(os.scandir(_TORCH_HOME)), "something was downloaded"
    g = gen(1)
    convs = [m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        for conv in convs:
            conv.weight.mul_(2.5 * torch.exp(0.2 * torch.randn(conv.out_channels, generator=g)).view(-1, 1, 1, 1))
            conv.bias.add_(0.05 * torch.randn(conv.bias.shape, generator=g))
            conv.weight.copy_(conv.weight.half().float())  # the values the float16 file holds
            conv.bias.copy_(conv.bias.half().float())
        for lin in model.lins:
            w = lin.model[1].weight
            w.mul_(torch.exp(0.3 * torch.randn(w.shape, generator=g))).add_(0.1 * torch.rand(w.shape, generator=g))
    assert [c.out_channels for c in convs] == CHANNELS
    return model.eval()


def alexnet_state_dict(model):
    """torchvision's AlexNet state dict (its `_metadata` too) holding the trunk's weights, with
    only the features.* keys, in float16."""
    alex = torchvision.models.alexnet(weights=None)
    sd = alex.state_dict()
    trunk = {f"features.{k.split('.', 1)[1]}": v for k, v in model.net.state_dict().items()}
    out = collections.OrderedDict((k, trunk[k].half()) for k in sd if k.startswith("features."))
    out._metadata = sd._metadata
    assert list(out) == [f"features.{i}.{p}" for i in CONVS for p in ("weight", "bias")]
    return out


def shipped_lin_file():
    return os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "alex.pth")


def save_like_shipped(model, path):
    """The wheel's alex.pth with each storage's bytes replaced by the model's lin weights.

    Legacy format: five pickles (magic number, protocol version, sys info, the state dict,
    the list of storage keys), then per key of that list an int64 element count and the raw
    little-endian data."""
    with open(shipped_lin_file(), "rb") as f:
        raw = f.read()
    f = io.BytesIO(raw)
    for _ in range(3):
        pickle.load(f)

    class Skeleton(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                return lambda storage, offset, size, stride, *_: (storage, offset, size, stride)
            if (module, name) == ("collections", "OrderedDict"):
                return collections.OrderedDict
            return f"{module}.{name}"

        def persistent_load(self, pid):  # ('storage', type, key, location, numel, view)
            return pid

    skeleton = Skeleton(f).load()
    keys = pickle.load(f)
    weights = {k: v for k, v in model.state_dict().items() if k in skeleton}
    assert list(skeleton) == list(weights) == [f"lin{k}.model.1.weight" for k in range(5)]
    by_key = {}
    for name, (pid, offset, size, stride) in skeleton.items():
        assert pid[1] == "torch.FloatStorage" and offset == 0 and tuple(size) == weights[name].shape
        by_key[pid[2]] = weights[name].contiguous()
    out = bytearray(raw[: f.tell()])
    pos = f.tell()
    for key in keys:
        (numel,) = struct.unpack("<q", raw[pos : pos + 8])
        data = by_key[key].numpy().astype("<f4").tobytes()
        assert numel == by_key[key].numel()
        out += raw[pos : pos + 8] + data
        pos += 8 + len(data)
    assert pos == len(raw)
    with open(path, "wb") as f:
        f.write(out)


def inputs():
    smooth = lambda n, seed: F.interpolate(randn(n, 3, 8, 8, seed=seed), size=(64, 64), mode="bilinear")  # noqa: E731
    base = smooth(1, 2)
    noise = randn(3, 3, 64, 64, seed=3)
    images = torch.cat([base + 0.1 * noise[0:1], base + 0.5 * noise[1:2], smooth(1, 4), 0.7 * noise[2:3]])
    odd = 0.7 * randn(2, 3, 48, 40, seed=5)
    return torch.tanh(images), torch.tanh(odd)


def reference(sd_alex, sd_lin, a, b):
    """LPIPS v0.1 / AlexNet from the saved state dicts alone, in plain torch."""
    shift = torch.tensor(SHIFT).view(1, 3, 1, 1)
    scale = torch.tensor(SCALE).view(1, 3, 1, 1)

    def taps(x):
        x = (x - shift) / scale
        out = []
        for i, c in enumerate(CONVS):
            if c in (3, 6):
                x = F.max_pool2d(x, kernel_size=3, stride=2)
            stride, pad = {0: (4, 2), 3: (1, 2)}.get(c, (1, 1))
            w, bias = sd_alex[f"features.{c}.weight"].float(), sd_alex[f"features.{c}.bias"].float()
            x = F.relu(F.conv2d(x, w, bias, stride=stride, padding=pad))
            out.append(x)
        return out

    layers = []
    for k, (fa, fb) in enumerate(zip(taps(a), taps(b))):
        fa = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        fb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        w = sd_lin[f"lin{k}.model.1.weight"]  # [1, C, 1, 1]
        layers.append(((fa - fb) ** 2 * w).sum(1, keepdim=True).mean([2, 3], keepdim=True))
    return sum(layers), layers


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    model = build()
    alex_path, lin_path = os.path.join(OUT, ALEX_FILE), os.path.join(OUT, LIN_FILE)
    torch.save(alexnet_state_dict(model), alex_path)
    save_like_shipped(model, lin_path)

    images, odd = inputs()
    n = images.shape[0]
    out = {"images": images, "images_48x40": odd}
    with torch.no_grad():
        dist = torch.zeros(n, n)
        for i in range(n):
            for j in range(n):
                dist[i, j] = model(images[i : i + 1], images[j : j + 1]).flatten()[0]
        out["distances"] = dist
        for name, a, b in [("01", images[0:1], images[1:2]), ("03", images[0:1], images[3:4]),
                           ("48x40", odd[0:1], odd[1:2])]:
            d, layers = model(a, b, retPerLayer=True)
            out[f"distance_{name}"] = d.flatten()
            out[f"per_layer_{name}"] = torch.stack([l.flatten()[0] for l in layers])
        for k, f in enumerate(model.net(model.scaling_layer(images[0:1]))):
            out[f"image0_relu{k + 1}"] = f[0]
    save_file({k: v.detach().contiguous().to(torch.float32) for k, v in out.items()},
              os.path.join(OUT, "lpips_io.safetensors"))

    # The files, read back by lpips's and torchvision's own loaders, give the same distances.
    torch.manual_seed(123)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        again = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True,
                            model_path=lin_path, verbose=False).eval()
    tv = torchvision.models.alexnet(weights=None)
    sd_alex = torch.load(alex_path, map_location="cpu", weights_only=True)
    missing, unexpected = tv.load_state_dict(sd_alex, strict=False)
    assert not unexpected and all(k.startswith("classifier.") for k in missing), (missing, unexpected)
    for k, v in again.net.named_parameters():
        v.data.copy_(tv.features.state_dict()[k.split(".", 1)[1]])
    sd_lin = torch.load(lin_path, map_location="cpu", weights_only=True)
    assert list(sd_lin) == [f"lin{k}.model.1.weight" for k in range(5)]
    with torch.no_grad():
        for k in range(5):  # LPIPS loads with strict=False: check the keys were read
            assert torch.equal(again.lins[k].model[1].weight, model.lins[k].model[1].weight)
        for i in range(n):
            for j in range(n):
                assert again(images[i : i + 1], images[j : j + 1]).item() == dist[i, j].item()

        # Plain torch, from the saved files alone.
        worst = 0.0
        for i in range(n):
            for j in range(n):
                d, _ = reference(sd_alex, sd_lin, images[i : i + 1], images[j : j + 1])
                worst = max(worst, abs(d.item() - dist[i, j].item()))
        for name, a, b in [("01", images[0:1], images[1:2]), ("48x40", odd[0:1], odd[1:2])]:
            _, layers = reference(sd_alex, sd_lin, a, b)
            worst = max(worst, (torch.stack([l.flatten()[0] for l in layers]) - out[f"per_layer_{name}"]).abs().max().item())
        assert worst <= 1e-6, worst
    print(f"plain-torch re-implementation agrees to {worst:.2e}")
    print("distances:\n", dist)
    for name in ("01", "03", "48x40"):
        print(name, out[f"distance_{name}"].item(), out[f"per_layer_{name}"].tolist())

    with open(os.path.join(OUT, "VERSIONS.json"), "w") as f:
        versions = {"torch": torch.__version__, "torchvision": torchvision.__version__}
        versions["lpips"] = importlib.metadata.version("lpips")
        with open(shipped_lin_file(), "rb") as g:
            versions["lpips/weights/v0.1/alex.pth sha256"] = hashlib.sha256(g.read()).hexdigest()
        json.dump(versions, f, indent=1)
    shutil.rmtree(_TORCH_HOME)


if __name__ == "__main__":
    main()
