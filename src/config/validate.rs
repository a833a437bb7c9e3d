//! Turns the YAML ([`super::spec`]) into the validated [`Config`] that runtime code receives.
//!
//! Every problem is collected (not just the first), each naming the key path, the bad value and
//! the fix, e.g. `routes[2].upstream: "forman" is not a defined upstream (defined: foreman)`.

use super::spec::*;
use super::{parse_duration, parse_size, ConfigError, ConfigErrors};
use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_ADMIN_BIND: &str = "127.0.0.1:9901";
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_RETRIES: u32 = 2;
/// Consecutive connect failures on real traffic that mark a server down (as Apache's worker error state).
pub const DEFAULT_OBSERVE_FAILURES: u32 = 3;
pub const DEFAULT_QUEUE_MAX: usize = 1000;
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(30);
pub const DEFAULT_KEEPALIVE_POOL: usize = 1024;
pub const DEFAULT_CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(20);
pub const DEFAULT_CLIENT_BODY_MIN_RATE: u64 = 500;
pub const DEFAULT_HEALTH_PATH: &str = "/api/status";
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 256 << 20;
pub const DEFAULT_CACHE_WAIT: Duration = Duration::from_secs(30);
pub const DEFAULT_CACHE_ENTRY_MAX: u64 = 8 << 20;
pub const DEFAULT_SHARED_TIMEOUT: Duration = Duration::from_millis(50);
pub const DEFAULT_POLICY_BUDGET: Duration = Duration::from_millis(2);
pub const DEFAULT_POLICY_MEMORY: u64 = 32 << 20;
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(30);
/// Added to `pre_drain + drain` when `shutdown.ceiling` is not set.
pub const DEFAULT_CEILING_MARGIN: Duration = Duration::from_secs(5);
/// Fixed (no PID in it), so a process started with `run --upgrade` finds it.
pub const DEFAULT_UPGRADE_SOCK: &str = "/run/floodgate/upgrade.sock";
pub const DEFAULT_MAP_POLL_EVERY: Duration = Duration::from_secs(60);
pub const DEFAULT_MAP_POLL_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_HEADER_SIZE: u64 = 32 << 10;
pub const DEFAULT_MAX_HEADER_FIELDS: usize = 100;
pub const DEFAULT_MAX_REQUEST_LINE: u64 = 8 << 10;
/// Pingora's own parser refuses more fields than this (400 without a hook), so it caps ours.
pub const MAX_HEADER_FIELDS_CAP: usize = 256;
pub const MAX_HEADER_SIZE_CAP: u64 = 1 << 20;
pub const DEFAULT_REJECT_BODY: &str =
    "{\"displayMessage\": \"The server is busy, please try again later.\"}";

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this came from (error messages and relative paths).
    pub file: PathBuf,
    pub server: ServerSettings,
    pub listeners: Vec<ListenerConfig>,
    pub admin: AdminConfig,
    pub access_log: AccessLogConfig,
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    pub maps: BTreeMap<String, MapConfig>,
    pub policy: Option<PolicyConfig>,
    pub cache: CacheConfig,
    pub shutdown: ShutdownConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    pub threads: usize,
    pub work_stealing: bool,
    pub upstream_keepalive_pool: usize,
    pub keepalive_requests: Option<u32>,
    pub pid_file: Option<String>,
    pub upgrade_sock: String,
    pub client_body: crate::config::BodyTimeout,
    /// How process logs are written (`server.log_format`).
    pub log_format: ProcessLogFormat,
}

/// `server.log_format`: process log lines as text (default) or JSON objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProcessLogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: String,
    pub h2c: bool,
    pub tls: Option<TlsConfig>,
    pub front_door: FrontDoorConfig,
    /// Rules on requests to upstreams (before the route's).
    pub request_headers: crate::rules::HeaderRules,
    /// Rules on every answer (before the route's).
    pub response_headers: crate::rules::HeaderRules,
    pub forwarding: crate::rules::forwarding::Forwarding,
    /// `X-Forwarded-Server` and `%{server_name}`.
    pub server_name: String,
}

/// How strictly a listener reads HTTP/1.x request heads (`listeners[].front_door`).
#[derive(Debug, Clone, PartialEq)]
pub struct FrontDoorConfig {
    pub header_timeout: Duration,
    pub max_header_size: usize,
    pub max_header_fields: usize,
    pub max_request_line: usize,
    pub allow_length_with_chunked: bool,
}

