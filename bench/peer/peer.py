"""The PyTorch peer of sqdf's digits workload: the same networks, weights and work in
diffusers + peft (the UNet and its LoRA) and plain torch (sampler, consistency model,
reward, SQDF loss).

  peer.py parity DIR          recompute sqdf's dump DIR/parity.safetensors, exit 1 past tolerance
  peer.py time --json FILE    time the six work items (one warm-up each, then --repeats)
  peer.py table ...           the comparison table from the timing files (bench/peer/run.sh)

Threads: --threads (default 2) sets torch.set_num_threads and, before torch loads,
OMP_NUM_THREADS.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "models" / "digits"
# scripts/digits_sqdf.lua: reward = rewards.learned(x0) * SCALE.
REWARD_SCALE = 10.0
NULL_PROMPT = 10
ITEMS = ["forward", "guided_forward", "train_full", "train_lora", "sampling", "update"]
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def start_torch(threads):
    """Imports torch on `threads` threads (OMP_NUM_THREADS must be set before the import)."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    global torch, F, nn, DTYPE
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.set_num_threads(threads)
    DTYPE = torch.float32
    from diffusers.utils import logging

    logging.set_verbosity_error()
    return torch


# ---- models ---------------------------------------------------------------------------


def read_safetensors(path):
    """(tensors as torch, metadata) of a safetensors file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, (f.metadata() or {})


class ClassConditional:
    """diffusers' UNet2DConditionModel whose prompt is a class: `prompt_embeddings[cond]`
    is the context, `cond` the class label (src/models/class_conditional.rs)."""

    def __init__(self, path):
        from diffusers import UNet2DConditionModel

        tensors, meta = read_safetensors(path)
        cfg = json.loads(meta["config"])
        self.prompts = tensors.pop("prompt_embeddings")
        self.unet = UNet2DConditionModel(**cfg["unet"])
        self.unet.load_state_dict(tensors, strict=True)
        self.unet.eval().requires_grad_(False)

    def eps(self, x, t, cond):
        return self.unet(
            x, t, encoder_hidden_states=self.prompts[cond], class_labels=cond
        ).sample

    def add_lora(self, rank, seed=0):
        """PEFT adapters of rank `rank` (alpha = rank) on every attention projection, base
        frozen; A drawn as sqdf draws it (N(0, 1/fan_in), another generator), B = 0."""
        from peft import LoraConfig

        self.unet.add_adapter(
            LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS)
        )
        g = torch.Generator().manual_seed(seed)
        for name, p in self.lora_params().items():
            if "lora_A" in name:
                p.data = torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5
        return self

    def lora_params(self):
        """The adapters under sqdf's names (`<module>.lora_A.weight`)."""
        return {
            n.replace(".default.weight", ".weight"): p
            for n, p in self.unet.named_parameters()
            if "lora_" in n
        }


def guided_eps(net, x, t, cond, scale):
    """Classifier-free guidance, conditional and null passes in one batch (models/guidance.rs)."""
    b = x.shape[0]
    null = torch.full_like(cond, NULL_PROMPT)
    both = net.eps(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, null]))
    c, u = both[:b], both[b:]
    return u + (c - u) * scale


def reward_net(path):
    """The learned reward CNN (src/models/reward_net.rs), frozen: [B, 1, 28, 28] -> [B]."""
    tensors, meta = read_safetensors(path)
    c0, c1, c2 = json.loads(meta.get("config", '{"channels":[16,32,32]}'))["channels"]
    hidden = tensors["fc1.weight"].shape[0]
    net = nn.ModuleDict(
        {
            "conv1": nn.Conv2d(1, c0, 3, padding=1),
            "conv2": nn.Conv2d(c0, c1, 3, stride=2, padding=1),
            "conv3": nn.Conv2d(c1, c2, 3, stride=2, padding=1),
            "fc1": nn.Linear(c2 * 7 * 7, hidden),
            "fc2": nn.Linear(hidden, 1),
        }
    )
    net.load_state_dict(tensors, strict=True)
    net.eval().requires_grad_(False)

    def forward(x):
        h = F.silu(net["conv1"](x))
        h = F.silu(net["conv3"](F.silu(net["conv2"](h))))
        h = F.silu(net["fc1"](h.flatten(1)))
        return net["fc2"](h).squeeze(1)

    forward.net = net
    return forward


# ---- diffusion ------------------------------------------------------------------------


