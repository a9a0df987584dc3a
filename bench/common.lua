-- Shared by session.lua and mfa.lua (loaded with dofile): wall-clock time through LuaJIT's
-- ffi, a status tally per thread, and one RESULT line printed by done() for the driver.
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_usec; } bench_timeval;
int gettimeofday(bench_timeval *tv, void *tz);
]]
local tv = ffi.new("bench_timeval")
function now_us()
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.tv_sec) * 1000000 + tonumber(tv.tv_usec)
end

local threads = {}
local next_id = 0
function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

-- per thread
counts = {}
first_us = 0
last_us = 0
sample = ""

function tally(status, body)
  counts[status] = (counts[status] or 0) + 1
  if status ~= 200 and sample == "" then
    sample = status .. " " .. string.sub(string.gsub(body or "", "%s+", " "), 1, 300)
  end
end

function done(summary, latency, requests)
  local total, statuses = {}, {}
  local first, last, samples = 0, 0, {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("counts")) do total[k] = (total[k] or 0) + v end
    local f, l = t:get("first_us"), t:get("last_us")
    if f > 0 and (first == 0 or f < first) then first = f end
    if l > last then last = l end
    local s = t:get("sample")
    if s ~= "" then table.insert(samples, s) end
  end
  local ok, n = 0, 0
  for k, v in pairs(total) do
    table.insert(statuses, k .. ":" .. v)
    n = n + v
    if k == 200 then ok = v end
  end
  table.sort(statuses)
  local e = summary.errors
  io.write(string.format(
    "RESULT ok=%d total=%d first_us=%d last_us=%d dur_us=%d p50_us=%d p99_us=%d statuses=%s sockerr=%d/%d/%d/%d\n",
    ok, n, first, last, summary.duration, latency:percentile(50), latency:percentile(99),
    table.concat(statuses, ";"), e.connect, e.read, e.write, e.timeout))
  for _, s in ipairs(samples) do io.write("SAMPLE " .. s .. "\n") end
end
