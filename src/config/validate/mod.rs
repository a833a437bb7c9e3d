//! Turns the YAML ([`super::spec`]) into the validated [`Config`] that runtime code receives.
//!
//! Every problem is collected (not just the first), each naming the key path, the bad value and
//! the fix, e.g. `routes[2].upstream: "forman" is not a defined upstream (defined: foreman)`.
//! This file holds the entry points, the section order and the process-wide sections
//! (`server`, `admin`, `access_log`, `shutdown`); each other concern has its own file.

mod cache;
mod cert_headers;
mod listeners;
mod maps;
mod policy;
mod routes;
mod sections;
mod upstream_tls;
mod upstreams;

use super::spec::*;
use super::types::*;
use super::{parse_duration, parse_size, ConfigError, ConfigErrors};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Reads, parses and validates a configuration file.
pub fn load_config(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            path: String::new(),
            message: format!("cannot read the file: {e}; check the path given to -c"),
        }])
    })?;
    parse_config(&text, path)
}

/// Parses and validates configuration text; `path` names the file in errors and anchors relative paths.
pub fn parse_config(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    let mut v = Validator {
        file: path.display().to_string(),
        errors: Vec::new(),
    };
    let spec = v.parse_spec(text);
    let config = spec.map(|s| v.validate(&s, path));
    match config {
        Some(c) if v.errors.is_empty() => Ok(c),
        _ => {
            // `file:LINE:COLUMN: key.path: message`, the compilers' convention, where the
            // item is found
            for e in &mut v.errors {
                if let Some((line, column)) = super::locate::position_of(text, &e.path) {
                    e.file = format!("{}:{line}:{column}", e.file);
                }
            }
            Err(ConfigErrors(v.errors))
        }
    }
}

struct Validator {
    file: String,
    errors: Vec<ConfigError>,
}

