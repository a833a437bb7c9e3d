-- registration-priority.lua: during a registration storm, hosts that are already under way
-- go first; new hosts wait below them.
--
-- A host registers with `GET /register` (the registration script, cached by the gateway),
-- then `POST /rhsm/consumers`: that POST is where a NEW host enters, and it is the expensive
-- step (about ten times a later call). The later `/rhsm/...` calls belong to hosts under
-- way. Giving them all one class makes the queue first-come-first-served across stages, so
-- a flood of new hosts delays the follow-ups of hosts that already paid for their POST until
-- they time out, and the app server's work is lost. Here new hosts get class 0 and hosts
-- under way class 1 (higher classes leave the queue first; fail-fast and a full queue turn
-- away class 0 first).
--
-- conf/foreman.yaml says the same without Lua (route `priority` by method and path); use this
-- script when the classes need more than a route match (e.g. per organisation).

local function is_rhsm(path)
  return path == "/rhsm" or path:sub(1, 6) == "/rhsm/"
end

function admit(req)
  if req.method == "POST" and req.path == "/rhsm/consumers" then
    return { priority = 0 }
  end
  if req.path == "/register" then
    return { priority = 0 }
  end
  if is_rhsm(req.path) then
    return { priority = 1 }
  end
  return nil
end

function selftest()
  local d = admit(fake.request { method = "POST", path = "/rhsm/consumers" })
  assert(d and d.priority == 0, "a new host (POST /rhsm/consumers) gets class 0")
  d = admit(fake.request { method = "GET", path = "/register" })
  assert(d and d.priority == 0, "GET /register (a cache miss) gets class 0")
  d = admit(fake.request { method = "GET", path = "/rhsm/consumers/abc/certificates" })
  assert(d and d.priority == 1, "a host under way gets class 1")
  d = admit(fake.request { method = "PUT", path = "/rhsm/consumers/abc" })
  assert(d and d.priority == 1, "later calls of any method get class 1")
  assert(admit(fake.request { path = "/rhsmx" }) == nil, "/rhsmx is not /rhsm")
  assert(admit(fake.request { path = "/api/status" }) == nil, "other paths: no opinion")
end
