-- rate-limit.lua: at most LIMIT requests per second per client IP (fixed one-second windows,
-- counted in the `shared` dictionary, so all worker threads share the count).
-- Over the limit: 429 with Retry-After: 1. If the dictionary is full the request passes
-- (fail open) rather than punishing every client.

local LIMIT = 20

function admit(req)
  local ip = req.client_ip
  if ip == nil then
    return nil
  end
  -- The key is created with a 1 s ttl; later increments keep that expiry.
  local n = shared.incr("ratelimit:" .. ip, 1, 0, 1)
  if n ~= nil and n > LIMIT then
    return { deny = 429, retry_after = 1, body = "too many requests\n" }
  end
  return nil
end

function selftest()
  local a = fake.request { client_ip = "192.0.2.1" }
  for i = 1, LIMIT do
    assert(admit(a) == nil, "request " .. i .. " is within the limit")
  end
  local d = admit(a)
  assert(d and d.deny == 429 and d.retry_after == 1, "request LIMIT+1 is denied")
  assert(admit(fake.request { client_ip = "192.0.2.2" }) == nil, "other clients are not affected")
  assert(admit(fake.request {}) == nil, "no client ip: no opinion")
end
