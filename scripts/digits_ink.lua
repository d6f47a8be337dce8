-- A reward written in Lua: the mean ink of the digit (analytic, differentiable, and easy to
-- over-optimise: a canvas full of ink scores highest). Everything else as digits_sqdf.lua.
--
--   cargo run --release -- run scripts/digits_ink.lua
local sqdf = require("sqdf")

return {
  config = {
    task = "digits",
    epochs = 14,
    batch = 32,
    updates_per_epoch = 4,
    alpha = 2.0,
    gamma = 0.9,
    capacity = 256,
    lora_rank = 4,
  },

  -- Ink in [0, 1] per pixel, averaged over the image: [B, 1, 28, 28] -> [B].
  reward = function(x0, cond, cfg)
    local ink = (x0 + 1) / 2
    return ink:reshape(ink:size(1), -1):mean(2) * 10
  end,

  loss = sqdf.loss,
  discount = sqdf.discount,
  priority = sqdf.priority,
}
