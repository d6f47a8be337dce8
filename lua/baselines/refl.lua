-- ReFL (Xu et al. 2023) as the SQDF paper runs it (Appendix D.1.1): denoise without
-- gradient to a random step in the last fifth of the chain ([40, 50) of 50), take one
-- policy step there with gradient and score its one-step Tweedie x0.
--
-- Paper's hyperparameters (SD-1.5): DDPM 50 steps, lr 1e-5 small-scale (2e-4 large-scale,
-- "to match DRaFT"), CFG 5.0. The trainer samples the chains; the stored state at the drawn
-- step is where the gradient step starts.
local M = {}

function M.loss(traj, ctx)
  local T = traj.steps
  local first = math.floor(T * (ctx.config.params.refl_from or 0.8))
  local i = math.random(first, T - 1) -- one step index for the whole batch, as ReFL
  local b = traj:at(i)
  local step = ctx:policy_step(b) -- step.x0: Tweedie's x0 from the policy's eps, with grad
  local r = ctx:reward(step.x0, b)
  return (-r):mean(), { reward = r:mean():item(), step = i }
end

-- No discount, no priority (lua/baselines/on_policy.lua).
local on_policy = require("baselines.on_policy")
M.discount, M.priority = on_policy.discount, on_policy.priority

return M
