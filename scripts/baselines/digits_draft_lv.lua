-- DRaFT-LV: DRaFT-1 plus two re-noised copies of x_0 through the last step (lower variance).
local s = require("digits_draft")
s.loss = require("baselines.draft").loss_lv
s.config.params.lv_copies = 2 -- DRaFT paper: n = 2
return s
