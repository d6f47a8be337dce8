-- SEIKO (Uehara et al. 2024), the black-box baseline of the SQDF paper (§5.2, Table 1):
-- KL-regularised direct backpropagation of the surrogate reward through a random number of
-- final sampling steps, with the KL taken against the previous round's model
-- (config.kl_reference = "previous").
--
-- The SQDF paper (D.1.2) takes SEIKO's official settings: alpha = 0.01, 5 inner iterations
-- of 64 samples, K uniform in (0, 50). SEIKO's code (online/online_main.py): DDIM 50 steps
-- with eta 1, the UNet's output detached before a step drawn uniformly from 0..50 and
-- redrawn at every step; lr 1e-3, AdamW weight decay 0.1, 10 updates of 64 per round; loss
-- 0.01 |r - 10| + 0.01 KL: the paper's alpha = 0.01 beside a reward also scaled by 0.01, a
-- KL weight of 1 relative to the reward, the KL summed over the steps with the Gaussian
-- KL's 1/2.
-- Here: the gradient runs through the last K steps, K uniform in 1..params.K_max per update
-- (the issue's "random number of final steps"; K_max below 50 bounds memory on a CPU). The
-- KL of the other steps is estimated from params.kl_steps random ones (DRaFT+KL's way);
-- scripts/blackbox/digits_seiko.lua sets it to 0, as SEIKO's code, whose detached steps
-- pass the KL no gradient.
local draft = require("baselines.draft")
local M = {}

-- K of the update in progress: with config.micro_batch the loss is called once per
-- micro-batch, and all of an update's micro-batches take the K drawn at its first.
local K = nil

function M.loss(traj, ctx)
  if ctx.micro_batch == 1 or not K then
    K = math.random(1, math.min(ctx.config.params.K_max or 50, traj.steps))
  end
  local loss, stats = draft.loss_k(traj, ctx, K)
  stats.K = K
  return loss, stats
end

M.discount, M.priority = draft.discount, draft.priority

return M
