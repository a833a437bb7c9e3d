-- floodgate policy prelude: runs once per Lua VM, in the sandboxed globals, before any script.
-- It finishes the sandbox (wrappers that only Lua can express cheaply), defines the read-only
-- request/response views, the `maps`/`upstream`/`fake` helpers, and returns the internals the
-- Rust side needs. Arguments: tripped() -> bool (the time budget fired during this call),
-- validate(kind, value) -> error string or nil (kind is "decision" or "edit").
local tripped, validate = ...

local rawget, rawset, type, next, error, tostring, pairs = rawget, rawset, type, next, error, tostring, pairs
local raw_setmetatable, raw_getmetatable = setmetatable, getmetatable
local raw_pcall, raw_xpcall, raw_load, raw_collectgarbage = pcall, xpcall, load, collectgarbage
local lower, concat, pack = string.lower, table.concat, table.pack
local log_info, log_warn = log.info, log.warn

---------------------------------------------------------------------------------------------
-- Sandbox wrappers
---------------------------------------------------------------------------------------------
string.dump = nil
-- why: without this, getmetatable("").__index would hand out the shared `string` table.
raw_getmetatable("").__metatable = false

local MEMERR = "not enough memory"
-- A budget or memory error must not be swallowed by pcall/xpcall inside a script, or
-- `while true do pcall(spin) end` would outlive its budget.
local function rethrow(ok, ...)
  if not ok and (tripped() or (...) == MEMERR) then
    error((...), 0)
  end
  return ok, ...
end
function pcall(f, ...) return rethrow(raw_pcall(f, ...)) end
function xpcall(f, h, ...) return rethrow(raw_xpcall(f, h, ...)) end

