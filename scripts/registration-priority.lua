-- registration-priority.lua: during a registration storm, hosts that are already part-way
-- through registering go first.
--
-- A host registers with `GET /register` (fetches the registration script), then talks to the
-- entitlement API: `POST /rhsm/consumers` and later `/rhsm/...` calls. Those later calls get
-- priority 1; new registrations (`GET /register`) get priority 0, so a flood of new hosts cannot
-- starve hosts that already started. Higher priority is admitted first. Other paths: no opinion.

local function is_rhsm(path)
  return path == "/rhsm" or path:sub(1, 6) == "/rhsm/"
end

function admit(req)
  if req.method == "GET" and req.path == "/register" then
    return { priority = 0 }
  end
  if is_rhsm(req.path) then
    return { priority = 1 }
  end
  return nil
end

function selftest()
  local d = admit(fake.request { method = "GET", path = "/register" })
  assert(d and d.priority == 0, "GET /register gets priority 0")
  d = admit(fake.request { method = "POST", path = "/rhsm/consumers" })
  assert(d and d.priority == 1, "POST /rhsm/consumers gets priority 1")
  d = admit(fake.request { method = "GET", path = "/rhsm/consumers/abc/certificates" })
  assert(d and d.priority == 1, "later /rhsm calls get priority 1")
  assert(admit(fake.request { path = "/rhsmx" }) == nil, "/rhsmx is not /rhsm")
  assert(admit(fake.request { path = "/api/status" }) == nil, "other paths: no opinion")
end
