-- The paper's comparison on the digits benchmark: SQDF, its baselines (Fig. 3), its
-- ablations (Table 2, Fig. 6/10) and the alpha trade-off curves (Fig. 4), three seeds each.
--
--   cargo run --release -- compare scripts/compare/paper.lua [--quick]
--
-- Every run is `sqdf run <script> --set ...` in its own process; the report (report.md, the
-- figures, results.json) goes to runs/compare-paper[-quick]/. Rerunning keeps finished runs.
local SQDF = "../digits_sqdf.lua"

return {
  title = "SQDF, its baselines and its ablations on the digits benchmark",
  seeds = { 0, 1, 2 }, -- paper: 3 seeds
  evals = 6, -- evaluations along training per run (the paper plots six points per method)
  quick = { seeds = { 0 }, evals = 2, set = { epochs = 6, eval_per_prompt = 8 } },
  runs = {
    -- Fig. 3: the methods, each with its paper's alpha; the scripts name the paper's other
    -- settings and where the digits runs differ (docs/results.md).
    { label = "SQDF", script = SQDF },
    { label = "DRaFT-1", script = "../baselines/digits_draft.lua" },
    { label = "DRaFT-LV", script = "../baselines/digits_draft_lv.lua" },
    { label = "DRaFT+KL", script = "../baselines/digits_draft_kl.lua" },
    { label = "ReFL", script = "../baselines/digits_refl.lua" },
    { label = "DDPO", script = "../baselines/digits_ddpo.lua" },
    { label = "DDPO+KL", script = "../baselines/digits_ddpo_kl.lua" },

    -- Table 2 and Fig. 6/10: SQDF with one part changed.
    { label = "SQDF gamma=1", script = SQDF, set = { gamma = 1.0 } },
    { label = "SQDF w/o CM (Tweedie)", script = SQDF, set = { x0 = "tweedie" } },
    { label = "SQDF DDIM-2 x0", script = SQDF, set = { x0 = "ddim", x0_steps = 2 } },
    { label = "SQDF DDIM-4 x0", script = SQDF, set = { x0 = "ddim", x0_steps = 4 } },
    { label = "SQDF w/o buffer", script = SQDF, set = { capacity = 32 } }, -- = batch: on-policy
    { label = "SQDF prioritised", script = SQDF, set = { sampling = "priority" } }, -- gamma^k r

    -- Fig. 6: the discount; `base`: the SQDF runs (gamma 0.9) are the curve's third point.
    { label = "SQDF gamma", script = SQDF, sweep = { gamma = { 0.85, 0.95 } }, base = "SQDF" },

    -- Fig. 4: the KL weight of each KL-regularised method (paper: SQDF 2, 3, 4; DRaFT+KL
    -- 0.03, 0.035, 0.04; DDPO+KL 0.2, 0.3, 0.4); each default comes from its base runs.
    { label = "SQDF alpha", script = SQDF, sweep = { alpha = { 3, 4 } }, base = "SQDF" },
    {
      label = "DRaFT+KL alpha",
      script = "../baselines/digits_draft_kl.lua",
      sweep = { alpha = { 0.03, 0.035 } },
      base = "DRaFT+KL",
    },
    {
      label = "DDPO+KL alpha",
      script = "../baselines/digits_ddpo_kl.lua",
      sweep = { alpha = { 0.3, 0.4 } },
      base = "DDPO+KL",
    },
  },
}