-- why: finalizers run during garbage collection, possibly outside any hook call and so
-- outside any time budget.
function setmetatable(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("__gc metamethods are not allowed in policies", 2)
  end
  return raw_setmetatable(t, mt)
end

-- Text chunks only: binary chunks are not verified by Lua and can crash the VM. Small chunks
-- only: the compiler is C code, which the time budget hook cannot interrupt.
function load(chunk, name, _mode, env)
  if type(chunk) ~= "string" then error("load accepts only source text", 2) end
  if #chunk > 65536 then error("load: chunk larger than 64 KiB", 2) end
  if env == nil then return raw_load(chunk, name, "t") end
  return raw_load(chunk, name, "t", env)
end

function collectgarbage(opt)
  if opt ~= "count" then error('collectgarbage: only "count" is allowed', 2) end
  return raw_collectgarbage("count")
end

function print(...)
  local t = pack(...)
  for i = 1, t.n do t[i] = tostring(t[i]) end
  log_info(concat(t, "\t", 1, t.n))
end

---------------------------------------------------------------------------------------------
-- Read-only views (req, resp, req.headers, ...)
---------------------------------------------------------------------------------------------
local CTX = { seq = 0 }          -- host: function(op, a, b) for the current call; seq: call number
local STORE = raw_setmetatable({}, { __mode = "k" })  -- view -> backing table
local LIVE, KIND = {}, {}        -- private keys in a backing table
local NONE = {}                  -- a lazily fetched field that turned out absent

local function readonly(_, k)
  error("policy views are read-only (cannot set " .. tostring(k) .. ")", 2)
end
local function view_pairs(t) return next, STORE[t], nil end
local function wrap(store, mt)
  local p = raw_setmetatable({}, mt)
  STORE[p] = store
  return p
end

local PLAIN = {
  __index = function(t, k) return STORE[t][k] end,
  __newindex = readonly, __pairs = view_pairs, __metatable = "read-only",
}
-- Header tables: keys are stored lowercased; lookups lowercase on a miss.
local NOCASE = {
  __index = function(t, k)
    local s = STORE[t]
    local v = s[k]
    if v == nil and type(k) == "string" then v = s[lower(k)] end
    return v
  end,
  __newindex = readonly, __pairs = view_pairs, __metatable = "read-only",
}

-- Fields fetched from Rust on first access, per view kind.
local LAZY = {
  req_ = { headers = NOCASE, query = PLAIN, tls = PLAIN },
  resp_ = { headers = NOCASE },
}

local VIEW = {
  __index = function(t, k)
    local s = STORE[t]
    local v = s[k]
    if v == nil then
      local seq = s[LIVE]
      local mt = seq and LAZY[s[KIND]][k]
      if mt then
        if seq ~= CTX.seq then error("request view used outside of its hook call", 2) end
        local raw = CTX.host(s[KIND] .. k)
        if raw == nil then v = NONE else v = wrap(raw, mt) end
        s[k] = v
      end
    end
    if v == NONE then return nil end
    return v
  end,
  __newindex = readonly, __metatable = "read-only",
}

local function new_request(method, path, client_ip, route)
  return wrap({ method = method, path = path, client_ip = client_ip, route = route,
                [LIVE] = CTX.seq, [KIND] = "req_" }, VIEW)
end

local function new_response(status)
  return wrap({ status = status, [LIVE] = CTX.seq, [KIND] = "resp_" }, VIEW)
end

---------------------------------------------------------------------------------------------
-- Host helpers: maps.NAME[key], upstream.*
---------------------------------------------------------------------------------------------
maps = raw_setmetatable({}, {
  __index = function(m, name)
    if type(name) ~= "string" then return nil end
    local view = raw_setmetatable({}, {
      __index = function(_, key)
        if key == nil then return nil end
        return CTX.host("map", name, tostring(key))
      end,
      __newindex = readonly, __metatable = "read-only",
    })
    rawset(m, name, view)
    return view
  end,
  __newindex = readonly, __metatable = "read-only",
})

upstream = {
  healthy = function(name) return CTX.host("healthy", name) end,
  total = function(name) return CTX.host("total", name) end,
  inflight = function(name) return CTX.host("inflight", name) end,
  queued = function(name) return CTX.host("queued", name) end,
}

---------------------------------------------------------------------------------------------
-- Fakes for selftest(): the host outside real calls answers from these tables.
---------------------------------------------------------------------------------------------
local FAKE_MAPS, FAKE_UPSTREAMS = {}, {}
local function fake_host(op, a, b)
  if op == "map" then
    local m = FAKE_MAPS[a]
    local v = m and m[b]
    if v == nil then return nil end
    return tostring(v)
  end
  local u = FAKE_UPSTREAMS[a]
  return u and u[op]
end
CTX.host = fake_host

local function copy(t, lowercase)
  local out = {}
  for k, v in pairs(t or {}) do
    if lowercase then k = lower(k) end
    out[k] = v
  end
  return out
end

fake = {
  map = function(name, entries) FAKE_MAPS[name] = entries end,
  upstream = function(name, st)
    st = st or {}
    FAKE_UPSTREAMS[name] = {
      healthy = st.healthy or 1, total = st.total or st.healthy or 1,
      inflight = st.inflight or 0, queued = st.queued or 0,
    }
  end,
  request = function(r)
    r = r or {}
    local headers = copy(r.headers, true)
    for k, v in pairs(headers) do headers[k] = tostring(v) end
    return wrap({
      method = r.method or "GET", path = r.path or "/", client_ip = r.client_ip, route = r.route,
      headers = wrap(headers, NOCASE), query = wrap(copy(r.query), PLAIN),
      tls = r.tls and wrap(copy(r.tls), PLAIN) or nil,
    }, VIEW)
  end,
  response = function(r)
    r = r or {}
    return wrap({ status = r.status or 200, headers = wrap(copy(r.headers, true), NOCASE) }, VIEW)
  end,
}

---------------------------------------------------------------------------------------------
-- Internals returned to Rust
---------------------------------------------------------------------------------------------
-- Wraps a hook so that, during selftest(), what it returns is validated like at run time.
local function checked(kind, hook, f)
  return function(...)
    local r = f(...)
    local err = validate(kind, r)
    if err then
      error(hook .. " returned an invalid " .. (kind == "edit" and "response edit" or "decision")
            .. ": " .. err, 2)
    end
    return r
  end
end

-- A script defining `function log(req, resp)` shadows the log helper table; give it back a
-- helper table that is also callable as the hook.
local function log_helper(hook)
  return raw_setmetatable({ info = log_info, warn = log_warn },
                          { __call = function(_, ...) return hook(...) end })
end

return { ctx = CTX, new_request = new_request, new_response = new_response,
         checked = checked, log_helper = log_helper, fake_host = fake_host }
