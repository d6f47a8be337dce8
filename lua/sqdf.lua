-- The SQDF loss (paper Eq. 16), its discount (Eq. 13/15) and the prioritised replay
-- weight (Appendix E.1), as the authors' released code computes them.
--
-- Scripts use these directly (`loss = sqdf.loss`) or copy and change them.
local M = {}

-- Eq. 16: L = E_{x_t ~ D, eps}[ -gamma^{t-1} r(f_psi(x_{t-1})) + alpha KL(p_theta || p') ].
-- One sampled step per state; the action is reparameterised (Eq. 12), so the reward
-- gradient flows through x0_hat into x_{t-1} and into theta without the denoising chain.
function M.loss(batch, ctx)
  local cfg = ctx.config
  local step = ctx:policy_step(batch) -- p_theta(x_{t-1} | x_t) = N(mean, sigma^2), with grad
  local ref = ctx:reference_step(batch) -- p'(x_{t-1} | x_t), frozen
  local x_prev = step.mean + step.sigma * ctx:randn_like(step.mean) -- Eq. 12
  local x0 = ctx:x0_hat(x_prev, batch) -- f_psi(x_{t-1}); x_0 itself after the last step
  local r = ctx:reward(x0, batch) -- [B]
  -- Released code: mean over dimensions of (mu' - mu_theta)^2 / sigma^2 (no 1/2).
  local kl = ctx:kl(step, ref, "released")
  local loss = (-(batch.discount * r) + cfg.alpha * kl):mean()
  return loss, { kl = kl:mean():item(), q = (batch.discount * r):mean():item() }
end

-- Eq. 15: the soft Q of the step k steps before x_0 is gamma^k r; k = 0 is the last step.
function M.discount(k, cfg)
  return cfg.gamma ^ k
end

-- Appendix E.1: states of high-reward trajectories near x_0 first, max(r, 0) * gamma^k.
-- (With the loss weight above the discount counts twice, as in the released code.)
function M.priority(s, cfg)
  return math.max(s.reward, 0) * cfg.gamma ^ s.k
end

return M
