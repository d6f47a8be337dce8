-- DDPO on the digits benchmark (lua/baselines/ddpo.lua): PPO on the actions' likelihood
-- ratios; the reward is only read, never differentiated.
local ddpo = require("baselines.ddpo")
local digits = require("digits_reward")

return {
  config = {
    task = "digits",
    seed = 0,
    epochs = 14,
    batch = 32,
    updates_per_epoch = 4, -- PPO epochs over each sampled batch (DDPO code: 1 inner epoch
    -- of several minibatches; here 4 passes, the same number of optimiser steps as SQDF)
    update_on = "trajectories",
    capacity = 256, -- holds the last 16 rewards of every digit for the per-prompt statistics
    lr = 3e-4, -- paper: 3e-4
    alpha = 0, -- no KL (digits_ddpo_kl.lua sets 0.2)
    lora_rank = 4,
    guidance = 5.0,
    params = {
      clip_range = 1e-4, -- DDPO code: 1e-4
      adv_clip = 5, -- DDPO code: 5
      buffer_size = 16, -- DDPO code: statistics over the last 16 rewards of a prompt
      min_count = 16, -- DDPO code: 16 rewards per prompt before its own statistics
      -- DDPO code trains every step (1.0); 0.2 (10 of 50 per update) keeps an update within
      -- 3x an SQDF update on 2 cores.
      timestep_fraction = 0.2,
    },
  },
  reward = digits.reward,
  loss = ddpo.loss,
  discount = ddpo.discount,
  priority = ddpo.priority,
}
