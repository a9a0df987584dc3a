-- GET /api/auth/session with bearer tokens read from the file named by the first script
-- argument (one per line), each thread cycling through all of them from its own offset.
-- Fixed duration (wrk -d); every status is tallied, 200 counts as success.
dofile(string.gsub(debug.getinfo(1, "S").source, "^@(.*)session%.lua$", "%1common.lua"))

function init(args)
  tokens = {}
  for line in io.lines(args[1]) do
    if line ~= "" then table.insert(tokens, "Bearer " .. line) end
  end
  i = (id * 7) % #tokens
end

function request()
  i = i % #tokens + 1
  if first_us == 0 then first_us = now_us() end
  return wrk.format("GET", "/api/auth/session", { ["authorization"] = tokens[i] })
end

function response(status, headers, body)
  last_us = now_us()
  tally(status, body)
end
