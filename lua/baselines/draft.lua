-- DRaFT-K and DRaFT-LV (Clark et al. 2024), and DRaFT+KL as the SQDF paper defines it
-- (Appendix D.1.1): backpropagate the reward through the last K sampling steps only.
--
-- Paper's hyperparameters (SD-1.5, aesthetic): DDIM 50 steps, K = 1, lr 4e-4, batch 64,
-- LoRA rank 4, CFG 5.0; DRaFT+KL alpha = 0.04 (0.03, 0.035, 0.04 in Fig. 4), the KL summed
-- over all T steps and added to the reward. DRaFT-LV: n = 2 re-noised copies of x_0.
--
-- Used with config.update_on = "trajectories": `traj` is this epoch's trajectories, sampled
-- without gradient by the trainer; the last K steps are taken again here with gradient.
local on_policy = require("baselines.on_policy")
local M = {}

-- The noise of a re-taken step. On the first update after sampling it is the trajectory's
-- own, eps = (x_{t-1} - mu) / sigma, so the gradient is exactly that of the sampled chain;
-- on later updates of the same batch the policy has moved and that formula would pin x_0
-- to the old sample, so the step draws fresh noise (DRaFT-K on the stored x_{T-K}).
local function action_noise(b, step, ctx)
  if ctx.update == 1 then
    return (b.next - step.mean:detach()) / step.sigma
  end
  return ctx:randn_like(step.mean)
end

-- Takes the last K steps from the stored x_{T-K} with the graph on; returns x_0, the batch
-- of the last step (for the reward's conditions) and the summed KL of those K steps.
function M.last_k_steps(traj, ctx, K, with_kl)
  assert(ctx.config.eta > 0, "DRaFT here re-takes stochastic steps: it needs config.eta > 0")
  local T = traj.steps
  local x = traj:at(T - K).x
  local kl, b = nil, nil
  for i = T - K, T - 1 do
    b = traj:at(i)
    local step = ctx:policy_step(b, x)
    if with_kl then
      local k = ctx:kl(step, ctx:reference_step(b, x))
      kl = kl and (kl + k) or k
    end
    x = step.mean + step.sigma * action_noise(b, step, ctx)
  end
  return x, b, kl
end

-- The KL of the first T-K steps (no reward gradient passes there): DRaFT+KL's sum over all
-- T steps, estimated from `kl_steps` random ones scaled by (T-K) / kl_steps, because one
-- policy pass per step and sample is what DRaFT-1 exists to avoid.
local function early_kl(traj, ctx, K)
  local T = traj.steps
  local n = math.min(ctx.config.params.kl_steps or 4, T - K)
  if n <= 0 then
    return nil
  end
  local pool = {}
  for i = 0, T - K - 1 do
    pool[#pool + 1] = i
  end
  local sum = nil
  for _, i in ipairs(on_policy.pick(pool, n)) do
    local b = traj:at(i)
    local k = ctx:kl(ctx:policy_step(b), ctx:reference_step(b))
    sum = sum and (sum + k) or k
  end
  return sum * ((T - K) / n)
end

-- The reward through the last K steps; with config.alpha > 0 plus alpha * sum_t KL_t over
-- all T steps (DRaFT+KL, Eq. in D.1.1; SEIKO with a random K).
function M.loss_k(traj, ctx, K)
  local cfg = ctx.config
  local with_kl = cfg.alpha > 0
  local x0, last, kl = M.last_k_steps(traj, ctx, K, with_kl)
  local r = ctx:reward(x0, last)
  local loss = -r
  local stats = { reward = r:mean():item() }
  if with_kl then
    local early = early_kl(traj, ctx, K)
    if early then
      kl = kl + early
    end
    loss = loss + cfg.alpha * kl
    stats.kl = kl:mean():item()
  end
  return loss:mean(), stats
end

-- DRaFT-K (K = params.K, 1 by default); with config.alpha > 0 it is DRaFT+KL.
function M.loss(traj, ctx)
  return M.loss_k(traj, ctx, ctx.config.params.K or 1)
end

-- DRaFT-LV (DRaFT paper, Algorithm 2): the chain is sampled without gradient; its x_0 is
-- re-noised to x_1 n times (q(x_1 | x_0)) and the last step is taken from each copy with
-- gradient. The loss averages the n copies' rewards (the paper sums them: a scale of lr).
function M.loss_lv(traj, ctx)
  local n = ctx.config.params.lv_copies or 2
  local last = traj:at(traj.steps - 1)
  local r = nil
  for _ = 1, n do
    local x1 = ctx:noise_to(last.next, last)
    local step = ctx:policy_step(last, x1)
    local x = step.mean + step.sigma * ctx:randn_like(step.mean)
    local rc = ctx:reward(x, last)
    r = r and (r + rc) or rc
  end
  r = r / n
  return (-r):mean(), { reward = r:mean():item() }
end

-- No discount, no priority (lua/baselines/on_policy.lua).
local on_policy = require("baselines.on_policy")
M.discount, M.priority = on_policy.discount, on_policy.priority

return M