impl Validator {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.clone(),
            path: path.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, path: &str, v: Option<&String>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => parse_duration(s).unwrap_or_else(|m| {
                self.err(path, m);
                default
            }),
        }
    }

    fn size(&mut self, path: &str, v: Option<&String>, default: u64) -> u64 {
        match v {
            None => default,
            Some(s) => parse_size(s).unwrap_or_else(|m| {
                self.err(path, m);
                default
            }),
        }
    }

    fn validate(&mut self, s: &ConfigSpec, path: &Path) -> Config {
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let server = self.server(s, &base);
        let (listeners, binds) = self.listeners(s, &base);
        let admin = self.admin(s, &base, &binds);
        let access_log = self.access_log(s);
        let upstreams = self.upstreams(s, &base);
        let maps = self.maps(s, &base);
        let routes = self.routes(s, &upstreams, &maps);
        let policy = self.policy(s, &base);
        let cache = self.cache(s);
        let shutdown = self.shutdown(s);
        Config {
            file: path.to_path_buf(),
            server,
            listeners,
            admin,
            access_log,
            upstreams,
            routes,
            maps,
            policy,
            cache,
            shutdown,
        }
    }

    fn server(&mut self, s: &ConfigSpec, base: &Path) -> ServerSettings {
        let rel = |p: &str| resolve(base, p);
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let server = ServerSettings {
            threads: s.server.threads.unwrap_or(cores),
            work_stealing: s.server.work_stealing.unwrap_or(true),
            upstream_keepalive_pool: s
                .server
                .upstream_keepalive_pool
                .unwrap_or(DEFAULT_KEEPALIVE_POOL),
            keepalive_requests: s.server.keepalive_requests,
            pid_file: s.server.pid_file.clone(),
            upgrade_sock: s
                .server
                .upgrade_sock
                .as_deref()
                .map(|p| rel(p).display().to_string())
                .unwrap_or_else(|| DEFAULT_UPGRADE_SOCK.to_string()),
            client_body: crate::config::BodyTimeout {
                base: self.duration(
                    "server.client_body_timeout",
                    s.server.client_body_timeout.as_ref(),
                    DEFAULT_CLIENT_BODY_TIMEOUT,
                ),
                min_rate: s
                    .server
                    .client_body_min_rate
                    .unwrap_or(DEFAULT_CLIENT_BODY_MIN_RATE),
            },
            log_format: match s.server.log_format.as_deref() {
                None | Some("text") => ProcessLogFormat::Text,
                Some("json") => ProcessLogFormat::Json,
                Some(o) => {
                    self.err(
                        "server.log_format",
                        format!("{o:?} is not a log format; use text (the default) or json"),
                    );
                    ProcessLogFormat::Text
                }
            },
        };
        if server.client_body.base.is_zero() {
            self.err(
                "server.client_body_timeout",
                "0s would refuse every request body; use e.g. \"20s\" (the default)",
            );
        }
        // why: sun_path holds 108 bytes with its terminating NUL
        if server.upgrade_sock.len() > 107 {
            self.err(
                "server.upgrade_sock",
                format!(
                    "{:?} is {} bytes, longer than a UNIX socket path may be (107); choose a shorter path",
                    server.upgrade_sock,
                    server.upgrade_sock.len()
                ),
            );
        }
        if server.threads == 0 {
            self.err(
                "server.threads",
                "0 is not a thread count; use 1 or more (default: number of cores)",
            );
        }
        server
    }

    fn admin(&mut self, s: &ConfigSpec, base: &Path, binds: &HashSet<String>) -> AdminConfig {
        let rel = |p: &str| resolve(base, p);
        let admin_spec = s.admin.clone().unwrap_or(AdminSpec {
            bind: None,
            token_env: None,
            runtime_socket: None,
        });
        let admin = AdminConfig {
            bind: admin_spec
                .bind
                .clone()
                .unwrap_or_else(|| DEFAULT_ADMIN_BIND.to_string()),
            token_env: admin_spec.token_env.clone(),
            runtime_socket: admin_spec.runtime_socket.as_deref().map(rel),
        };
        match admin.bind.parse::<SocketAddr>() {
            Err(_) => self.err("admin.bind", format!("{:?} is not an IP:port address; write e.g. \"127.0.0.1:9901\"", admin.bind)),
            Ok(a) if !a.ip().is_loopback() && admin.token_env.is_none() => self.err(
                "admin.token_env",
                format!("the admin listener {} is not on loopback, so it needs a token: set token_env to the name of an environment variable holding one", admin.bind),
            ),
            Ok(_) => {}
        }
        if binds.contains(&admin.bind) {
            self.err(
                "admin.bind",
                format!(
                    "{:?} is also a proxy listener; give the admin API its own address",
                    admin.bind
                ),
            );
        }
        admin
    }

    fn access_log(&mut self, s: &ConfigSpec) -> AccessLogConfig {
        AccessLogConfig {
            enabled: s.access_log.enabled.unwrap_or(true),
            format: match s.access_log.format.as_deref() {
                None | Some("combined") => LogFormat::Combined,
                Some("json") => LogFormat::Json,
                Some(o) => {
                    self.err(
                        "access_log.format",
                        format!("{o:?} is not a format; use combined or json"),
                    );
                    LogFormat::Combined
                }
            },
        }
    }

    fn shutdown(&mut self, s: &ConfigSpec) -> ShutdownConfig {
        let sd = s.shutdown.clone().unwrap_or_default();
        let pre_drain = self.duration("shutdown.pre_drain", sd.pre_drain.as_ref(), Duration::ZERO);
        let drain = self.duration("shutdown.drain", sd.drain.as_ref(), DEFAULT_DRAIN);
        let ceiling = self.duration(
            "shutdown.ceiling",
            sd.ceiling.as_ref(),
            pre_drain + drain + DEFAULT_CEILING_MARGIN,
        );
        if ceiling < pre_drain + drain {
            self.err(
                "shutdown.ceiling",
                format!(
                    "{} is shorter than pre_drain + drain ({}); raise the ceiling or shorten the phases",
                    humantime::format_duration(ceiling),
                    humantime::format_duration(pre_drain + drain)
                ),
            );
        }
        ShutdownConfig {
            pre_drain,
            drain,
            ceiling,
        }
    }
}

/// `p` as given when absolute, else relative to the config file's folder `base`.
fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() {
        p
    } else {
        base.join(p)
    }
}