def per_sample(values, like):
    """f64 scalars per sample as f32 [B, 1, ...] (diffusion::per_sample)."""
    import numpy as np

    v = torch.tensor(np.asarray(values, dtype=np.float64), dtype=DTYPE)
    return v.reshape([-1] + [1] * (like.dim() - 1))


class Sampler:
    """DDPM's linear β over 1000 steps; DDIM with η on the trailing grid of `steps`, the last
    step ending at ᾱ_0 (src/diffusion/ddim.rs, tasks/digits/task.rs)."""

    def __init__(self, steps=50, eta=1.0, n=1000):
        import numpy as np

        betas = 1e-4 + np.arange(n, dtype=np.float64) / (n - 1) * (0.02 - 1e-4)
        self.schedule = np.cumprod(1.0 - betas)
        self.timesteps = [max(int(round(n - i * n / steps)) - 1, 0) for i in range(steps)]
        self.alpha_bar = [self.schedule[t] for t in self.timesteps] + [self.schedule[0]]
        self.eta = eta
        self.steps = steps

    def sigma(self, i):
        a_t, a_p = self.alpha_bar[i], self.alpha_bar[i + 1]
        return self.eta * max((1 - a_p) / (1 - a_t) * (1 - a_t / a_p), 0.0) ** 0.5

    def t_of(self, idx):
        return torch.tensor([float(self.timesteps[i]) for i in idx])

    def step(self, x, eps, idx):
        """(mean, sigma [B,1,1,1], Tweedie x0) of the step from states at indices idx."""
        a_t = [self.alpha_bar[i] for i in idx]
        a_p = [self.alpha_bar[i + 1] for i in idx]
        sig = [self.sigma(i) for i in idx]
        x0 = tweedie(x, eps, a_t)
        c_eps = [max(1 - a - s * s, 0.0) ** 0.5 for a, s in zip(a_p, sig)]
        mean = x0 * per_sample([a**0.5 for a in a_p], x) + eps * per_sample(c_eps, x)
        return mean, per_sample(sig, x), x0


def tweedie(x, eps, alpha_bar):
    inv = [1 / a**0.5 for a in alpha_bar]
    ratio = [((1 - a) / a) ** 0.5 for a in alpha_bar]
    return x * per_sample(inv, x) - eps * per_sample(ratio, x)


def log_prob(x, mean, sigma):
    """mean over dimensions of log N(x; mean, σ²) per sample (diffusion/log_prob.rs)."""
    import math

    z2 = ((x - mean) / sigma) ** 2
    log_norm = torch.log(sigma) + 0.5 * math.log(2 * math.pi)
    return (-0.5 * z2 - log_norm).reshape(x.shape[0], -1).mean(1)


class Consistency:
    """f(x_t, t) = c_skip x_t + c_out x̂0(ε_ψ), t snapped to the distillation grid
    (models/consistency_model.rs, diffusion/consistency.rs)."""

    def __init__(self, path, sampler):
        self.net = ClassConditional(path)
        _, meta = read_safetensors(path)
        s = json.loads(meta.get("scalings", '{"sigma_data":0.5,"timestep_scaling":10.0}'))
        self.sigma_data, self.scaling = s["sigma_data"], s["timestep_scaling"]
        self.sampler = sampler
        self.grid = Sampler(50, 0.0).timesteps

    def snap(self, t):
        return t if t == 0 else min(self.grid, key=lambda g: abs(g - t))

    def x0(self, x, ts, cond):
        ts = [self.snap(int(t)) for t in ts]
        eps = self.net.eps(x, torch.tensor([float(t) for t in ts]), cond)
        x0 = tweedie(x, eps, [self.sampler.schedule[t] for t in ts])
        sd2 = self.sigma_data**2
        s = [t * self.scaling for t in ts]
        skip = [sd2 / (v * v + sd2) for v in s]
        out = [v / (v * v + sd2) ** 0.5 for v in s]
        return x * per_sample(skip, x) + x0 * per_sample(out, x)


