-- floodgate policy prelude: runs once per Lua VM, in the sandboxed globals, before any script.
-- It finishes the sandbox (wrappers that only Lua can express cheaply), defines the read-only
-- request/response views, the `maps`/`upstream`/`fake` helpers, and returns the internals the
-- Rust side needs (`dispatch` calls one hook with the running call's views). Arguments:
-- tripped() -> bool (the time budget fired during this call), validate(kind, value) -> error
-- string or nil (kind is "decision" or "edit"), metatable_of(v) -> the metatable of table v
-- even behind `__metatable` (nil for anything else; it stays local to the prelude).
local tripped, validate, metatable_of = ...

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
-- only: the compiler is C code, which the time budget hook cannot interrupt. Each script gets
-- its own `load` (from `load_in`), whose chunks run in that script's environment by default.
local function load_in(default_env)
  return function(chunk, name, _mode, env)
    if type(chunk) ~= "string" then error("load accepts only source text", 2) end
    if #chunk > 65536 then error("load: chunk larger than 64 KiB", 2) end
    if env == nil then env = default_env end
    return raw_load(chunk, name, "t", env)
  end
end
load = load_in(_G)

-- why: the C versions loop to `#t` or `e - f` without running a Lua instruction, and a
-- `__len` metamethod or an argument makes that 2^62 on an empty table; in Lua the budget
-- hook fires inside the loop. Same arguments, results and messages as Lua 5.4's ltablib.c.
local tointeger, select = math.tointeger, select
local MAXINT = math.maxinteger
local function checktab(t, fname)
  if type(t) ~= "table" then
    error("bad argument #1 to '" .. fname .. "' (table expected, got " .. type(t) .. ")", 3)
  end
end
local function checkint(v, arg, fname)
  local i = tointeger(v)
  if i == nil then
    local why = type(v) == "number" and "number has no integer representation"
      or "number expected, got " .. (v == nil and "no value" or type(v))
    error("bad argument #" .. arg .. " to '" .. fname .. "' (" .. why .. ")", 3)
  end
  return i
end
local function argerror(arg, fname, msg)
  error("bad argument #" .. arg .. " to '" .. fname .. "' (" .. msg .. ")", 3)
end

function table.insert(t, ...)
  checktab(t, "insert")
  local e = #t + 1
  local n = select("#", ...)
  if n == 1 then
    t[e] = ...
    return
  elseif n ~= 2 then
    error("wrong number of arguments to 'insert'", 2)
  end
  local pos, v = ...
  pos = checkint(pos, 2, "insert")
  if pos < 1 or pos > e then argerror(2, "insert", "position out of bounds") end
  for i = e, pos + 1, -1 do t[i] = t[i - 1] end
  t[pos] = v
end

function table.remove(t, pos)
  checktab(t, "remove")
  local size = #t
  if pos == nil then pos = size else pos = checkint(pos, 2, "remove") end
  if pos ~= size and (pos < 1 or pos > size + 1) then
    argerror(2, "remove", "position out of bounds")
  end
  local v = t[pos]
  while pos < size do
    t[pos] = t[pos + 1]
    pos = pos + 1
  end
  t[pos] = nil
  return v
end

function table.move(a1, f, e, t, a2)
  f, e, t = checkint(f, 2, "move"), checkint(e, 3, "move"), checkint(t, 4, "move")
  local same = a2 == nil
  if same then a2 = a1 end
  checktab(a1, "move")
  if type(a2) ~= "table" then argerror(5, "move", "table expected, got " .. type(a2)) end
  if e >= f then
    if not (f > 0 or e < MAXINT + f) then argerror(3, "move", "too many elements to move") end
    local n = e - f + 1
    if t > MAXINT - n + 1 then argerror(4, "move", "destination wrap around") end
    if t > e or t <= f or (not same and a1 ~= a2) then
      for i = 0, n - 1 do a2[t + i] = a1[f + i] end
    else
      for i = n - 1, 0, -1 do a2[t + i] = a1[f + i] end
    end
  end
  return a2
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
-- Host operations: HOST(op, a, b) answers from the running call (the gateway, in serving VMs)
-- or from the fakes below (selftest). Numbers, so that no string crosses for the op itself;
-- the Rust side (lua.rs, `op`) uses the same table.
local OP = {
  map = 1, healthy = 2, total = 3, inflight = 4, queued = 5,
  method = 10, path = 11, client_ip = 12, route = 13, tls = 14,
  req_header = 20, req_headers = 21, query_param = 22, query = 23,
  status = 30, resp_header = 31, resp_headers = 32,
}
local HOST                       -- set below (fake_host) and by set_host in serving VMs
local NONE = {}                  -- a fetched value that turned out absent
local STALE = "request view used outside of its hook call"

-- The views of the running call and what was fetched for it (field op -> value, NONE, or the
-- map view). Views are fresh empty tables per call, so one kept past its call is told apart
-- from the current one; `C` is emptied when the next call starts.
local LIVE_REQ, LIVE_RESP
local C = {}

local function readonly(_, k)
  error("policy views are read-only (cannot set " .. tostring(k) .. ")", 2)
end

-- The scripts of one call share its views (one `req`, one `req.headers`, ...), so a field
-- rawset on a view by one script would be read by the next. A view is a table whose metatable
-- has `readonly` as `__newindex`; rawset refuses it. why: a fresh view per script would cost
-- a table per script per call (and per fetched sub-view); this check costs nothing until a
-- script calls rawset.
_G.rawset = function(t, k, v)
  local mt = metatable_of(t)
  if mt ~= nil and rawget(mt, "__newindex") == readonly then
    error("policy views are read-only (cannot set " .. tostring(k) .. ")", 2)
  end
  return rawset(t, k, v)
end

-- Fields fetched on first access: field name -> op.
local REQ_FIELDS = { method = OP.method, path = OP.path, client_ip = OP.client_ip,
                     route = OP.route, tls = OP.tls, headers = OP.req_header, query = OP.query_param }
local RESP_FIELDS = { status = OP.status, headers = OP.resp_header }

-- Stores for views built from plain tables (fake requests, tls): view -> backing table.
local STORE = raw_setmetatable({}, { __mode = "k" })
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

-- Map views (headers, query) fetch one name at a time (op), or every name at once for pairs()
-- (op + 1). Per op: a metatable, what the running call fetched (VALS[op]: name as asked ->
-- value or NONE) and, once pairs() asked, everything (ALL[op]: lowercase name if folded).
local MAP_MT, VALS, ALL = {}, {}, {}
local function map_view(op, fold)
  local vals = {}
  VALS[op] = vals
  MAP_MT[op] = {
    __index = function(p, k)
      if C[op] ~= p then error(STALE, 2) end
      if type(k) ~= "string" then return nil end
      local v = vals[k]
      if v == nil then
        local all = ALL[op]
        if all then
          if fold then k = lower(k) end
          return all[k]
        end
        -- The host matches header names case-insensitively.
        v = HOST(op, k)
        if v == nil then v = NONE end
        vals[k] = v
      end
      if v == NONE then return nil end
      return v
    end,
    __pairs = function(p)
      if C[op] ~= p then error(STALE, 2) end
      local all = ALL[op]
      if all == nil then
        all = HOST(op + 1)
        ALL[op] = all
      end
      return next, all, nil
    end,
    __newindex = readonly, __metatable = "read-only",
  }
end
map_view(OP.req_header, true)
map_view(OP.query_param, false)
map_view(OP.resp_header, true)

-- First access to a field of the running call.
local function fetch(op)
  local v
  local mt = MAP_MT[op]
  if mt then
    v = raw_setmetatable({}, mt)
  else
    v = HOST(op)
    if v == nil then
      v = NONE
    elseif op == OP.tls then
      v = wrap(v, PLAIN)
    end
  end
  C[op] = v
  return v
end

local REQ = {
  __index = function(p, k)
    local op = REQ_FIELDS[k]
    if op == nil then return nil end
    if p ~= LIVE_REQ then error(STALE, 2) end
    local v = C[op] or fetch(op)
    if v == NONE then return nil end
    return v
  end,
  __newindex = readonly, __metatable = "read-only",
}
local RESP = {
  __index = function(p, k)
    local op = RESP_FIELDS[k]
    if op == nil then return nil end
    if p ~= LIVE_RESP then error(STALE, 2) end
    local v = C[op] or fetch(op)
    if v == NONE then return nil end
    return v
  end,
  __newindex = readonly, __metatable = "read-only",
}

-- Calls hook `f` of one script for the running call. `fresh` (the first script of a call)
-- starts a new call: new views, nothing fetched yet.
local function dispatch(f, fresh, with_resp)
  if fresh then
    for op in next, C do
      C[op] = nil
      local vals = VALS[op]
      if vals then
        for k in next, vals do vals[k] = nil end
        ALL[op] = nil
      end
    end
    LIVE_REQ = raw_setmetatable({}, REQ)
    if with_resp then LIVE_RESP = raw_setmetatable({}, RESP) else LIVE_RESP = nil end
  end
  if with_resp then return f(LIVE_REQ, LIVE_RESP) end
  return f(LIVE_REQ)
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
        return HOST(OP.map, name, tostring(key))
      end,
      __newindex = readonly, __metatable = "read-only",
    })
    rawset(m, name, view)
    return view
  end,
  __newindex = readonly, __metatable = "read-only",
})

