-- puppet-routing.lua: pin each Puppet agent to its master.
--
-- Agents send their certname in `X-Node-Name`; the `node_master` map (configured in floodgate,
-- e.g. loaded from a file) says which server of upstream "puppet" holds that node's state.
-- Unknown nodes and requests without the header get no opinion (normal routing applies).

function route(req)
  local node = req.headers["x-node-name"]
  if node == nil then
    return nil
  end
  local master = maps.node_master[node]
  if master == nil then
    return nil
  end
  return { upstream = "puppet", server = master }
end

function selftest()
  fake.map("node_master", { ["web01.example.com"] = "master2" })
  local d = route(fake.request { path = "/puppet/v3/catalog/web01.example.com",
                                 headers = { ["X-Node-Name"] = "web01.example.com" } })
  assert(d and d.upstream == "puppet" and d.server == "master2", "known node goes to its master")
  assert(route(fake.request { headers = { ["X-Node-Name"] = "unknown.example.com" } }) == nil,
         "unknown node: no opinion")
  assert(route(fake.request { path = "/" }) == nil, "no header: no opinion")
end
