-- maintenance.lua: during maintenance answer 503 with Retry-After: 120 and a JSON message,
-- except for the status API and health checks.
--
-- Switch it on either by setting ENABLED = true below (and reloading), or at run time by
-- setting the shared flag `maintenance` to true (e.g. through the admin API) and back to false.

local ENABLED = false
local BODY = '{"displayMessage": "The service is down for maintenance. Please try again later."}'

local function active()
  return ENABLED or shared.get("maintenance") == true
end

local function allowed(path)
  return path == "/api/status" or path:sub(1, 7) == "/health"
end

function admit(req)
  if not active() or allowed(req.path) then
    return nil
  end
  return { deny = 503, retry_after = 120, body = BODY }
end

function selftest()
  shared.set("maintenance", true)
  local d = admit(fake.request { path = "/rhsm/consumers" })
  assert(d and d.deny == 503 and d.retry_after == 120, "maintenance denies with 503")
  assert(d.body:find('"displayMessage"', 1, true), "body carries displayMessage")
  assert(admit(fake.request { path = "/api/status" }) == nil, "status API stays up")
  assert(admit(fake.request { path = "/healthz" }) == nil, "health checks stay up")
  shared.set("maintenance", false)
  assert(admit(fake.request { path = "/rhsm/consumers" }) == nil or ENABLED, "flag off: pass")
end