class Models:
    """What a digits SQDF run works with: the policy (LoRA on the frozen UNet), the frozen
    reference, the consistency model, the learned reward (scaled as the script does)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.sampler = Sampler(cfg["steps"], cfg["eta"])
        self.reference = ClassConditional(WEIGHTS / "unet.safetensors")
        self.policy = ClassConditional(WEIGHTS / "unet.safetensors").add_lora(
            cfg["lora_rank"]
        )
        self.cm = Consistency(WEIGHTS / "consistency.safetensors", self.sampler)
        self.learned = reward_net(WEIGHTS / "reward.safetensors")
        self.optim = torch.optim.AdamW(
            list(self.policy.lora_params().values()),
            lr=cfg["lr"],
            betas=(0.9, 0.999),
            eps=1e-8,
            weight_decay=cfg["weight_decay"],
        )

    def to(self, dtype):
        """Every network in `dtype` (the parity check's float64 reference)."""
        for n in (self.reference, self.policy, self.cm.net):
            n.unet.to(dtype)
            n.prompts = n.prompts.to(dtype)
        self.learned.net.to(dtype)
        return self

    def reward(self, x0):
        return self.learned(x0) * REWARD_SCALE

    def sqdf_loss(self, x, idx, cond, z):
        """lua/sqdf.lua's loss on states x at indices idx: (loss, kl mean, q mean)."""
        cfg, s = self.cfg, self.sampler
        t = s.t_of(idx)
        mean, sigma, _ = s.step(x, guided_eps(self.policy, x, t, cond, cfg["guidance"]), idx)
        with torch.no_grad():
            ref_mean, _, _ = s.step(
                x, guided_eps(self.reference, x, t, cond, cfg["guidance"]), idx
            )
        x_prev = mean + sigma * z
        t_next = [s.timesteps[i + 1] if i + 1 < s.steps else 0 for i in idx]
        est = self.cm.x0(x_prev, t_next, cond)
        last = per_sample([1.0 if i + 1 == s.steps else 0.0 for i in idx], x)
        x0 = x_prev * last + est * (last * -1 + 1)
        r = self.reward(x0)
        kl = ((mean - ref_mean) ** 2 / sigma**2).reshape(x.shape[0], -1).mean(1)
        discount = per_sample([cfg["gamma"] ** (s.steps - 1 - i) for i in idx], r).reshape(-1)
        loss = (-(discount * r) + cfg["alpha"] * kl).mean()
        return loss, kl.mean(), (discount * r).mean()

    def update(self, x, idx, cond, z):
        """One optimiser step as Trainer::update: loss, backward, clip, AdamW. Returns the
        loss, its numbers, the gradients before clipping and their norm."""
        self.optim.zero_grad(set_to_none=True)
        loss, kl, q = self.sqdf_loss(x, idx, cond, z)
        loss.backward()
        params = self.policy.lora_params()
        grads = {n: p.grad.clone() for n, p in params.items()}
        norm = torch.nn.utils.clip_grad_norm_(list(params.values()), self.cfg["grad_clip"])
        self.optim.step()
        return loss, kl, q, grads, norm


# ---- parity ---------------------------------------------------------------------------


def load_dump(path):
    """sqdf's parity dump as torch tensors (ids as int64) and the run config it records."""
    import numpy as np
    from safetensors import safe_open
    from safetensors.numpy import load_file

    d = {k: torch.from_numpy(v.astype(np.int64) if v.dtype == np.uint32 else v)
         for k, v in load_file(str(path)).items()}
    with safe_open(str(path), framework="np") as f:
        return d, json.loads(f.metadata()["config"])


def recompute(d, cfg, dtype):
    """Every quantity of the dump recomputed from its inputs in `dtype`: {name: (ours, sqdf's)}."""
    global DTYPE
    DTYPE = dtype
    m = Models(cfg).to(dtype)
    s = m.sampler
    d = {k: v.to(dtype) if v.is_floating_point() else v for k, v in d.items()}
    x, idx, t, cond = d["x"], d["idx"].tolist(), d["t"], d["cond"]
    out = {}
    with torch.no_grad():
        out["t (grid timesteps)"] = (s.t_of(idx), t)
        out["eps"] = (m.reference.eps(x, t, cond), d["eps"])
        eg = guided_eps(m.reference, x, t, cond, cfg["guidance"])
        out["guided eps"] = (eg, d["eps_guided"])
        # The step from sqdf's guided ε, so that its error is the step's own.
        mean, sigma, x0 = s.step(x, d["eps_guided"], idx)
        nxt = mean + sigma * d["ddim_z"]
        out["DDIM step: Tweedie x0"] = (x0, d["ddim_x0"])
        out["DDIM step: mean"] = (mean, d["ddim_mean"])
        out["DDIM step: sigma"] = (sigma.reshape(-1), d["ddim_sigma"])
        out["DDIM step: x_{t-1}"] = (nxt, d["ddim_next"])
        out["DDIM step: log-prob"] = (log_prob(nxt, mean, sigma), d["ddim_log_prob"])
        out["CM x0"] = (m.cm.x0(x, d["cm_t"].tolist(), cond), d["cm_x0"])
        out["reward (learned, unscaled)"] = (m.learned(d["reward_images"]), d["reward"])

    params = m.policy.lora_params()
    missing = set(params) ^ {k[5:] for k in d if k.startswith("lora.")}
    if missing:
        sys.exit(f"LoRA parameters differ between sqdf and peft: {sorted(missing)[:4]}")
    names = sorted(params)
    with torch.no_grad():
        for n in names:
            params[n].copy_(d[f"lora.{n}"])
    loss, kl, q, grads, norm = m.update(x, idx, cond, d["update_z"])
    cat = lambda ts: torch.cat([v.reshape(-1) for v in ts])
    out["SQDF update: loss"] = (loss.reshape(1), d["update_loss"])
    out["SQDF update: KL mean"] = (kl.reshape(1), d["update_kl"])
    out["SQDF update: discounted reward mean"] = (q.reshape(1), d["update_q"])
    out["SQDF update: grad norm"] = (norm.reshape(1), d["update_grad_norm"])
    out[f"SQDF update: LoRA gradients ({len(names)} tensors)"] = (
        cat(grads[n] for n in names), cat(d[f"grad.{n}"] for n in names))
    # AdamW alone: torch's step from sqdf's own gradients (clipped as the update clips
    # them). From our gradients instead, Adam's first step, lr g / (|g| + 1e-8), turns the
    # rounding of gradients near 1e-8 into differences of up to lr.
    with torch.no_grad():
        for n in names:
            params[n].copy_(d[f"lora.{n}"])
    sqdf_grads = [d[f"grad.{n}"] for n in names]
    gn = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in sqdf_grads]))
    scale = cfg["grad_clip"] / (gn + 1e-6) if cfg["grad_clip"] > 0 and gn > cfg["grad_clip"] else 1.0
    opt = torch.optim.AdamW([params[n] for n in names], lr=cfg["lr"], betas=(0.9, 0.999),
                            eps=1e-8, weight_decay=cfg["weight_decay"])
    for n, g in zip(names, sqdf_grads):
        params[n].grad = g * scale
    opt.step()
    out["AdamW step from sqdf's gradients (after - before)"] = (
        cat(params[n].detach() - d[f"lora.{n}"] for n in names),
        cat(d[f"after.{n}"] - d[f"lora.{n}"] for n in names))
    return out


