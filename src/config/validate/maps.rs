//! `maps:`: map files, their pollers and their duplicate and unknown-value policies.

use super::{resolve, Validator};
use crate::config::spec::*;
use crate::config::types::*;
use std::collections::BTreeMap;
use std::path::Path;

impl Validator {
    pub(super) fn maps(&mut self, s: &ConfigSpec, base: &Path) -> BTreeMap<String, MapConfig> {
        let rel = |p: &str| resolve(base, p);
        let mut maps = BTreeMap::new();
        for (name, m) in &s.maps {
            let p = format!("maps.{name}");
            if m.file.is_none() && m.source.is_none() {
                self.err(&p, "a map needs a file, a source, or both");
            }
            if m.persist && m.file.is_none() {
                self.err(
                    format!("{p}.persist"),
                    "persist: true writes API changes to the map file, so it needs file:",
                );
            }
            let source = m.source.as_ref().map(|src| {
                let url = crate::maps::poller::parse_url(&src.url);
                if let Err(e) = &url {
                    self.err(
                        format!("{p}.source.url"),
                        format!("{e}; use an http:// or https:// URL such as https://puppetdb:8081/pdb/query/v4"),
                    );
                }
                let https = url.as_ref().is_ok_and(|u| u.https);
                if src.tls.is_some() && !https && url.is_ok() {
                    self.err(
                        format!("{p}.source.tls"),
                        format!("is set but url {:?} is plain http://; use an https:// url or remove tls", src.url),
                    );
                }
                let ip_host = url
                    .as_ref()
                    .is_ok_and(|u| u.host.parse::<std::net::IpAddr>().is_ok());
                let tls = src
                    .tls
                    .as_ref()
                    .map(|t| self.upstream_tls(&format!("{p}.source.tls"), t, base, ip_host));
                if https && src.tls.is_none() && ip_host {
                    self.err(
                        format!("{p}.source.tls"),
                        "the url's host is an IP address, so there is no host name to verify; add tls: { sni: NAME-IN-THE-CERTIFICATE } (or verify_hostname: false)",
                    );
                }
                MapSourceConfig {
                    tls,
                    url: src.url.clone(),
                    every: self.duration(
                        &format!("{p}.source.every"),
                        src.every.as_ref(),
                        DEFAULT_MAP_POLL_EVERY,
                    ),
                    timeout: self.duration(
                        &format!("{p}.source.timeout"),
                        src.timeout.as_ref(),
                        DEFAULT_MAP_POLL_TIMEOUT,
                    ),
                    format: match src.format.as_deref() {
                        None | Some("map") => MapFormat::Map,
                        Some("json") => MapFormat::Json,
                        Some(o) => {
                            self.err(
                                format!("{p}.source.format"),
                                format!("{o:?} is not a format; use map or json"),
                            );
                            MapFormat::Map
                        }
                    },
                }
            });
            let mut policy = crate::maps::MapPolicy::default();
            if let Some(v) = &m.on_duplicate {
                match crate::maps::OnDuplicate::parse(v) {
                    Some(d) => policy.on_duplicate = d,
                    None => self.err(
                        format!("{p}.on_duplicate"),
                        format!("{v:?} is not a choice; use first (HAProxy's), last or error"),
                    ),
                }
            }
            if let Some(v) = &m.on_unknown_value {
                match crate::maps::OnUnknownValue::parse(v) {
                    Some(u) => policy.on_unknown_value = u,
                    None => self.err(
                        format!("{p}.on_unknown_value"),
                        format!("{v:?} is not a choice; use skip or error"),
                    ),
                }
            }
            maps.insert(
                name.clone(),
                MapConfig {
                    name: name.clone(),
                    file: m.file.as_deref().map(rel),
                    persist: m.persist,
                    source,
                    policy,
                },
            );
        }
        maps
    }
}
