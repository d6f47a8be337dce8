-- DDPO (Black et al. 2024): PPO-clip on the log-probabilities of the Gaussian actions,
-- advantages normalised per prompt, no reward gradient. With config.alpha > 0 it is
-- DDPO+KL as the SQDF paper defines it (Appendix D.1.1): the detached per-step KL to the
-- pretrained model is subtracted from the advantage.
--
-- Paper's hyperparameters (official DDPO code): DDPM 50 steps, lr 3e-4, clip range 1e-4,
-- advantages clipped to +-5, per-prompt statistics over the last 16 rewards (fewer than 16
-- seen: the batch's), 1 inner epoch, every timestep trained; DDPO+KL alpha = 0.2 (0.2, 0.3,
-- 0.4 in Fig. 4). config.updates_per_epoch is the number of PPO epochs over the batch. The
-- KL of DDPO+KL is the current policy's at each pass (the behaviour policy's on the first),
-- in the form of the SQDF first author's DDPO fork (Shin-woocheol/DDPO,
-- ddim_with_logprob_kl.py): mean over dimensions of (mu - mu')^2 / (2 sigma^2), half of
-- ctx:kl's "released" form (SQDF's), subtracted from the clipped advantage.
local on_policy = require("baselines.on_policy")
local M = {}

-- (r - mean) / std per prompt over its last `buffer_size` rewards (DDPO's stat tracker; the
-- replay buffer keeps them, oldest first, so they survive reloads and resumes); a prompt
-- seen fewer than `min_count` times is normalised with the batch's statistics.
function M.advantages(traj, ctx)
  local p = ctx.config.params
  local size, min_count = p.buffer_size or 16, p.min_count or 16
  local seen = ctx:buffer_rewards()
  local conds, rs = seen.cond:totable(), seen.reward:totable()
  local sum, sq, n = {}, {}, {}
  for j = #conds, 1, -1 do -- newest first, up to `size` per prompt
    local c = conds[j]
    if (n[c] or 0) < size then
      sum[c], sq[c], n[c] = (sum[c] or 0) + rs[j], (sq[c] or 0) + rs[j] ^ 2, (n[c] or 0) + 1
    end
  end
  local function stats(s, q, k)
    local mean = s / k
    return mean, math.sqrt(math.max(q / k - mean ^ 2, 0))
  end
  local r, c = traj.reward:totable(), traj.cond:totable()
  local bsum, bsq = 0, 0
  for j = 1, #r do
    bsum, bsq = bsum + r[j], bsq + r[j] ^ 2
  end
  local bmean, bstd = stats(bsum, bsq, #r)
  local adv = {}
  for j = 1, #r do
    local mean, std = bmean, bstd
    if (n[c[j]] or 0) >= min_count then
      mean, std = stats(sum[c[j]], sq[c[j]], n[c[j]])
    end
    adv[j] = (r[j] - mean) / (std + 1e-6)
  end
  local clip = p.adv_clip or 5
  return tensor.from(adv):clamp(-clip, clip)
end

-- `n` distinct step indices of 0..T-1, in random order.
local function some_steps(T, n)
  local pool = {}
  for i = 0, T - 1 do
    pool[#pool + 1] = i
  end
  return on_policy.pick(pool, n)
end

function M.loss(traj, ctx)
  local cfg, p = ctx.config, ctx.config.params
  local eps = p.clip_range or 1e-4
  local adv = M.advantages(traj, ctx)
  local T = traj.steps
  local steps = some_steps(T, math.max(1, math.floor(T * (p.timestep_fraction or 1) + 0.5)))
  local loss, ratio_dev, kl_sum = nil, 0, 0
  for _, i in ipairs(steps) do
    local b = traj:at(i)
    local step = ctx:policy_step(b)
    local a = adv
    if cfg.alpha > 0 then
      local kl = ctx:kl(step, ctx:reference_step(b)):detach() * 0.5
      a = adv - cfg.alpha * kl
      kl_sum = kl_sum + kl:mean():item()
    end
    -- Ratio of the new policy to the one that sampled the action (stored at sampling).
    local lp_old = b.log_prob:sum():item()
    assert(lp_old == lp_old, "DDPO needs the actions' log-probabilities: config.eta must be > 0")
    local ratio = (ctx:log_prob(step, b.next) - b.log_prob):exp()
    local clipped = ratio:clamp(1 - eps, 1 + eps)
    local l = (-(a * ratio)):maximum(-(a * clipped)):mean()
    loss = loss and (loss + l) or l
    ratio_dev = math.max(ratio_dev, (ratio - 1):abs():max():item())
  end
  local stats = { ratio_dev = ratio_dev }
  if cfg.alpha > 0 then
    stats.kl = kl_sum / #steps
  end
  return loss / #steps, stats
end

-- No discount, no priority (lua/baselines/on_policy.lua).
local on_policy = require("baselines.on_policy")
M.discount, M.priority = on_policy.discount, on_policy.priority

return M