# How much further from the float64 result than torch's float32 sqdf may be and still count
# as float32 rounding: the gradients reach the adapters through the difference of two
# nearly equal guided means (the KL) and through the consistency model, and a different
# summation order alone moves them by a few times torch's own float32 error.
FLOOR_FACTOR = 4.0


def parity(args):
    path = Path(args.dir) / "parity.safetensors"
    d, cfg = load_dump(path)
    f32 = recompute(d, cfg, torch.float32)
    f64 = recompute(d, cfg, torch.float64)
    rel = lambda a, b: ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()
    print(f"parity with {path}: rel = max abs difference / max |sqdf's value|; a quantity passes "
          f"with rel <= {args.tol:g} against torch f32, or when sqdf is as close to torch f64 "
          f"as torch f32 is (within {FLOOR_FACTOR:g}x: both at float32 rounding)\n")
    print("| quantity | shape | max abs | rel vs torch f32 | sqdf rel vs f64 | torch f32 rel vs f64 | |")
    print("|---|---|---|---|---|---|---|")
    failed = 0
    for name, (ours, sq) in f32.items():
        err = (ours.double() - sq.double()).abs().max().item()
        r = rel(ours, sq)
        ref64 = f64[name][0]
        r_sq, r_pt = rel(sq, ref64), rel(ours, ref64)
        ok = r <= args.tol or r_sq <= FLOOR_FACTOR * r_pt + 1e-12
        failed += not ok
        print(f"| {name} | {list(sq.shape)} | {err:.3g} | {r:.2e} | {r_sq:.2e} | {r_pt:.2e} "
              f"| {'ok' if ok else 'FAIL'} |")
    if failed:
        print(f"\n{failed} quantities differ past the tolerance")
        sys.exit(1)
    print("\nparity: every quantity agrees")


# ---- timing ---------------------------------------------------------------------------


