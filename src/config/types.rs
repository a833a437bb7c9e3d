//! The validated configuration: the types runtime code receives, and the `DEFAULT_*` values
//! the validator ([`super::validate`]) fills in for keys the YAML leaves out.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
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
/// `upstreams.NAME.resolve_every`: host names in `addr` are looked up again this often.
pub const DEFAULT_RESOLVE_EVERY: Duration = Duration::from_secs(30);
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
    /// The headers that carry the client certificate to upstreams.
    pub client_cert_headers: CertHeaders,
}

/// `listeners[].client_cert_headers`: the request headers that tell an upstream who the TLS
/// client is. A name left `None` is not sent. Whatever the style, client-sent copies of these
/// names (and of both built-in styles) are removed in every `-`/`_` and case spelling.
#[derive(Debug, Clone, PartialEq)]
pub struct CertHeaders {
    /// `SUCCESS`, `NONE` or `FAILED:reason`.
    pub verify: Option<http::HeaderName>,
    /// Subject DN, RFC 2253 (`CN=host,O=Org`).
    pub dn: Option<http::HeaderName>,
    /// The certificate as PEM, in `cert_format`.
    pub cert: Option<http::HeaderName>,
    pub cert_format: CertFormat,
}

/// How the PEM certificate travels in a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertFormat {
    /// Newlines as spaces (Apache `RequestHeader set SSL-CLIENT-CERT`, read by Foreman).
    Flat,
    /// URL-encoded (nginx `$ssl_client_escaped_cert`, read by puppetserver).
    UrlEncoded,
}

impl CertHeaders {
    /// Foreman's Apache vhost: `SSL-CLIENT-VERIFY`, `SSL-CLIENT-S-DN`, `SSL-CLIENT-CERT`.
    pub fn foreman() -> CertHeaders {
        CertHeaders {
            verify: Some(http::HeaderName::from_static("ssl-client-verify")),
            dn: Some(http::HeaderName::from_static("ssl-client-s-dn")),
            cert: Some(http::HeaderName::from_static("ssl-client-cert")),
            cert_format: CertFormat::Flat,
        }
    }

    /// puppetserver with `allow-header-cert-info: true`: `X-Client-Verify`, `X-Client-DN`,
    /// `X-Client-Cert` (URL-encoded PEM).
    pub fn puppet() -> CertHeaders {
        CertHeaders {
            verify: Some(http::HeaderName::from_static("x-client-verify")),
            dn: Some(http::HeaderName::from_static("x-client-dn")),
            cert: Some(http::HeaderName::from_static("x-client-cert")),
            cert_format: CertFormat::UrlEncoded,
        }
    }

    /// The configured names (for stripping client copies).
    pub fn names(&self) -> impl Iterator<Item = &http::HeaderName> {
        [&self.verify, &self.dn, &self.cert].into_iter().flatten()
    }
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
    /// The host of `addr` as written (a name or an IP; empty for a Unix socket): the default
    /// TLS SNI.
    pub host: String,
    pub addr: ServerAddr,
    pub weight: u32,
    pub backup: bool,
    pub max_inflight: Option<usize>,
}

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerAddr {
    /// `ip:port`, or `host:port` resolved when the config was loaded.
    Inet(SocketAddr),
    /// `unix:/path/to.sock`: a Unix stream socket.
    Unix(std::path::PathBuf),
}

impl std::fmt::Display for ServerAddr {
    /// `ip:port` or `unix:/path` (as written in the config for a socket).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerAddr::Inet(a) => write!(f, "{a}"),
            ServerAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
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
    /// HTTPS to the servers; `None`: plain HTTP.
    pub tls: Option<UpstreamTls>,
    /// Period of re-resolving servers whose `addr` names a host.
    pub resolve_every: Duration,
}

/// Validated `upstreams.NAME.tls`. The PEM files are read and parsed at validation (so
/// `check` reports a bad file and a reload notices changed contents); the upstream
/// turns them into Pingora peer options.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    /// PEM text of the CA bundle; `None`: the system store.
    pub ca_pem: Option<Vec<u8>>,
    pub verify: bool,
    pub verify_hostname: bool,
    /// SNI and the name checked; `None`: the host of each server's `addr`.
    pub sni: Option<String>,
    /// PEM text of the client certificate chain and its key.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
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
    /// TLS of an `https://` url; `None`: system CA store, verify, no client certificate.
    pub tls: Option<UpstreamTls>,
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
