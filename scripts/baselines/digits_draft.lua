-- DRaFT-1 on the digits benchmark: the reward gradient through the last sampling step only
-- (lua/baselines/draft.lua). Same model, reward, LoRA and sampling budget as
-- scripts/digits_sqdf.lua, so a comparison differs in the method alone.
--
--   cargo run --release -- run scripts/baselines/digits_draft.lua [--set params.K=4]
local draft = require("baselines.draft")
local digits = require("digits_reward")

return {
  config = {
    task = "digits",
    seed = 0,
    epochs = 14, -- as scripts/digits_sqdf.lua: 14 x 32 sampled trajectories
    batch = 32, -- trajectories per epoch (paper: 64)
    updates_per_epoch = 4, -- gradient steps per sampled batch, as SQDF takes
    update_on = "trajectories", -- on-policy: each update gets this epoch's chains
    capacity = 32, -- only the current batch is needed
    lr = 4e-4, -- paper: 4e-4 (small scale)
    alpha = 0, -- no KL: plain DRaFT (digits_draft_kl.lua sets 0.04)
    lora_rank = 4, -- paper: 4
    guidance = 5.0, -- paper: 5.0
    params = { K = 1, kl_steps = 4 }, -- K = 1: DRaFT-1, the paper's baseline
  },
  reward = digits.reward,
  loss = draft.loss,
  discount = draft.discount,
  priority = draft.priority,
}