class Work:
    """The six work items on fixed inputs (bench/peer/README.md says what each includes)."""

    def __init__(self, batch, cfg, seed=1):
        self.m = Models(cfg)
        self.batch = batch
        self.cfg = cfg
        g = self.g = torch.Generator().manual_seed(seed)
        s = self.m.sampler
        self.x = torch.randn(batch, 1, 28, 28, generator=g)
        self.target = torch.randn(batch, 1, 28, 28, generator=g)
        self.idx = torch.randint(0, s.steps, (batch,), generator=g).tolist()
        self.t = s.t_of(self.idx)
        self.cond = torch.randint(0, 10, (batch,), generator=g)
        self.full = ClassConditional(WEIGHTS / "unet.safetensors")
        self.full.unet.requires_grad_(True)
        self.lora = ClassConditional(WEIGHTS / "unet.safetensors").add_lora(cfg["lora_rank"])
        # The replay buffer: (trajectory states [T+1, 1, 28, 28], cond), FIFO.
        self.buffer, self.capacity = [], 256

    def train(self, net):
        net.unet.zero_grad(set_to_none=True)
        loss = F.mse_loss(net.eps(self.x, self.t, self.cond), self.target)
        loss.backward()

    def sampling(self):
        """B trajectories of the policy (η = 1 DDIM, guided), their log-probabilities, the
        scaled learned reward of x0, stored in the buffer."""
        m, s, b, g = self.m, self.m.sampler, self.batch, self.g
        cond = torch.randint(0, 10, (b,), generator=g)
        with torch.no_grad():
            x = torch.randn(b, 1, 28, 28, generator=g)
            states, log_probs = [x], []
            for i in range(s.steps):
                idx = [i] * b
                eps = guided_eps(m.policy, x, s.t_of(idx), cond, self.cfg["guidance"])
                mean, sigma, _ = s.step(x, eps, idx)
                x = mean + sigma * torch.randn(x.shape, generator=g)
                log_probs.append(log_prob(x, mean, sigma))
                states.append(x)
            r = m.reward(x)
        traj = torch.stack(states, 1)
        for k in range(b):
            self.buffer.append((traj[k], int(cond[k]), float(r[k])))
        del self.buffer[: max(len(self.buffer) - self.capacity, 0)]
        return torch.stack(log_probs, 1), r

    def update(self):
        """One SQDF update of B states drawn uniformly from the buffer."""
        s, g, b = self.m.sampler, self.g, self.batch
        slots = torch.randint(0, len(self.buffer), (b,), generator=g).tolist()
        idx = torch.randint(0, s.steps, (b,), generator=g).tolist()
        x = torch.stack([self.buffer[k][0][i] for k, i in zip(slots, idx)])
        cond = torch.tensor([self.buffer[k][1] for k in slots])
        z = torch.randn(x.shape, generator=g)
        return self.m.update(x, idx, cond, z)

    def run(self, item):
        if item == "forward":
            with torch.no_grad():
                self.m.reference.eps(self.x, self.t, self.cond)
        elif item == "guided_forward":
            with torch.no_grad():
                guided_eps(self.m.reference, self.x, self.t, self.cond, self.cfg["guidance"])
        elif item == "train_full":
            self.train(self.full)
        elif item == "train_lora":
            self.train(self.lora)
        elif item == "sampling":
            self.sampling()
        elif item == "update":
            self.update()
        else:
            raise ValueError(item)


# The config of `sqdf bench scripts/digits_sqdf.lua --batch 64` (the parity dump records it).
DIGITS_SQDF = {
    "alpha": 2.0, "gamma": 0.9, "lr": 1e-3, "weight_decay": 1e-4, "grad_clip": 1.0,
    "guidance": 5.0, "steps": 50, "eta": 1.0, "lora_rank": 4,
}


def machine(threads):
    import platform

    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import diffusers
    import peft

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "peft": peft.__version__,
    }


def time_items(args):
    cfg = DIGITS_SQDF
    if args.config:
        from safetensors import safe_open

        with safe_open(args.config, framework="np") as f:
            cfg = json.loads(f.metadata()["config"])
    w = Work(args.batch, cfg)
    seconds = {k: [] for k in ITEMS}
    for rnd in range(args.repeats + 1):
        for item in ITEMS:
            start = time.perf_counter()
            w.run(item)
            sec = time.perf_counter() - start
            print(f"round {rnd}: {item} {sec:.3f} s", file=sys.stderr)
            if rnd > 0:
                seconds[item].append(sec)
    out = {"engine": "torch", "batch": args.batch, "seconds": seconds,
           "machine": machine(args.threads)}
    if args.flops:
        from torch.utils.flop_counter import FlopCounterMode

        out["flops"] = {}
        for item in ITEMS:
            with FlopCounterMode(display=False) as fc:
                w.run(item)
            out["flops"][item] = fc.get_total_flops()
            print(f"{item}: {fc.get_total_flops() / 1e9:.2f} GFLOP", file=sys.stderr)
    Path(args.json).write_text(json.dumps(out, indent=1))


