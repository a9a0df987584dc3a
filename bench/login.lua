-- POST /api/auth/login {email, password} with the right password of the users named one per
-- line ("email password") in the file given as the first script argument, each thread cycling
-- through them from its own offset. Every status is tallied, 200 counts as success.
dofile(string.gsub(debug.getinfo(1, "S").source, "^@(.*)login%.lua$", "%1common.lua"))

function init(args)
  bodies = {}
  for line in io.lines(args[1]) do
    local email, password = string.match(line, "^(%S+) (%S+)$")
    if email then
      table.insert(bodies, string.format('{"email":"%s","password":"%s"}', email, password))
    end
  end
  i = (id * 7) % #bodies
end

function request()
  i = i % #bodies + 1
  if first_us == 0 then first_us = now_us() end
  return wrk.format("POST", "/api/auth/login", { ["content-type"] = "application/json" }, bodies[i])
end

function response(status, headers, body)
  last_us = now_us()
  tally(status, body)
end