impl Default for FrontDoorConfig {
    fn default() -> Self {
        FrontDoorConfig {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            max_header_size: DEFAULT_MAX_HEADER_SIZE as usize,
            max_header_fields: DEFAULT_MAX_HEADER_FIELDS,
            max_request_line: DEFAULT_MAX_REQUEST_LINE as usize,
            allow_length_with_chunked: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClientAuth {
    None,
    Optional,
    Require,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub bind: String,
    pub token_env: Option<String>,
    pub runtime_socket: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LogFormat {
    Combined,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogConfig {
    pub enabled: bool,
    pub format: LogFormat,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Balance {
    RoundRobin,
    LeastConn,
    /// Consistent (ketama) hashing on the value of this header (lowercased name).
    Hash {
        header: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerConfig {
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
    pub backup: bool,
    pub max_inflight: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
    pub idle: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RetryAfterSetting {
    Fixed(Duration),
    Auto,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueConfig {
    pub max: usize,
    pub max_per_class: Option<usize>,
    pub timeout: Duration,
    pub retry_after: RetryAfterSetting,
    pub fail_fast: bool,
    pub body: String,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max: DEFAULT_QUEUE_MAX,
            max_per_class: None,
            timeout: DEFAULT_QUEUE_TIMEOUT,
            retry_after: RetryAfterSetting::Fixed(DEFAULT_RETRY_AFTER),
            fail_fast: false,
            body: DEFAULT_REJECT_BODY.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Expect {
    /// Any HTTP answer means the server is reachable.
    Any,
    /// 200-299.
    Success,
    Statuses(Vec<u16>),
}

impl Expect {
    pub fn accepts(&self, status: u16) -> bool {
        match self {
            Expect::Any => true,
            Expect::Success => (200..300).contains(&status),
            Expect::Statuses(s) => s.contains(&status),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    pub expect: Expect,
    pub host: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ObserveConfig {
    /// Consecutive connect failures that mark a server down (0 = passive detection off).
    pub failures: u32,
    pub statuses: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamConfig {
    pub name: String,
    pub balance: Balance,
    pub servers: Vec<ServerConfig>,
    pub timeouts: Timeouts,
    pub retries: u32,
    pub queue: QueueConfig,
    pub health: Option<HealthConfig>,
    pub observe: ObserveConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub enum HostMatch {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct RouteMatch {
    pub hosts: Vec<HostMatch>,
    pub path_prefixes: Vec<String>,
    pub paths: Vec<String>,
    pub methods: Vec<String>,
    /// (lowercased name, required value)
    pub headers: Vec<(String, Option<String>)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RouteTarget {
    Upstream(String),
    /// Answer 200/503 with the named upstream's health.
    UpstreamHealth(String),
    /// Answer with a fixed answer or a redirect; no upstream.
    Local(crate::rules::local::LocalAnswer),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteAdmission {
    pub max_inflight: usize,
    pub queue: QueueConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteCacheConfig {
    pub ttl: Duration,
    pub methods: Vec<String>,
    pub statuses: Vec<u16>,
    /// Lowercased header names whose values (hashed) are part of the key.
    pub vary: Vec<String>,
    pub max_entry_size: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OnMiss {
    Balance,
    Reject(u16),
    Server(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct PickServer {
    pub map: String,
    /// Lowercased header name.
    pub header: String,
    pub on_miss: OnMiss,
    pub redispatch: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub name: String,
    pub matcher: RouteMatch,
    pub target: RouteTarget,
    pub priority: i32,
    pub admission: Option<RouteAdmission>,
    pub cache: Option<RouteCacheConfig>,
    pub pick_server: Option<PickServer>,
    /// Upstream requests carry the target as received, not the normalised one.
    pub raw_path: bool,
    /// Rules on requests to the upstream (after the listener's).
    pub request_headers: crate::rules::HeaderRules,
    /// Rules on this route's answers (after the listener's).
    pub response_headers: crate::rules::HeaderRules,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MapFormat {
    Map,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MapSourceConfig {
    pub url: String,
    pub every: Duration,
    pub timeout: Duration,
    pub format: MapFormat,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MapConfig {
    pub name: String,
    pub file: Option<PathBuf>,
    pub persist: bool,
    pub source: Option<MapSourceConfig>,
    /// Duplicate keys and values naming no server in whole-map loads.
    pub policy: crate::maps::MapPolicy,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OnPolicyError {
    Continue,
    Status(u16),
}

#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    pub scripts: Vec<PathBuf>,
    pub budget: Duration,
    pub memory_limit: u64,
    pub on_error: OnPolicyError,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SharedCacheConfig {
    pub url: String,
    pub timeout: Duration,
    pub key_prefix: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    pub max_bytes: u64,
    pub shared: Option<SharedCacheConfig>,
    pub wait_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ShutdownConfig {
    pub pre_drain: Duration,
    pub drain: Duration,
    pub ceiling: Duration,
}

/// Reads, parses and validates a configuration file.
/// Apache's default `ServerName`: this machine's host name (`localhost` if unknown).
fn default_server_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

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
            // `file:LINE: key.path: message`, the compilers' convention, where the line is known
            for e in &mut v.errors {
                if let Some(line) = super::locate::line_of(text, &e.path) {
                    e.file = format!("{}:{line}", e.file);
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

    /// Deserializes each section (and each list item or map entry) on its own, so one typo does
    /// not hide the errors after it.
    fn parse_spec(&mut self, text: &str) -> Option<ConfigSpec> {
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
    fn check_section(&mut self, key: &str, val: &serde_yaml::Value) -> bool {
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
        let rel = |p: &str| -> PathBuf {
            let p = PathBuf::from(p);
            if p.is_absolute() {
                p
            } else {
                base.join(p)
            }
        };
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

        // Listeners
        if s.listeners.is_empty() {
            self.err(
                "listeners",
                "no listener is defined; add one, e.g. `listeners: [{ bind: \"0.0.0.0:8080\" }]`",
            );
        }
        let mut binds = HashSet::new();
        let mut names = HashSet::new();
        let mut listeners = Vec::new();
        for (i, l) in s.listeners.iter().enumerate() {
            let p = format!("listeners[{i}]");
            if l.bind.parse::<SocketAddr>().is_err() {
                self.err(
                    format!("{p}.bind"),
                    format!(
                        "{:?} is not an IP:port address; write e.g. \"0.0.0.0:8080\"",
                        l.bind
                    ),
                );
            }
            if !binds.insert(l.bind.clone()) {
                self.err(
                    format!("{p}.bind"),
                    format!(
                        "{:?} is bound by an earlier listener; give each listener its own address",
                        l.bind
                    ),
                );
            }
            let name = l.name.clone().unwrap_or_else(|| l.bind.clone());
            if !names.insert(name.clone()) {
                self.err(
                    format!("{p}.name"),
                    format!("{name:?} is used by an earlier listener; names must be unique"),
                );
            }
            let tls = l.tls.as_ref().map(|t| {
                let client_auth = match t.client_auth.as_deref() {
                    None | Some("none") => ClientAuth::None,
                    Some("optional") => ClientAuth::Optional,
                    Some("require") => ClientAuth::Require,
                    Some(o) => {
                        self.err(
                            format!("{p}.tls.client_auth"),
                            format!("{o:?} is not a choice; use none, optional or require"),
                        );
                        ClientAuth::None
                    }
                };
                if client_auth != ClientAuth::None && t.client_ca.is_none() {
                    self.err(
                        format!("{p}.tls.client_ca"),
                        "client_auth needs a client_ca file to verify client certificates against",
                    );
                }
                for (k, f) in [
                    ("cert", Some(&t.cert)),
                    ("key", Some(&t.key)),
                    ("client_ca", t.client_ca.as_ref()),
                ] {
                    if let Some(f) = f {
                        if !rel(f).exists() {
                            self.err(
                                format!("{p}.tls.{k}"),
                                format!("{f:?} does not exist; give the path of a PEM file"),
                            );
                        }
                    }
                }
                TlsConfig {
                    cert: rel(&t.cert),
                    key: rel(&t.key),
                    client_ca: t.client_ca.as_deref().map(rel),
                    client_auth,
                }
            });
            let front_door = self.front_door(&format!("{p}.front_door"), l.front_door.as_ref());
            let mut problems = Vec::new();
            let request_headers = crate::rules::compile::rules(
                &format!("{p}.request_headers"),
                l.request_headers.as_deref().unwrap_or_default(),
                &mut problems,
            );
            let response_headers = crate::rules::compile::rules(
                &format!("{p}.response_headers"),
                l.response_headers.as_deref().unwrap_or_default(),
                &mut problems,
            );
            for (path, m) in problems {
                self.err(path, m);
            }
            use crate::rules::forwarding::{ForwardMode, Forwarding};
            let mode = match l.forwarded_headers.as_deref() {
                None | Some("append") => ForwardMode::Append,
                Some("replace") => ForwardMode::Replace,
                Some("off") => ForwardMode::Off,
                Some(o) => {
                    self.err(
                        format!("{p}.forwarded_headers"),
                        format!("{o:?} is not a choice; use append (Apache ProxyAddHeaders On, the default), replace or off"),
                    );
                    ForwardMode::Append
                }
            };
            let server_name = l.server_name.clone().unwrap_or_else(default_server_name);
            if http::HeaderValue::from_str(&server_name).is_err() {
                self.err(
                    format!("{p}.server_name"),
                    format!("{server_name:?} is not a valid header value; use a host name"),
                );
            }
            listeners.push(ListenerConfig {
                name,
                bind: l.bind.clone(),
                h2c: l.h2c,
                tls,
                front_door,
                request_headers,
                response_headers,
                forwarding: Forwarding {
                    mode,
                    rfc7239: l.forwarded_rfc7239.unwrap_or(false),
                },
                server_name,
            });
        }

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

        let access_log = AccessLogConfig {
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
        };

        let mut upstreams = BTreeMap::new();
        for (name, u) in &s.upstreams {
            let cfg = self.upstream(name, u);
            upstreams.insert(name.clone(), cfg);
        }

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
                if !src.url.starts_with("http://") {
                    self.err(
                        format!("{p}.source.url"),
                        format!("{:?} is not supported; use an http:// URL", src.url),
                    );
                }
                MapSourceConfig {
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

        let mut routes = Vec::new();
        let mut route_names = HashSet::new();
        for (i, r) in s.routes.iter().enumerate() {
            if !route_names.insert(r.name.clone()) {
                self.err(
                    format!("routes[{i}].name"),
                    format!(
                        "{:?} is used by an earlier route; route names must be unique",
                        r.name
                    ),
                );
            }
            if let Some(rc) = self.route(i, r, &upstreams, &maps) {
                routes.push(rc);
            }
        }
        if routes.is_empty() && s.routes.is_empty() {
            self.err(
                "routes",
                "no route is defined; add one, e.g. `routes: [{ name: all, upstream: app }]`",
            );
        }

        let policy = s.policy.as_ref().map(|p| {
            if p.scripts.is_empty() {
                self.err(
                    "policy.scripts",
                    "the list is empty; name at least one .lua file or remove the policy section",
                );
            }
            let on_error = match &p.on_error {
                None => OnPolicyError::Continue,
                Some(serde_yaml::Value::String(s)) if s == "continue" => OnPolicyError::Continue,
                Some(serde_yaml::Value::Number(n))
                    if n.as_u64().is_some_and(|c| (400..600).contains(&c)) =>
                {
                    OnPolicyError::Status(n.as_u64().unwrap_or(503) as u16)
                }
                Some(o) => {
                    self.err(
                        "policy.on_error",
                        format!("{o:?} is not a choice; use continue or a status from 400 to 599"),
                    );
                    OnPolicyError::Continue
                }
            };
            PolicyConfig {
                scripts: p.scripts.iter().map(|s| rel(s)).collect(),
                budget: self.duration("policy.budget", p.budget.as_ref(), DEFAULT_POLICY_BUDGET),
                memory_limit: self.size(
                    "policy.memory_limit",
                    p.memory_limit.as_ref(),
                    DEFAULT_POLICY_MEMORY,
                ),
                on_error,
            }
        });

        let cs = s.cache.clone().unwrap_or_default();
        let cache = CacheConfig {
            max_bytes: self.size(
                "cache.memory.max_bytes",
                cs.memory.max_bytes.as_ref(),
                DEFAULT_CACHE_MAX_BYTES,
            ),
            wait_timeout: self.duration(
                "cache.wait_timeout",
                cs.wait_timeout.as_ref(),
                DEFAULT_CACHE_WAIT,
            ),
            shared: cs.shared.as_ref().map(|sh| {
                if !(sh.url.starts_with("redis://")
                    || sh.url.starts_with("rediss://")
                    || sh.url.starts_with("valkey://"))
                {
                    self.err(
                        "cache.shared.url",
                        format!(
                            "{:?} is not a redis:// URL; write e.g. \"redis://127.0.0.1:6379/0\"",
                            sh.url
                        ),
                    );
                }
                SharedCacheConfig {
                    url: sh.url.replacen("valkey://", "redis://", 1),
                    timeout: self.duration(
                        "cache.shared.timeout",
                        sh.timeout.as_ref(),
                        DEFAULT_SHARED_TIMEOUT,
                    ),
                    key_prefix: sh
                        .key_prefix
                        .clone()
                        .unwrap_or_else(|| "floodgate:".to_string()),
                }
            }),
        };

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
            shutdown: ShutdownConfig {
                pre_drain,
                drain,
                ceiling,
            },
        }
    }

    fn queue(&mut self, p: &str, q: Option<&QueueSpec>) -> QueueConfig {
        let d = QueueConfig::default();
        let Some(q) = q else { return d };
        QueueConfig {
            max: q.max.unwrap_or(d.max),
            max_per_class: q.max_per_class,
            timeout: self.duration(&format!("{p}.timeout"), q.timeout.as_ref(), d.timeout),
            retry_after: self.retry_after(&format!("{p}.retry_after"), q.retry_after.as_ref()),
            fail_fast: q.fail_fast.unwrap_or(false),
            body: q.body.clone().unwrap_or(d.body),
        }
    }

    fn retry_after(&mut self, p: &str, v: Option<&String>) -> RetryAfterSetting {
        match v.map(String::as_str) {
            None => RetryAfterSetting::Fixed(DEFAULT_RETRY_AFTER),
            Some("auto") => RetryAfterSetting::Auto,
            Some(s) => RetryAfterSetting::Fixed(self.duration(
                p,
                Some(&s.to_string()),
                DEFAULT_RETRY_AFTER,
            )),
        }
    }

    fn upstream(&mut self, name: &str, u: &UpstreamSpec) -> UpstreamConfig {
        let p = format!("upstreams.{name}");
        let balance = match u.balance.as_deref() {
            None | Some("round_robin") => Balance::RoundRobin,
            Some("least_conn") => Balance::LeastConn,
            Some("hash") => match u
                .hash_key
                .as_deref()
                .and_then(|k| k.strip_prefix("header:"))
            {
                Some(h) if !h.is_empty() => Balance::Hash {
                    header: h.to_ascii_lowercase(),
                },
                _ => {
                    self.err(
                        format!("{p}.hash_key"),
                        format!(
                            "{:?}: balance: hash needs hash_key: \"header:NAME\"",
                            u.hash_key.clone().unwrap_or_default()
                        ),
                    );
                    Balance::RoundRobin
                }
            },
            Some(o) => {
                self.err(
                    format!("{p}.balance"),
                    format!("{o:?} is not a balancing method; use round_robin, least_conn or hash"),
                );
                Balance::RoundRobin
            }
        };
        if u.servers.is_empty() {
            self.err(format!("{p}.servers"), "the list is empty; an upstream needs at least one server, e.g. `- { addr: \"127.0.0.1:3000\" }`");
        }
        let mut servers = Vec::new();
        let mut seen = HashSet::new();
        for (i, sv) in u.servers.iter().enumerate() {
            let sp = format!("{p}.servers[{i}]");
            let addr = match sv.addr.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    match sv.addr.to_socket_addrs().ok().and_then(|mut a| a.next()) {
                        Some(a) => Some(a),
                        None => {
                            self.err(format!("{sp}.addr"), format!("{:?} is not a host:port address; write e.g. \"127.0.0.1:3000\"", sv.addr));
                            None
                        }
                    }
                }
            };
            let sname = sv.name.clone().unwrap_or_else(|| sv.addr.clone());
            if !seen.insert(sname.clone()) {
                self.err(format!("{sp}.name"), format!("{sname:?} names an earlier server of this upstream; server names must be unique"));
            }
            if sv.weight == Some(0) {
                self.err(
                    format!("{sp}.weight"),
                    "0 would never be chosen; use 1 or more, or remove the server",
                );
            }
            if sv.max_inflight == Some(0) {
                self.err(
                    format!("{sp}.max_inflight"),
                    "0 would never admit a request; use 1 or more, or leave it out for no limit",
                );
            }
            if let Some(addr) = addr {
                servers.push(ServerConfig {
                    name: sname,
                    addr,
                    weight: sv.weight.unwrap_or(1),
                    backup: sv.backup,
                    max_inflight: sv.max_inflight,
                });
            }
        }
        if !u.servers.is_empty() && u.servers.iter().all(|s| s.backup) {
            self.err(
                format!("{p}.servers"),
                "every server is a backup; mark at least one as a primary (backup: false)",
            );
        }
        let t = &u.timeouts;
        let timeouts = Timeouts {
            connect: self.duration(
                &format!("{p}.timeouts.connect"),
                t.connect.as_ref(),
                DEFAULT_CONNECT_TIMEOUT,
            ),
            read: self.duration(
                &format!("{p}.timeouts.read"),
                t.read.as_ref(),
                DEFAULT_READ_TIMEOUT,
            ),
            write: self.duration(
                &format!("{p}.timeouts.write"),
                t.write.as_ref(),
                DEFAULT_WRITE_TIMEOUT,
            ),
            idle: self.duration(
                &format!("{p}.timeouts.idle"),
                t.idle.as_ref(),
                DEFAULT_IDLE_TIMEOUT,
            ),
        };
        let health = u.health.as_ref().map(|h| {
            let hp = format!("{p}.health");
            let expect = match &h.expect {
                None => Expect::Any,
                Some(serde_yaml::Value::String(s)) if s == "any" => Expect::Any,
                Some(serde_yaml::Value::String(s)) if s == "2xx" => Expect::Success,
                Some(serde_yaml::Value::Sequence(list)) => {
                    let codes: Vec<u16> = list
                        .iter()
                        .filter_map(|v| v.as_u64())
                        .filter(|c| (100..600).contains(c))
                        .map(|c| c as u16)
                        .collect();
                    if codes.len() != list.len() || codes.is_empty() {
                        self.err(
                            format!("{hp}.expect"),
                            "the list must hold HTTP status codes, e.g. [200, 204]",
                        );
                    }
                    Expect::Statuses(codes)
                }
                Some(o) => {
                    self.err(
                        format!("{hp}.expect"),
                        format!("{o:?} is not a choice; use any, 2xx or a list of statuses"),
                    );
                    Expect::Any
                }
            };
            let path = h
                .path
                .clone()
                .unwrap_or_else(|| DEFAULT_HEALTH_PATH.to_string());
            if !path.starts_with('/') {
                self.err(format!("{hp}.path"), format!("{path:?} must start with /"));
            }
            let rise = h.rise.unwrap_or(DEFAULT_RISE);
            let fall = h.fall.unwrap_or(DEFAULT_FALL);
            if rise == 0 || fall == 0 {
                self.err(hp.clone(), "rise and fall must be 1 or more");
            }
            HealthConfig {
                path,
                interval: self.duration(
                    &format!("{hp}.interval"),
                    h.interval.as_ref(),
                    DEFAULT_HEALTH_INTERVAL,
                ),
                timeout: self.duration(
                    &format!("{hp}.timeout"),
                    h.timeout.as_ref(),
                    DEFAULT_HEALTH_TIMEOUT,
                ),
                rise: rise.max(1),
                fall: fall.max(1),
                expect,
                host: h.host.clone(),
            }
        });
        let observe = u
            .observe
            .as_ref()
            .map(|o| ObserveConfig {
                failures: o.failures.unwrap_or(DEFAULT_OBSERVE_FAILURES),
                statuses: o.statuses.clone().unwrap_or_default(),
            })
            .unwrap_or(ObserveConfig {
                failures: DEFAULT_OBSERVE_FAILURES,
                statuses: Vec::new(),
            });
        UpstreamConfig {
            name: name.to_string(),
            balance,
            servers,
            timeouts,
            retries: u.retries.unwrap_or(DEFAULT_RETRIES),
            queue: self.queue(&format!("{p}.queue"), u.queue.as_ref()),
            health,
            observe,
        }
    }

    fn route(
        &mut self,
        i: usize,
        r: &RouteSpec,
        upstreams: &BTreeMap<String, UpstreamConfig>,
        maps: &BTreeMap<String, MapConfig>,
    ) -> Option<RouteConfig> {
        let p = format!("routes[{i}]");
        let defined = || upstreams.keys().cloned().collect::<Vec<_>>().join(", ");
        let check_up = |v: &mut Validator, key: &str, name: &str| -> bool {
            if upstreams.contains_key(name) {
                true
            } else {
                v.err(
                    format!("{p}.{key}"),
                    format!(
                        "{name:?} is not a defined upstream (defined: {})",
                        defined()
                    ),
                );
                false
            }
        };
        let mut problems = Vec::new();
        let named = match &r.respond {
            Some(RespondSpec::Named(n)) => Some(n.as_str()),
            _ => None,
        };
        let local = match (&r.respond, &r.redirect) {
            (Some(RespondSpec::Answer(a)), None) => Some(crate::rules::local::fixed(
                &format!("{p}.respond"),
                a,
                &mut problems,
            )),
            (None, Some(rd)) => Some(crate::rules::local::redirect(
                &format!("{p}.redirect"),
                rd,
                &mut problems,
            )),
            (Some(_), Some(_)) => {
                self.err(
                    format!("{p}.redirect"),
                    "a route answers with respond: or redirect:, not both; keep one",
                );
                return None;
            }
            _ => None,
        };
        let target = match (named, r.upstream.as_deref()) {
            _ if local.is_some() => {
                if let Some(up) = &r.upstream {
                    self.err(
                        format!("{p}.upstream"),
                        format!("{up:?}: a route that answers locally has no upstream; remove upstream: (or respond:/redirect:)"),
                    );
                }
                for key in ["admission", "cache", "pick_server"] {
                    let given = match key {
                        "admission" => r.admission.is_some(),
                        "cache" => r.cache.is_some(),
                        _ => r.pick_server.is_some(),
                    };
                    if given {
                        self.err(
                            format!("{p}.{key}"),
                            format!("a route that answers locally never reaches an upstream, so {key}: has no effect; remove it"),
                        );
                    }
                }
                RouteTarget::Local(local.clone()?)
            }
            (Some("upstream_health"), up) => {
                let of = r.health_of.as_deref().or(up);
                match of {
                    Some(n) if check_up(self, "health_of", n) => {
                        RouteTarget::UpstreamHealth(n.to_string())
                    }
                    Some(_) => return None,
                    None => {
                        self.err(format!("{p}.health_of"), "respond: upstream_health needs health_of: (or upstream:) naming the upstream to report on");
                        return None;
                    }
                }
            }
            (Some(o), _) => {
                self.err(
                    format!("{p}.respond"),
                    format!("{o:?} is not a choice; use upstream_health, or a local answer such as `{{ status: 404, body: \"Not found\" }}`"),
                );
                return None;
            }
            (None, Some(up)) => {
                if !check_up(self, "upstream", up) {
                    return None;
                }
                RouteTarget::Upstream(up.to_string())
            }
            (None, None) => {
                self.err(
                    format!("{p}.upstream"),
                    format!(
                        "missing; name the upstream that serves this route (defined: {})",
                        defined()
                    ),
                );
                return None;
            }
        };
        let m = &r.matcher;
        let mut matcher = RouteMatch::default();
        for h in m.host.as_ref().map(|h| h.to_vec()).unwrap_or_default() {
            let h = h.to_ascii_lowercase();
            matcher.hosts.push(match h.strip_prefix("*.") {
                Some(sfx) => HostMatch::Suffix(format!(".{sfx}")),
                None => HostMatch::Exact(h),
            });
        }
        for (key, list, out) in [
            ("path_prefix", &m.path_prefix, &mut matcher.path_prefixes),
            ("path", &m.path, &mut matcher.paths),
        ] {
            for pp in list.as_ref().map(|l| l.to_vec()).unwrap_or_default() {
                if !pp.starts_with('/') {
                    self.err(
                        format!("{p}.match.{key}"),
                        format!("{pp:?} must start with /"),
                    );
                }
                out.push(pp);
            }
        }
        for meth in m.methods.clone().unwrap_or_default() {
            let up = meth.to_ascii_uppercase();
            if ![
                "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
            ]
            .contains(&up.as_str())
            {
                self.err(
                    format!("{p}.match.methods"),
                    format!("{meth:?} is not an HTTP method; use e.g. GET, POST"),
                );
            }
            matcher.methods.push(up);
        }
        for h in m.header.as_ref().map(|h| h.to_vec()).unwrap_or_default() {
            matcher
                .headers
                .push((h.name.to_ascii_lowercase(), h.value.clone()));
        }
        let admission = r.admission.as_ref().map(|a| {
            let ap = format!("{p}.admission");
            if a.max_inflight == 0 {
                self.err(
                    format!("{ap}.max_inflight"),
                    "0 would never admit a request; use 1 or more",
                );
            }
            let spec = QueueSpec {
                max: a.queue,
                max_per_class: a.max_per_class,
                timeout: a.queue_timeout.clone(),
                retry_after: a.retry_after.clone(),
                fail_fast: a.fail_fast,
                body: a.body.clone(),
            };
            RouteAdmission {
                max_inflight: a.max_inflight,
                queue: self.queue(&ap, Some(&spec)),
            }
        });
        let cache = r.cache.as_ref().map(|c| {
            let cp = format!("{p}.cache");
            let ttl = self.duration(&format!("{cp}.ttl"), Some(&c.ttl), Duration::from_secs(300));
            let methods: Vec<String> = c
                .methods
                .clone()
                .unwrap_or_else(|| vec!["GET".into(), "HEAD".into()])
                .iter()
                .map(|m| m.to_ascii_uppercase())
                .collect();
            if methods.iter().any(|m| m != "GET" && m != "HEAD") {
                self.err(
                    format!("{cp}.methods"),
                    "only GET and HEAD responses can be cached",
                );
            }
            RouteCacheConfig {
                ttl,
                methods,
                statuses: c.statuses.clone().unwrap_or_else(|| vec![200]),
                vary: c
                    .vary
                    .clone()
                    .unwrap_or_else(|| vec!["authorization".into()])
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
                max_entry_size: self.size(
                    &format!("{cp}.max_entry_size"),
                    c.max_entry_size.as_ref(),
                    DEFAULT_CACHE_ENTRY_MAX,
                ),
            }
        });
        let pick_server = r.pick_server.as_ref().and_then(|ps| {
            let pp = format!("{p}.pick_server");
            if !maps.contains_key(&ps.map) {
                let names = maps.keys().cloned().collect::<Vec<_>>().join(", ");
                self.err(format!("{pp}.map"), format!("{:?} is not a defined map (defined: {names})", ps.map));
            }
            let header = match ps.key.strip_prefix("header:") {
                Some(h) if !h.is_empty() => h.to_ascii_lowercase(),
                _ => {
                    self.err(format!("{pp}.key"), format!("{:?}: write the lookup key as \"header:NAME\", e.g. \"header:X-Node-Name\"", ps.key));
                    return None;
                }
            };
            let on_miss = match ps.on_miss.as_deref() {
                None | Some("balance") => OnMiss::Balance,
                Some("reject") => OnMiss::Reject(ps.reject_status.unwrap_or(404)),
                Some(o) => match o.strip_prefix("server:") {
                    Some(s) => {
                        if let RouteTarget::Upstream(up) = &target {
                            if let Some(u) = upstreams.get(up) {
                                if !u.servers.iter().any(|sv| sv.name == s || sv.addr.to_string() == s) {
                                    self.err(format!("{pp}.on_miss"), format!("{s:?} is not a server of upstream {up}"));
                                }
                            }
                        }
                        OnMiss::Server(s.to_string())
                    }
                    None => {
                        self.err(format!("{pp}.on_miss"), format!("{o:?} is not a choice; use balance, reject or server:NAME"));
                        OnMiss::Balance
                    }
                },
            };
            Some(PickServer { map: ps.map.clone(), header, on_miss, redispatch: ps.redispatch.unwrap_or(true) })
        });
        let request_headers = crate::rules::compile::rules(
            &format!("{p}.request_headers"),
            r.request_headers.as_deref().unwrap_or_default(),
            &mut problems,
        );
        let response_headers = crate::rules::compile::rules(
            &format!("{p}.response_headers"),
            r.response_headers.as_deref().unwrap_or_default(),
            &mut problems,
        );
        for (path, m) in problems {
            self.err(path, m);
        }
        Some(RouteConfig {
            request_headers,
            response_headers,
            name: r.name.clone(),
            matcher,
            target,
            priority: r.priority.unwrap_or(0),
            admission,
            cache,
            pick_server,
            raw_path: r.raw_path,
        })
    }

    fn front_door(&mut self, p: &str, s: Option<&FrontDoorSpec>) -> FrontDoorConfig {
        let d = FrontDoorConfig::default();
        let Some(s) = s else { return d };
        let header_timeout = self.duration(
            &format!("{p}.header_timeout"),
            s.header_timeout.as_ref(),
            DEFAULT_HEADER_TIMEOUT,
        );
        if header_timeout.is_zero() {
            self.err(
                format!("{p}.header_timeout"),
                "0s would refuse every request; use e.g. \"30s\"",
            );
        }
        let max_header_size = self.size(
            &format!("{p}.max_header_size"),
            s.max_header_size.as_ref(),
            DEFAULT_MAX_HEADER_SIZE,
        );
        if !(1024..=MAX_HEADER_SIZE_CAP).contains(&max_header_size) {
            self.err(
                format!("{p}.max_header_size"),
                format!(
                    "{max_header_size} bytes is out of range; use 1KiB to 1MiB (default 32KiB)"
                ),
            );
        }
        let max_request_line = self.size(
            &format!("{p}.max_request_line"),
            s.max_request_line.as_ref(),
            DEFAULT_MAX_REQUEST_LINE,
        );
        if max_request_line < 64 || max_request_line > max_header_size {
            self.err(
                format!("{p}.max_request_line"),
                format!("{max_request_line} bytes is out of range; use 64 bytes up to max_header_size ({max_header_size})"),
            );
        }
        let max_header_fields = s.max_header_fields.unwrap_or(DEFAULT_MAX_HEADER_FIELDS);
        if !(1..=MAX_HEADER_FIELDS_CAP).contains(&max_header_fields) {
            self.err(
                format!("{p}.max_header_fields"),
                format!("{max_header_fields} is out of range; use 1 to {MAX_HEADER_FIELDS_CAP} (Pingora's parser stops at {MAX_HEADER_FIELDS_CAP}; default {DEFAULT_MAX_HEADER_FIELDS})"),
            );
        }
        FrontDoorConfig {
            header_timeout,
            max_header_size: usize::try_from(max_header_size).unwrap_or(usize::MAX),
            max_header_fields,
            max_request_line: usize::try_from(max_request_line).unwrap_or(usize::MAX),
            allow_length_with_chunked: s.allow_length_with_chunked.unwrap_or(false),
        }
    }
}
