-- The discount and priority hooks of the on-policy baselines (update_on = "trajectories"):
-- they neither discount nor prioritise, but every script defines the four hooks.
local M = {}

function M.discount()
  return 1
end

function M.priority()
  return 0
end

return M
