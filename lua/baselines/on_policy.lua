-- What the on-policy baselines (update_on = "trajectories") share: discount and priority
-- hooks that neither discount nor prioritise, and a random pick of steps.
local M = {}

-- `n` distinct values of `pool`, in random order: the first n draws of a Fisher-Yates
-- shuffle (n calls of math.random). `pool` is shuffled in place.
function M.pick(pool, n)
  for j = 1, n do
    local k = math.random(j, #pool)
    pool[j], pool[k] = pool[k], pool[j]
  end
  return { table.unpack(pool, 1, n) }
end

function M.discount()
  return 1
end

function M.priority()
  return 0
end

return M
