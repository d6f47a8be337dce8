-- PPO+KL in the black-box setting (paper §5.2, Appendix D.1.2): DDPO+KL trained on the
-- oracle itself, every sampled image one query, with the same budget as the surrogate
-- methods' rounds (128 + 256 + 512 + 1024 = 1920 here; paper 15,360).
--
--   cargo run --release -- run scripts/blackbox/digits_ppo_kl.lua
local ddpo = require("baselines.ddpo")

local SCALE = require("digits_reward").SCALE -- the digits benchmark's reward scale

return {
  config = {
    task = "digits",
    seed = 0,
    oracle = "gold",
    oracle_noise = 0.01,
    oracle_budget = 1920, -- = the sum of digits_sqdf.lua's queries
    epochs = 60, -- 60 x 32 samples = the budget
    batch = 32,
    updates_per_epoch = 4, -- PPO epochs over each sampled batch
    update_on = "trajectories",
    capacity = 256,
    lr = 3e-4, -- paper: 3e-4
    alpha = 0.2, -- paper: 0.2 (DDPO+KL)
    lora_rank = 4,
    guidance = 5.0,
    evals = 4,
    params = {
      clip_range = 1e-4, -- DDPO code
      adv_clip = 5,
      buffer_size = 16,
      min_count = 16,
      timestep_fraction = 0.2, -- as scripts/baselines/digits_ddpo.lua
    },
  },

  -- Counted: each call while the trainer samples spends batch queries of the budget.
  reward = function(x0, cond, cfg)
    return rewards.oracle(x0) * SCALE
  end,

  loss = ddpo.loss,
  discount = ddpo.discount,
  priority = ddpo.priority,
}
