-- POST /api/auth/login/mfa {mfa_token, code}: walks the pairs of the file named by the first
-- script argument ("mfa_token code" per line) once, thread k of n (second argument) taking
-- lines k, k+n, ...; each pair is sent exactly once. When every one of its pairs has been
-- answered, a thread stops and creates the file "<third argument>.<k>", on which the driver
-- ends wrk with SIGINT (wrk itself would sleep out its -d, which only bounds the run).
-- Connections that find the list exhausted meanwhile wait (delay) and then ask for an unknown
-- path (404, not tallied). The rate is computed from the first request to the last answer
-- (first_us/last_us), not from wrk's -d.
dofile(string.gsub(debug.getinfo(1, "S").source, "^@(.*)mfa%.lua$", "%1common.lua"))

local FILLER = wrk.format("GET", "/bench-exhausted")

function init(args)
  local n = tonumber(args[2])
  marker = args[3] .. "." .. id
  bodies = {}
  local k = 0
  for line in io.lines(args[1]) do
    local token, code = string.match(line, "^(%S+)%s+(%S+)$")
    if token then
      if k % n == id then
        table.insert(bodies, '{"mfa_token":"' .. token .. '","code":"' .. code .. '"}')
      end
      k = k + 1
    end
  end
  sent, answered = 0, 0
  -- wrk calls request() once before the run to check the request (on the first thread); that
  -- request is never sent, so the first call of each thread must not use up a pair
  checked = false
  headers = { ["content-type"] = "application/json" }
end

function delay()
  if sent >= #bodies then return 1000 end
  return 0
end

function request()
  if not checked then
    checked = true
    return FILLER
  end
  if sent >= #bodies then return FILLER end
  sent = sent + 1
  if first_us == 0 then first_us = now_us() end
  return wrk.format("POST", "/api/auth/login/mfa", headers, bodies[sent])
end

function response(status, headers, body)
  if status == 404 then return end -- a filler (login/mfa itself never answers 404)
  answered = answered + 1
  last_us = now_us()
  tally(status, body)
  if answered == #bodies then
    wrk.thread:stop()
    local f = io.open(marker, "w")
    if f then f:close() end
  end
end
