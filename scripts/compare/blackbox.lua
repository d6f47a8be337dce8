-- The paper's black-box comparison (§5.2, Table 1) on the digits benchmark: SQDF and SEIKO
-- on a learned surrogate with bootstrap or UCB optimism, and PPO+KL on the oracle itself,
-- all with the same oracle budget, three seeds each.
--
--   cargo run --release -- compare scripts/compare/blackbox.lua [--quick]
--
-- The report (runs/compare-blackbox[-quick]/) has Table 1's columns (the oracle reward is
-- the noise-free gold score) with the queries each run used, and the oracle reward against
-- the queries used, one point per round.
-- Quick (a smoke check under 15 minutes on 2 cores): 3 rounds of 8, 16, 32 queries, one
-- epoch each; SEIKO one update per epoch through at most 2 steps.
local QUICK_ROUNDS = { queries = { 8, 16, 32 }, round_epochs = 1, epochs = 3 }
local QUICK_SEIKO = {
  queries = { 8, 16, 32 },
  round_epochs = 1,
  epochs = 3,
  updates_per_epoch = 1,
  ["params.K_max"] = 2,
}

return {
  title = "Online black-box optimisation on the digits benchmark (Table 1)",
  seeds = { 0, 1, 2 }, -- paper: 3 seeds
  evals = 4, -- one evaluation per round
  -- eval_per_prompt 8: the pretrained model's samples come from the evaluation cache.
  quick = { seeds = { 0 }, evals = 1, set = { eval_per_prompt = 8 } },
  runs = {
    {
      label = "PPO+KL",
      script = "../blackbox/digits_ppo_kl.lua",
      -- Quick: 2 epochs of 32 queries, 2 PPO passes each (the others label 56 in 3 rounds).
      quick_set = { oracle_budget = 64, epochs = 2, updates_per_epoch = 2 },
    },
    {
      label = "SEIKO-Bootstrap",
      script = "../blackbox/digits_seiko.lua",
      quick_set = QUICK_SEIKO,
    },
    {
      label = "SEIKO-UCB",
      script = "../blackbox/digits_seiko.lua",
      set = { uncertainty = "ucb" },
      quick_set = QUICK_SEIKO,
    },
    {
      label = "SQDF-Bootstrap",
      script = "../blackbox/digits_sqdf.lua",
      quick_set = QUICK_ROUNDS,
    },
    {
      label = "SQDF-UCB",
      script = "../blackbox/digits_sqdf.lua",
      set = { uncertainty = "ucb" },
      quick_set = QUICK_ROUNDS,
    },
  },
}