# ---- table ----------------------------------------------------------------------------

LABELS = {
    "forward": "UNet forward, batch 64, no grad",
    "guided_forward": "guided forward (cond + null, batch 128), no grad",
    "train_full": "forward + backward, every weight trainable",
    "train_lora": "forward + backward, LoRA r4 on attention",
    "sampling": "sampling 64 x 50 guided DDIM steps (+ log-probs, reward)",
    "update": "one SQDF update of 64 states",
}


def sig3(v):
    """v with three significant digits, trailing zeros kept (1.00, 60.1, 151)."""
    import math

    return f"{v:.{max(0, 2 - math.floor(math.log10(abs(v)))) if v else 2}f}"


def table(args):
    load = lambda p: json.loads(Path(p).read_text())
    sq = [load(p)["time"] for p in args.sqdf]
    pt = [load(p) for p in args.torch]
    peak = load(args.peak)
    flops = next((r["flops"] for r in pt if "flops" in r), {})
    per = lambda runs, k: [statistics.median(r["seconds"][k]) for r in runs]
    mach = sq[0]["machine"]
    pm = pt[0]["machine"]
    print(f"sqdf vs PyTorch eager on the digits workload (f32, batch {sq[0]['batch']}), "
          f"{len(sq)} alternating pairs of processes, each warmed up first")
    print(f"Machine: {mach['cpu']}, {pm['threads']} threads each "
          f"(RAYON_NUM_THREADS={mach['threads']}; torch {pm['torch']} on "
          f"{pm['torch_threads']} threads, diffusers {pm['diffusers']}, peft {pm['peft']}); "
          f"{time.strftime('%Y-%m-%d')}. Command: bench/peer/run.sh")
    print(f"Measured peak: {peak['peak_gflops']:.1f} GFLOP/s "
          f"({peak['peak_isa']} FMA loop on {peak['peak_threads']} threads)\n")
    print("| work | GFLOP | sqdf s, median (min-max) | torch s, median (min-max) "
          "| sqdf / torch | sqdf GFLOP/s (% peak) | torch GFLOP/s (% peak) |")
    print("|---|---|---|---|---|---|---|")
    fmt = lambda v: f"{sig3(statistics.median(v))} ({sig3(min(v))}-{sig3(max(v))})"
    for k in ITEMS:
        a, b = per(sq, k), per(pt, k)
        ratio = statistics.median([x / y for x, y in zip(a, b)])
        gf = flops.get(k, float("nan")) / 1e9
        rate = lambda v: gf / statistics.median(v)
        pc = lambda v: 100 * rate(v) / peak["peak_gflops"]
        print(f"| {LABELS[k]} | {gf:.3g} | {fmt(a)} | {fmt(b)} | {ratio:.2f} "
              f"| {rate(a):.2f} ({pc(a):.1f}%) | {rate(b):.2f} ({pc(b):.1f}%) |")
    print("\nGFLOP: torch.utils.flop_counter.FlopCounterMode on the PyTorch run "
          "(matmuls, convolutions, attention; elementwise work not counted).")


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=int(os.environ.get("PEER_THREADS", 2)))
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("parity", help="check sqdf's dump")
    a.add_argument("dir")
    a.add_argument("--tol", type=float, default=1e-4)
    a = sub.add_parser("time", help="time the work items")
    a.add_argument("--json", required=True)
    a.add_argument("--batch", type=int, default=64)
    a.add_argument("--repeats", type=int, default=1)
    a.add_argument("--flops", action="store_true", help="also count FLOPs (one more run of each)")
    a.add_argument("--config", help="take the run config from a parity dump")
    a = sub.add_parser("table", help="print the comparison table")
    a.add_argument("--sqdf", nargs="+", required=True)
    a.add_argument("--torch", nargs="+", required=True)
    a.add_argument("--peak", required=True)
    args = p.parse_args()
    if args.cmd == "table":
        return table(args)
    start_torch(args.threads)
    {"parity": parity, "time": time_items}[args.cmd](args)


if __name__ == "__main__":
    main()
