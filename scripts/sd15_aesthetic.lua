-- SQDF on Stable Diffusion 1.5 for the LAION aesthetic score: the paper's small-scale
-- text-to-image run (§5.1, Appendix D.1), LoRA rank 4, LCM-LoRA as the consistency model,
-- DDPO's 45 animal prompts (models/sd15/simple_animals.txt).
--
--   cargo run --release --features cuda -- run scripts/sd15_aesthetic.lua --set weights=DIR
--
-- DIR holds the public files (docs/sd15.md); without them the run stops
-- at once and lists what is missing. The paper took 62 s per update on two RTX 4090s.
local sqdf = require("sqdf")

return {
  config = {
    task = "sd15",
    seed = 0,
    epochs = 2000, -- paper: 2000 training steps (one update per sampled batch)
    batch = 64, -- paper: 64 trajectories per epoch and states per update
    micro_batch = 1, -- sampled and back-propagated one at a time (docs/sd15.md: SD-1.5 memory)
    updates_per_epoch = 1, -- released code: replay_ratio 1
    lr = 1e-3, -- paper: 1e-3, AdamW(0.9, 0.999, wd 1e-4)
    alpha = 2.0, -- paper: 2 (aesthetic), with the released KL scale
    gamma = 0.9, -- paper: 0.9
    capacity = 1024, -- released code: FIFO of 1024 trajectories
    sampling = "uniform",
    x0 = "consistency", -- LCM-LoRA merged into a frozen copy of the UNet, no guidance
    lora_rank = 4, -- paper: 4, on the attention projections q, k, v, out
    guidance = 5.0, -- paper: 5.0, for policy and reference
    steps = 50, -- DDPM sampling (DDIM with eta = 1), 50 steps
    eval_per_prompt = 4, -- evaluation samples per prompt (paper: 32 per evaluation prompt)
  },

  -- The released text-to-image code zeroes rewards <= 0 (aesthetic scores are about 5-6).
  reward = function(x0, cond, cfg)
    return rewards.aesthetic(x0):maximum(0)
  end,

  loss = sqdf.loss, -- Eq. 16
  discount = sqdf.discount,
  priority = sqdf.priority,
}
