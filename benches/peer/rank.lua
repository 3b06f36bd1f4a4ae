-- wrk script: POST /v1/rank for known users, the user, hour and weekday drawn
-- at random per request (each wrk thread from its own fixed seed, so a run
-- sends the same sequence to whichever server it targets).
--
--   wrk -t2 -c16 -d10s --latency -s benches/peer/rank.lua URL -- USERS_FILE
--
-- USERS_FILE holds one known user id a line (compare.sh writes it from
-- models/catalog/users.parquet).

local threads = {}
local counter = 0

function setup(thread)
   counter = counter + 1
   thread:set("seed", 1000 + counter)
   table.insert(threads, thread)
end

function init(args)
   local path = args[1] or error("usage: ... -- USERS_FILE")
   users = {}
   for line in io.lines(path) do
      if line ~= "" then users[#users + 1] = line end
   end
   assert(#users > 0, "no user ids in " .. path)
   math.randomseed(seed or 1)
   headers = { ["Content-Type"] = "application/json" }
end

function request()
   local body = string.format(
      '{"user_id":"%s","k":10,"context":{"hour":%d,"weekday":%d}}',
      users[math.random(#users)], math.random(0, 23), math.random(0, 6))
   return wrk.format("POST", "/v1/rank", headers, body)
end
