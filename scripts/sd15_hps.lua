-- SQDF on Stable Diffusion 1.5 for HPSv2, the paper's large-scale text-to-image run (§5.1,
-- Fig. 3 bottom row, Appendix D.1.1): batch 258, LoRA rank 32, 500 updates, with the
-- large-scale gamma, alpha and learning rate.
--
--   cargo run --release --features cuda -- run scripts/sd15_hps.lua --set weights=DIR
--
-- DIR holds the public files, HPSv2's checkpoint among them (docs/sd15.md). The paper
-- trains on HPDv2's prompts (3,200 in four categories, 12 per category held out for the
-- evaluation); they are not shipped: write them one per line to a file and add
-- --set prompts=FILE. Without it the run uses the 45 animals of the aesthetic script.
-- The paper took 401 s per update on two RTX 4090s.
local sqdf = require("sqdf")

return {
  config = {
    task = "sd15",
    seed = 0,
    epochs = 500, -- paper: 500 training steps (one update per sampled batch)
    batch = 258, -- paper: 258 trajectories per epoch and states per update
    micro_batch = 1, -- sampled and back-propagated one at a time (docs/sd15.md: SD-1.5 memory)
    updates_per_epoch = 1, -- released code: replay_ratio 1
    lr = 5e-4, -- paper, large scale: 5e-4, AdamW(0.9, 0.999, wd 1e-4)
    alpha = 0.05, -- paper, large scale: 0.05 (HPS is a cosine: the paper reports about 0.28)
    gamma = 0.93, -- paper, large scale: 0.93
    capacity = 1024, -- released code: FIFO of 1024 trajectories
    sampling = "uniform",
    x0 = "consistency", -- LCM-LoRA merged into a frozen copy of the UNet, no guidance
    lora_rank = 32, -- paper, large scale: 32, on the attention projections q, k, v, out
    guidance = 5.0, -- paper: 5.0, for policy and reference
    steps = 50, -- DDPM sampling (DDIM with eta = 1), 50 steps
    evals = 6, -- paper Fig. 3: six evenly spaced checkpoints up to epoch 500
    eval_per_prompt = 4, -- evaluation samples per prompt (paper: 32 per evaluation prompt)
  },

  -- HPSv2 of the image and its prompt; the released text-to-image code zeroes rewards <= 0.
  reward = function(x0, cond, cfg)
    return rewards.hps(x0, cond):maximum(0)
  end,

  loss = sqdf.loss, -- Eq. 16
  discount = sqdf.discount,
  priority = sqdf.priority,
}