upstream = {
  healthy = function(name) return HOST(OP.healthy, name) end,
  total = function(name) return HOST(OP.total, name) end,
  inflight = function(name) return HOST(OP.inflight, name) end,
  queued = function(name) return HOST(OP.queued, name) end,
}

---------------------------------------------------------------------------------------------
-- Fakes for selftest(): the host outside real calls answers from these tables.
---------------------------------------------------------------------------------------------
local FAKE_MAPS, FAKE_UPSTREAMS = {}, {}
local UPSTREAM_OPS = { [OP.healthy] = "healthy", [OP.total] = "total",
                       [OP.inflight] = "inflight", [OP.queued] = "queued" }
local function fake_host(op, a, b)
  if op == OP.map then
    local m = FAKE_MAPS[a]
    local v = m and m[b]
    if v == nil then return nil end
    return tostring(v)
  end
  local field = UPSTREAM_OPS[op]
  local u = field and FAKE_UPSTREAMS[a]
  return u and u[field]
end
HOST = fake_host

local function copy(t, lowercase)
  local out = {}
  for k, v in pairs(t or {}) do
    if lowercase then k = lower(k) end
    out[k] = v
  end
  return out
end

-- Fake views hold every field up front; like real ones they are read-only.
local FAKE_VIEW = {
  __index = function(t, k) return STORE[t][k] end,
  __newindex = readonly, __metatable = "read-only",
}

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
    }, FAKE_VIEW)
  end,
  response = function(r)
    r = r or {}
    return wrap({ status = r.status or 200, headers = wrap(copy(r.headers, true), NOCASE) },
                FAKE_VIEW)
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

-- Serving VMs answer host operations from the running call (after the scripts' top-level code
-- ran against the fakes).
local function set_host(f) HOST = f end

return { dispatch = dispatch, set_host = set_host, checked = checked, log_helper = log_helper,
         load_in = load_in }
