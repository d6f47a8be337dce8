-- SQDF on the digits benchmark: fine-tune the shipped class-conditional UNet (LoRA, rank 4)
-- for the learned reward, a CNN that predicts stroke boldness, as the paper fine-tunes
-- SD-1.5 for the LAION aesthetic predictor (§5.1, Appendix D.1.1).
--
--   cargo run --release -- run scripts/digits_sqdf.lua
--
-- eval.json reports the learned reward next to its gold score (the boldness it imitates):
-- a learned reward rising while the gold score does not is reward hacking.
local sqdf = require("sqdf")
-- The target reward every digits method shares (lua/digits_reward.lua): the learned
-- boldness reward (about 0.1-0.3), scaled by 10 so that alpha weighs it as in the paper.
local digits = require("digits_reward")

return {
  config = {
    task = "digits",
    seed = 0,
    epochs = 14, -- about 1.5 minutes on 2 cores (docs/speed.md)
    batch = 32, -- trajectories per epoch and states per update (paper: 64)
    updates_per_epoch = 4,
    lr = 1e-3, -- paper: 1e-3
    alpha = 2.0, -- paper: 2 (aesthetic), with the released KL scale
    gamma = 0.9, -- paper: 0.9
    capacity = 256, -- trajectories in the FIFO replay buffer
    sampling = "uniform",
    x0 = "consistency", -- the distilled consistency model (models/digits/consistency.md)
    lora_rank = 4, -- paper: 4
    guidance = 5.0, -- paper: 5.0, for policy and reference
  },

  -- rewards.learned and rewards.gold are the task's (tensor in, one score per sample out).
  reward = digits.reward,

  loss = sqdf.loss, -- Eq. 16
  discount = sqdf.discount,
  priority = sqdf.priority,
}
