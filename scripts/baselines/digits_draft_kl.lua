-- DRaFT+KL (SQDF paper, Appendix D.1.1): DRaFT-1 with alpha * sum_t KL_t added to the loss.
local s = require("digits_draft")
s.config.alpha = 0.04 -- paper: 0.04 (Fig. 4: 0.03, 0.035, 0.04)
return s
