//! Reading the YAML one section (and one list item or map entry) at a time, so that one typo
//! does not hide the errors after it.

use super::Validator;
use crate::config::spec::*;

impl Validator {
    /// Deserializes each section (and each list item or map entry) on its own, so one typo does
    /// not hide the errors after it.
    pub(super) fn parse_spec(&mut self, text: &str) -> Option<ConfigSpec> {
        let root: serde_yaml::Value = match serde_yaml::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                self.err("", format!("not valid YAML: {e}"));
                return None;
            }
        };
        let map = match root {
            serde_yaml::Value::Mapping(m) => m,
            serde_yaml::Value::Null => serde_yaml::Mapping::new(),
            _ => {
                self.err("", "the top level must be a mapping of sections (listeners:, upstreams:, routes:, ...)");
                return None;
            }
        };
        const SECTIONS: &[&str] = &[
            "server",
            "listeners",
            "admin",
            "access_log",
            "upstreams",
            "routes",
            "maps",
            "policy",
            "cache",
            "shutdown",
        ];
        let mut clean = serde_yaml::Mapping::new();
        let mut ok = true;
        for (k, val) in map {
            let key = k.as_str().unwrap_or("").to_string();
            if !SECTIONS.contains(&key.as_str()) {
                self.err(
                    key.clone(),
                    format!("unknown section; expected one of: {}", SECTIONS.join(", ")),
                );
                ok = false;
                continue;
            }
            if !self.check_section(&key, &val) {
                ok = false;
            }
            clean.insert(k, val);
        }
        if !ok {
            return None;
        }
        // why: the sections were checked from their text form (where `5` may stand for "5");
        // read the whole from text too, so both agree and `5` reaches the duration parser
        let text = match serde_yaml::to_string(&serde_yaml::Value::Mapping(clean)) {
            Ok(t) => t,
            Err(e) => {
                self.err("", e.to_string());
                return None;
            }
        };
        match serde_yaml::from_str::<ConfigSpec>(&text) {
            Ok(s) => Some(s),
            Err(e) => {
                self.err("", e.to_string());
                None
            }
        }
    }

    /// Deserializes one section item by item; returns false (after recording errors) on failure.
    pub(super) fn check_section(&mut self, key: &str, val: &serde_yaml::Value) -> bool {
        fn item<T: serde::de::DeserializeOwned>(v: &serde_yaml::Value) -> Result<(), String> {
            // why: re-reading the item from text makes serde_yaml report the nested key path
            let text = serde_yaml::to_string(v).map_err(|e| e.to_string())?;
            serde_yaml::from_str::<T>(&text).map(|_| ()).map_err(|e| {
                let s = e.to_string();
                // strip serde_yaml's "at line L column C" which refers to the re-serialized item
                match s.find(" at line ") {
                    Some(i) => s[..i].to_string(),
                    None => s,
                }
            })
        }
        let mut ok = true;
        let mut report = |v: &mut Validator, path: String, r: Result<(), String>| {
            if let Err(msg) = r {
                v.err(path, msg);
                ok = false;
            }
        };
        match (key, val) {
            ("listeners", serde_yaml::Value::Sequence(items)) => {
                for (i, it) in items.iter().enumerate() {
                    report(self, format!("listeners[{i}]"), item::<ListenerSpec>(it));
                }
            }
            ("routes", serde_yaml::Value::Sequence(items)) => {
                for (i, it) in items.iter().enumerate() {
                    let name = it
                        .get("name")
                        .and_then(|n| n.as_str())
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default();
                    report(self, format!("routes[{i}]{name}"), item::<RouteSpec>(it));
                }
            }
            ("upstreams", serde_yaml::Value::Mapping(m)) => {
                for (k, it) in m {
                    report(
                        self,
                        format!("upstreams.{}", k.as_str().unwrap_or("?")),
                        item::<UpstreamSpec>(it),
                    );
                }
            }
            ("maps", serde_yaml::Value::Mapping(m)) => {
                for (k, it) in m {
                    report(
                        self,
                        format!("maps.{}", k.as_str().unwrap_or("?")),
                        item::<MapSpec>(it),
                    );
                }
            }
            ("server", v) => report(self, "server".into(), item::<ServerSpec>(v)),
            ("admin", v) => report(self, "admin".into(), item::<AdminSpec>(v)),
            ("access_log", v) => report(self, "access_log".into(), item::<AccessLogSpec>(v)),
            ("policy", v) => report(self, "policy".into(), item::<PolicySpec>(v)),
            ("cache", v) => report(self, "cache".into(), item::<CacheSpec>(v)),
            ("shutdown", v) => report(self, "shutdown".into(), item::<ShutdownSpec>(v)),
            (_, serde_yaml::Value::Null) => {}
            (k, _) => {
                let want = if k == "listeners" || k == "routes" {
                    "a list"
                } else {
                    "a mapping"
                };
                report(self, k.to_string(), Err(format!("must be {want}")));
            }
        }
        ok
    }
}
