//! Engine tests of the sandbox on a real Lua VM: request views that outlive their call or are
//! written to, per-script globals, and the budgets of library calls.
#![allow(clippy::unwrap_used)]

use super::tests::{adjust, assert_budget_stops, engine, no_host, req};
use super::*;

#[test]
fn request_view_kept_past_its_call_cannot_read_another_requests_data() {
    let src =
        "function admit(req)\n  if stash then local _ = stash.headers end\n  stash = req\nend";
    let e = engine(&[("stash.lua", src)]);
    let h = no_host();
    assert_eq!(e.admit(&req("GET", "/1"), h.clone()).1, Outcome::Ok);
    let (_, o) = e.admit(&req("GET", "/2"), h.clone());
    assert_eq!(
        o,
        Outcome::Error("stash.lua:2: request view used outside of its hook call".into())
    );
}

#[test]
fn oversized_load_chunks_are_refused() {
    let src = "function admit(req) assert(load(string.rep(' ', 70000))) end";
    let e = engine(&[("big.lua", src)]);
    let (_, o) = e.admit(&req("GET", "/"), no_host());
    assert!(
        matches!(&o, Outcome::Error(m) if m.contains("larger than 64 KiB")),
        "{o:?}"
    );
}

#[test]
fn views_fetch_lazily_and_pairs_sees_everything() {
    let src = r#"
        function admit(req)
          assert(req.headers["X-A"] == "1, 2" and req.headers["x-a"] == "1, 2", "joined, any case")
          assert(req.headers.missing == nil and req.headers.missing == nil, "absent header")
          assert(req.headers[1] == nil, "non-string key")
          local names = {}
          for k, v in pairs(req.headers) do names[#names + 1] = k .. "=" .. v end
          table.sort(names)
          assert(table.concat(names, ";") == "b=3;x-a=1, 2", table.concat(names, ";"))
          assert(req.headers.B == "3", "lookup after pairs")
          assert(req.query.q == "first" and req.query.Q == nil, "query is case-sensitive")
          local n = 0
          for k, v in pairs(req.query) do n = n + 1 assert(k ~= "q" or v == "first") end
          assert(n == 2, "query pairs")
          assert(req.tls == nil and req.client_ip == nil and req.route == nil, "absent fields")
          assert(req.nope == nil, "unknown field")
          local empty = true
          for _ in pairs(req) do empty = false end
          assert(empty, "pairs(req) shows nothing")
          return { priority = 1 }
        end
        function response(req, resp)
          assert(resp.status == 204 and resp.headers["content-type"] == "a, b")
          local n = 0
          for _ in pairs(resp.headers) do n = n + 1 end
          assert(n == 1 and req.path == "/p")
          return nil
        end
    "#;
    let e = engine(&[("v.lua", src)]);
    let r = PolicyRequest {
        method: "GET".into(),
        path: "/p".into(),
        query: vec![
            ("q".into(), "first".into()),
            ("z".into(), "".into()),
            ("q".into(), "second".into()),
        ],
        headers: vec![
            ("X-A".into(), "1".into()),
            ("B".into(), "3".into()),
            ("x-a".into(), "2".into()),
        ],
        ..Default::default()
    };
    let h = no_host();
    for _ in 0..3 {
        assert_eq!(
            e.admit(&r, h.clone()),
            (adjust(1), Outcome::Ok),
            "every call alike"
        );
    }
    let resp = PolicyResponse {
        status: 204,
        headers: vec![
            ("Content-Type".into(), "a".into()),
            ("content-type".into(), "b".into()),
        ],
    };
    assert_eq!(e.response(&r, &resp, h.clone()).1, Outcome::Ok);
}

#[test]
fn every_field_of_a_stale_view_is_refused() {
    for (field, line) in [("path", 2), ("headers.x", 2), ("query.x", 2), ("tls", 2)] {
        let src = format!(
            "function admit(req)\n  if stash then local _ = stash.{field} end\n  stash = req\nend"
        );
        let e = engine(&[("stash.lua", &src)]);
        let h = no_host();
        assert_eq!(e.admit(&req("GET", "/1"), h.clone()).1, Outcome::Ok);
        let (_, o) = e.admit(&req("GET", "/2"), h.clone());
        assert_eq!(
            o,
            Outcome::Error(format!(
                "stash.lua:{line}: request view used outside of its hook call"
            )),
            "{field}"
        );
    }
    // A header table kept past its call is refused too.
    let src = "function admit(req)\n  if kept then local _ = kept.x end\n  kept = req.headers\nend";
    let e = engine(&[("keep.lua", src)]);
    let h = no_host();
    assert_eq!(e.admit(&req("GET", "/1"), h.clone()).1, Outcome::Ok);
    assert_eq!(
        e.admit(&req("GET", "/2"), h.clone()).1,
        Outcome::Error("keep.lua:2: request view used outside of its hook call".into())
    );
}

#[test]
fn each_script_has_its_own_globals_and_library_tables() {
    let a = r#"
        rawset(_G, "x", 1)
        y = 2
        _G.w = 4
        string.find = nil
        string.x = 1
        table.insert = nil
        load("z = 3")()
        setmetatable(_G, { __index = function() return "evil" end })
        function admit(req)
          assert(x == 1 and y == 2 and z == 3 and w == 4 and string.find == nil, "own changes")
          assert(undefined_name == "evil")
        end
    "#;
    let b = r#"
        function admit(req)
          assert(x == nil and y == nil and z == nil and w == nil, "globals leaked")
          assert(rawget(_G, "x") == nil and undefined_name == nil, "_G leaked")
          assert(string.x == nil and string.find and table.insert, "library tables leaked")
          assert(("abc"):find("b") == 2 and getmetatable("") == false, "string metatable")
          return { priority = 1 }
        end
    "#;
    let e = engine(&[("a.lua", a), ("b.lua", b)]);
    assert_eq!(
        e.admit(&req("GET", "/"), no_host()),
        (adjust(1), Outcome::Ok)
    );
}

#[test]
fn c_loops_proportional_to_an_argument_are_stopped_by_the_budget() {
    assert_budget_stops(r#"string.find(string.rep("a", 30000), string.rep("a-", 30) .. "b")"#);
    assert_budget_stops(r#"string.gsub("abc", "%w", function() while true do end end)"#);
    assert_budget_stops(r#"while true do string.rep("", 4e9) end"#);
    assert_budget_stops("table.move({}, 1, 1 << 62, 2)");
    let huge = "setmetatable({}, { __len = function() return 1 << 62 end })";
    assert_budget_stops(&format!("table.remove({huge}, 1)"));
    assert_budget_stops(&format!("table.insert({huge}, 1, true)"));
}

#[test]
fn rep_of_nothing_returns_at_once() {
    let e = engine(&[(
        "rep.lua",
        r#"function admit(req) return { priority = #string.rep("", 4e9) + 3 } end"#,
    )]);
    let t = Instant::now();
    assert_eq!(
        e.admit(&req("GET", "/"), no_host()),
        (adjust(3), Outcome::Ok)
    );
    assert!(t.elapsed() < Duration::from_millis(50), "{:?}", t.elapsed());
}

#[test]
fn table_insert_remove_move_behave_as_stock() {
    let e = engine(&[(
        "t.lua",
        r#"function admit(req)
          local t = {}
          table.insert(t, "a") table.insert(t, "c") table.insert(t, 2, "b")
          assert(table.concat(t) == "abc")
          assert(table.remove(t, 1) == "a" and table.remove(t) == "c" and #t == 1)
          assert(table.remove({}) == nil)
          assert(not pcall(table.insert, t, 5, "x"), "position out of bounds")
          assert(not pcall(table.insert, t, 1, 2, 3), "wrong number of arguments")
          local m = table.move({1, 2, 3}, 1, 3, 2)
          assert(table.concat(m, ",") == "1,1,2,3")
          local d = table.move({1, 2, 3}, 2, 3, 1, {})
          assert(table.concat(d, ",") == "2,3")
          return { priority = 1 }
        end"#,
    )]);
    assert_eq!(
        e.admit(&req("GET", "/"), no_host()),
        (adjust(1), Outcome::Ok)
    );
}

#[test]
fn rawset_on_a_view_is_refused_so_a_later_script_sees_the_request_as_it_is() {
    // The scripts of one call share its views; a rawset by one would be read by the next.
    let a = r#"
        local function plant(view) pcall(rawset, view, "planted", "a") end
        function admit(req)
          plant(req) plant(req.headers) plant(req.query) plant(req.tls)
        end
        function response(req, resp)
          plant(req) plant(resp) plant(resp.headers)
        end
    "#;
    let b = r#"
        local function clean(view, what)
          assert(rawget(view, "planted") == nil and view.planted == nil, what .. " leaked")
          local ok, err = pcall(rawset, view, "planted", "b")
          assert(not ok and err:find("read-only", 1, true), what .. ": " .. tostring(err))
        end
        function admit(req)
          clean(req, "req") clean(req.headers, "req.headers")
          clean(req.query, "req.query") clean(req.tls, "req.tls")
          return { priority = 1 }
        end
        function response(req, resp)
          clean(req, "req") clean(resp, "resp") clean(resp.headers, "resp.headers")
        end
    "#;
    let e = engine(&[("a.lua", a), ("b.lua", b)]);
    let r = PolicyRequest {
        tls: Some(TlsInfo::default()),
        ..req("GET", "/")
    };
    assert_eq!(
        e.admit(&r, no_host()),
        (adjust(1), Outcome::Ok),
        "admit: both scripts ran clean"
    );
    let resp = PolicyResponse {
        status: 200,
        headers: vec![],
    };
    assert_eq!(
        e.response(&r, &resp, no_host()).1,
        Outcome::Ok,
        "response: both scripts ran clean"
    );
}
