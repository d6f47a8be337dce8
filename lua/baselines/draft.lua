-- DRaFT-K and DRaFT-LV (Clark et al. 2024), and DRaFT+KL as the SQDF paper defines it
-- (Appendix D.1.1): backpropagate the reward through the last K sampling steps only.
--
-- Paper's hyperparameters (SD-1.5, aesthetic): DDIM 50 steps, K = 1, lr 4e-4, batch 64,
-- LoRA rank 4, CFG 5.0; DRaFT+KL alpha = 0.04 (0.03, 0.035, 0.04 in Fig. 4), the KL summed
-- over all T steps and added to the reward. DRaFT-LV: n = 2 re-noised copies of x_0.
--
-- Used with config.update_on = "trajectories": `traj` is this epoch's trajectories, sampled
-- without gradient by the trainer; the last K steps are taken again here with gradient.
local M = {}

-- The trajectory's own action noise, eps = (x_{t-1} - mu) / sigma: re-taking a step with it
-- reproduces the stored action, so the update right after sampling differentiates exactly
-- the trajectory that was sampled.
local function action_noise(b, step)
  return (b.next - step.mean:detach()) / step.sigma
end

-- Takes the last K steps from the stored x_{T-K} with the graph on; returns x_0, the batch
-- of the last step (for the reward's conditions) and the summed KL of those K steps.
function M.last_k_steps(traj, ctx, K, with_kl)
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
    x = step.mean + step.sigma * action_noise(b, step)
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
  for j = 1, n do
    local pick = math.random(j, #pool)
    pool[j], pool[pick] = pool[pick], pool[j]
    local b = traj:at(pool[j])
    local k = ctx:kl(ctx:policy_step(b), ctx:reference_step(b))
    sum = sum and (sum + k) or k
  end
  return sum * ((T - K) / n)
end

-- DRaFT-K; with config.alpha > 0 it is DRaFT+KL: -r(x_0) + alpha * sum_t KL_t (Eq. in D.1.1).
function M.loss(traj, ctx)
  local cfg = ctx.config
  local K = cfg.params.K or 1
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

-- DRaFT-LV: DRaFT-1 plus n copies of the last step taken from x_0 re-noised to x_1
-- (q(x_1 | x_0)), whose rewards are averaged in: n + 1 reward gradients for one chain.
function M.loss_lv(traj, ctx)
  local n = ctx.config.params.lv_copies or 2
  local x0, last = M.last_k_steps(traj, ctx, 1, false)
  local r = ctx:reward(x0, last)
  local clean = last.next
  for _ = 1, n do
    local x1 = ctx:noise_to(clean, last)
    local step = ctx:policy_step(last, x1)
    local x = step.mean + step.sigma * ctx:randn_like(step.mean)
    r = r + ctx:reward(x, last)
  end
  r = r / (n + 1)
  return (-r):mean(), { reward = r:mean():item() }
end

-- On-policy methods neither discount nor prioritise; the hooks exist for the contract.
function M.discount()
  return 1
end

function M.priority()
  return 0
end

return M
