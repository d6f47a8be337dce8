-- DDPO+KL (SQDF paper, Appendix D.1.1): the detached per-step KL, times alpha, comes off
-- the advantage.
local s = require("digits_ddpo")
s.config.alpha = 0.2 -- paper: 0.2 (Fig. 4: 0.2, 0.3, 0.4)
return s
