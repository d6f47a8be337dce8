-- A variant made by copying scripts/digits_sqdf.lua (docs/results.md, "Writing a new variant"): the
-- replay buffer draws the states of high-reward trajectories, every step alike, instead of
-- max(r, 0) * gamma^k (Appendix E.1). Everything else is the SQDF script's.
--
--   cargo run --release -- run scripts/digits_exp_priority.lua
local sqdf = require("sqdf")
local digits = require("digits_reward")

return {
  config = {
    task = "digits",
    seed = 0,
    epochs = 14,
    batch = 32,
    updates_per_epoch = 4,
    lr = 1e-3,
    alpha = 2.0,
    gamma = 0.9,
    capacity = 256,
    sampling = "priority", -- draw buffer states through the `priority` hook below
    x0 = "consistency",
    lora_rank = 4,
    guidance = 5.0,
    params = { temperature = 0.5 }, -- softmax temperature over the stored rewards
  },

  reward = digits.reward,
  loss = sqdf.loss,
  discount = sqdf.discount,

  -- The change: exp(r / temperature), no gamma^k. Edit it while the run goes; it reloads
  -- between epochs and every stored state's priority is recomputed.
  priority = function(s, cfg)
    return math.exp(s.reward / cfg.params.temperature)
  end,
}
