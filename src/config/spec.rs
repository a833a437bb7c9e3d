//! Serde types that mirror the YAML file one to one.
//!
//! Nothing here is checked beyond its shape: `validate.rs` turns a [`ConfigSpec`] into the
//! validated [`super::Config`] the runtime uses, and reports every problem with its key path.
//! Every struct denies unknown keys, so a typo is an error rather than a silently ignored line.

use serde::Deserialize;
use std::collections::BTreeMap;

/// A value written either as one item or as a list (`path_prefix: /rhsm` or `[/rhsm, /register]`).
///
/// Deserialized by hand rather than `#[serde(untagged)]`: an untagged enum buffers the value
/// and reports only "data did not match any variant", losing the inner error (a misspelt key
/// of a header matcher) and its line. Here a list is read as `Many` and anything else as `One`,
/// so the item's own error comes through.
#[derive(Debug, Clone, PartialEq)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
        use serde::de::{IntoDeserializer, MapAccess, SeqAccess, Visitor};
        use std::marker::PhantomData;

        struct OneOrManyVisitor<T>(PhantomData<T>);

        macro_rules! scalar {
            ($($method:ident: $ty:ty),*) => {$(
                fn $method<E: serde::de::Error>(self, v: $ty) -> Result<Self::Value, E> {
                    T::deserialize(v.into_deserializer()).map(OneOrMany::One)
                }
            )*};
        }

        impl<'de, T: Deserialize<'de>> Visitor<'de> for OneOrManyVisitor<T> {
            type Value = OneOrMany<T>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("one value or a list of values")
            }

            scalar!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64);

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Vec::<T>::deserialize(SeqAccessDeserializer::new(seq)).map(OneOrMany::Many)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(OneOrMany::One)
            }
        }

        deserializer.deserialize_any(OneOrManyVisitor(PhantomData))
    }
}

impl<T: Clone> OneOrMany<T> {
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            OneOrMany::One(v) => vec![v.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// Process-wide settings. Changing any of them needs a restart (or a graceful upgrade).
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    /// Worker threads of the proxy service (default: the number of cores).
    pub threads: Option<usize>,
    /// Let idle worker threads steal tasks (default true).
    pub work_stealing: Option<bool>,
    /// Idle upstream connections kept for reuse, over all upstreams (default 1024).
    pub upstream_keepalive_pool: Option<usize>,
    /// Maximum requests on one downstream keep-alive connection (default unlimited).
    pub keepalive_requests: Option<u32>,
    /// Where the process writes its PID file.
    pub pid_file: Option<String>,
    /// UNIX socket on which a graceful upgrade hands the listening sockets to the new
    /// process (default `/run/floodgate/upgrade.sock`).
    pub upgrade_sock: Option<String>,
    /// Time a client has to send a request body, in total (default 20s), extended by one
    /// second per `client_body_min_rate` bytes received (Apache mod_reqtimeout `body=`).
    pub client_body_timeout: Option<String>,
    /// Bytes per second that extend `client_body_timeout` (default 500; 0 = no extension).
    pub client_body_min_rate: Option<u64>,
    /// `text` (default) or `json`: how process logs are written on stderr.
    pub log_format: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerSpec {
    pub name: Option<String>,
    pub bind: String,
    /// Accept HTTP/2 over cleartext (prior knowledge) besides HTTP/1.1.
    #[serde(default)]
    pub h2c: bool,
    pub tls: Option<TlsSpec>,
    /// How strictly request heads are read (see README "Front door").
    pub front_door: Option<FrontDoorSpec>,
    /// Header rules on requests to upstreams, before the route's (README "Header rules").
    pub request_headers: Option<Vec<HeaderRuleSpec>>,
    /// Header rules on every answer: proxied, cached and local (Apache `Header always`).
    pub response_headers: Option<Vec<HeaderRuleSpec>>,
    /// `append` (default, Apache `ProxyAddHeaders On`), `replace` or `off`.
    pub forwarded_headers: Option<String>,
    /// Also send RFC 7239 `Forwarded` (same mode as `forwarded_headers`; default false).
    pub forwarded_rfc7239: Option<bool>,
    /// `X-Forwarded-Server` value (Apache's `ServerName`; default: the host name).
    pub server_name: Option<String>,
    /// Which headers carry the client certificate upstream: `foreman` (default), `puppet`,
    /// or a map `{ verify: NAME, dn: NAME, cert: NAME, cert_format: flat|urlencoded }`.
    pub client_cert_headers: Option<serde_yaml::Value>,
}

/// One header rule: exactly one of `set`, `add`, `remove`, naming the header.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeaderRuleSpec {
    /// Replace every value of the header with `value`.
    pub set: Option<String>,
    /// Append `value` as another line of the header.
    pub add: Option<String>,
    /// Remove the header in every `-`/`_` spelling; `NAME*` removes by prefix.
    pub remove: Option<String>,
    /// A template: literal text and `%{variable}` (README "Header rules").
    pub value: Option<String>,
    /// Apply the rule only when this holds.
    #[serde(rename = "if")]
    pub when: Option<ConditionSpec>,
}

/// A rule condition; every key given must hold.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ConditionSpec {
    /// The verified client certificate's CN is this (or one of these).
    pub cert_cn: Option<OneOrMany<String>>,
    /// The client certificate verified (`true`) or not/none (`false`).
    pub cert_verified: Option<bool>,
    pub header: Option<HeaderConditionSpec>,
    pub method: Option<OneOrMany<String>>,
    pub path_prefix: Option<OneOrMany<String>>,
    pub not: Option<Box<ConditionSpec>>,
}

/// `if: { header: { name: X } }` (present), `matches: REGEX`, `prefix: TEXT` or `equals: TEXT`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeaderConditionSpec {
    pub name: String,
    pub matches: Option<String>,
    pub prefix: Option<String>,
    pub equals: Option<String>,
}

/// `respond:` on a route: `upstream_health`, or a fixed local answer.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum RespondSpec {
    Named(String),
    Answer(LocalAnswerSpec),
}

/// A local answer (HAProxy `http-request return`, Apache `ProxyPass /pub !`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LocalAnswerSpec {
    pub status: u16,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: String,
}

/// `redirect:` on a route (HAProxy `http-request redirect location`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedirectSpec {
    /// A template, e.g. `"https://%{host}%{request_uri}"`.
    pub location: String,
    /// 301, 302 (default), 303, 307 or 308.
    pub status: Option<u16>,
}

/// `listeners[].front_door`: limits and strictness of the HTTP/1.x request head reader.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct FrontDoorSpec {
    /// Whole time to receive a request head (default 30s; 408 after).
    pub header_timeout: Option<String>,
    /// Largest request head: request line and header lines (default 32KiB; 431 above).
    pub max_header_size: Option<String>,
    /// Most header fields in one request (default 100; 431 above).
    pub max_header_fields: Option<usize>,
    /// Longest request line (default 8KiB; 414 above).
    pub max_request_line: Option<String>,
    /// Accept `Content-Length` with `Transfer-Encoding: chunked` (chunked wins) instead of 400.
    pub allow_length_with_chunked: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    pub cert: String,
    pub key: String,
    pub client_ca: Option<String>,
    /// `none` (default), `optional` or `require`.
    pub client_auth: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminSpec {
    /// Default `127.0.0.1:9901`.
    pub bind: Option<String>,
    /// Name of the environment variable holding the bearer token for the admin API.
    pub token_env: Option<String>,
    /// Path of a UNIX socket speaking HAProxy's Runtime API map commands.
    pub runtime_socket: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct AccessLogSpec {
    /// Default true.
    pub enabled: Option<bool>,
    /// `combined` (default) or `json`.
    pub format: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerEntrySpec {
    pub name: Option<String>,
    pub addr: String,
    pub weight: Option<u32>,
    #[serde(default)]
    pub backup: bool,
    /// HAProxy `maxconn`: most requests in flight to this server at once (default unlimited).
    pub max_inflight: Option<usize>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsSpec {
    pub connect: Option<String>,
    pub read: Option<String>,
    pub write: Option<String>,
    pub idle: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct QueueSpec {
    pub max: Option<usize>,
    pub max_per_class: Option<usize>,
    pub timeout: Option<String>,
    /// A duration (`30s`) or `auto`.
    pub retry_after: Option<String>,
    pub fail_fast: Option<bool>,
    /// Body of the 503 sent when the queue cannot take or keep a request.
    pub body: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    pub path: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    /// `any`, `2xx`, or a list of status codes.
    pub expect: Option<serde_yaml::Value>,
    pub host: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ObserveSpec {
    /// Consecutive connect failures that mark a server down.
    pub failures: Option<u32>,
    /// Response statuses that count as failures (e.g. [502, 503]).
    pub statuses: Option<Vec<u16>>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// `round_robin` (default), `least_conn` or `hash`.
    pub balance: Option<String>,
    /// With `balance: hash`: `header:NAME` (consistent hashing on that header's value).
    pub hash_key: Option<String>,
    pub servers: Vec<ServerEntrySpec>,
    #[serde(default)]
    pub timeouts: TimeoutsSpec,
    /// Extra tries on another server after a connect failure (default 2).
    pub retries: Option<u32>,
    pub queue: Option<QueueSpec>,
    pub health: Option<HealthSpec>,
    pub observe: Option<ObserveSpec>,
    /// HTTPS to the servers (requests and health checks); absent: plain HTTP.
    pub tls: Option<UpstreamTlsSpec>,
    /// How often a server `addr` given as `host:port` is resolved again (default 30s).
    pub resolve_every: Option<String>,
}

/// `upstreams.NAME.tls`: how floodgate speaks HTTPS to an upstream's servers.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSpec {
    /// PEM bundle of the CAs that sign the servers' certificates (default: the system store).
    pub ca: Option<String>,
    /// Check the server certificate (default true).
    pub verify: Option<bool>,
    /// Name sent as SNI and checked against the certificate (default: the host of `addr`).
    pub sni: Option<String>,
    /// Check the certificate names `sni` (default true; only with `verify`).
    pub verify_hostname: Option<bool>,
    /// PEM certificate (chain) floodgate presents as a client; needs `key`.
    pub cert: Option<String>,
    /// PEM private key of `cert`.
    pub key: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatchSpec {
    pub name: String,
    /// When absent, the header only has to be present.
    pub value: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// Exact host names or `*.suffix` wildcards.
    pub host: Option<OneOrMany<String>>,
    pub path_prefix: Option<OneOrMany<String>>,
    pub path: Option<OneOrMany<String>>,
    pub methods: Option<Vec<String>>,
    pub header: Option<OneOrMany<HeaderMatchSpec>>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdmissionSpec {
    pub max_inflight: usize,
    pub queue: Option<usize>,
    pub max_per_class: Option<usize>,
    pub queue_timeout: Option<String>,
    pub retry_after: Option<String>,
    pub fail_fast: Option<bool>,
    pub body: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteCacheSpec {
    pub ttl: String,
    pub methods: Option<Vec<String>>,
    pub statuses: Option<Vec<u16>>,
    pub vary: Option<Vec<String>>,
    pub max_entry_size: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PickServerSpec {
    pub map: String,
    /// `header:NAME`.
    pub key: String,
    /// `balance` (default), `reject`, or `server:NAME`.
    pub on_miss: Option<String>,
    /// Status for `on_miss: reject` (default 404).
    pub reject_status: Option<u16>,
    /// Default true.
    pub redispatch: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matcher: MatchSpec,
    /// The upstream that serves this route. Not needed with `respond`.
    pub upstream: Option<String>,
    /// Answer locally: `upstream_health` (200/503 with a JSON list of healthy servers), or
    /// `{ status, headers, body }`.
    pub respond: Option<RespondSpec>,
    /// Answer locally with a redirect.
    pub redirect: Option<RedirectSpec>,
    /// Header rules on requests to the upstream, after the listener's.
    pub request_headers: Option<Vec<HeaderRuleSpec>>,
    /// Header rules on this route's answers, after the listener's.
    pub response_headers: Option<Vec<HeaderRuleSpec>>,
    /// With `respond: upstream_health`: which upstream to report on (default `upstream`).
    pub health_of: Option<String>,
    pub priority: Option<i32>,
    pub admission: Option<AdmissionSpec>,
    pub cache: Option<RouteCacheSpec>,
    pub pick_server: Option<PickServerSpec>,
    /// Send the upstream the target as received instead of the normalised one.
    #[serde(default)]
    pub raw_path: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MapSourceSpec {
    pub url: String,
    pub every: Option<String>,
    pub timeout: Option<String>,
    /// `map` (default) or `json`.
    pub format: Option<String>,
    /// For an `https://` url: CA bundle, verify, SNI, client certificate (as `upstreams.NAME.tls`).
    pub tls: Option<UpstreamTlsSpec>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MapSpec {
    pub file: Option<String>,
    /// Write API changes through to `file` (temp file + rename).
    #[serde(default)]
    pub persist: bool,
    pub source: Option<MapSourceSpec>,
    /// A key given twice in the map text: `first` (default, as HAProxy), `last` or `error`.
    pub on_duplicate: Option<String>,
    /// A value naming no server: `skip` (default, a warning; the key routes as a miss) or `error`.
    pub on_unknown_value: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    pub scripts: Vec<String>,
    pub budget: Option<String>,
    pub memory_limit: Option<String>,
    /// `continue` (default) or an HTTP status such as `503`.
    pub on_error: Option<serde_yaml::Value>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SharedCacheSpec {
    pub url: String,
    pub timeout: Option<String>,
    pub key_prefix: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct MemoryCacheSpec {
    pub max_bytes: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    #[serde(default)]
    pub memory: MemoryCacheSpec,
    pub shared: Option<SharedCacheSpec>,
    /// How long a request waits for another request's fetch of the same key (default 30s).
    pub wait_timeout: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSpec {
    /// Readiness answers 503 for this long before draining starts (default 0s).
    pub pre_drain: Option<String>,
    /// Longest wait for in-flight requests to finish (default 30s).
    pub drain: Option<String>,
    /// Hard bound on the whole shutdown (default pre_drain + drain + 5s).
    pub ceiling: Option<String>,
}

/// The whole file.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ConfigSpec {
    #[serde(default)]
    pub server: ServerSpec,
    #[serde(default)]
    pub listeners: Vec<ListenerSpec>,
    pub admin: Option<AdminSpec>,
    #[serde(default)]
    pub access_log: AccessLogSpec,
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamSpec>,
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    #[serde(default)]
    pub maps: BTreeMap<String, MapSpec>,
    pub policy: Option<PolicySpec>,
    pub cache: Option<CacheSpec>,
    pub shutdown: Option<ShutdownSpec>,
}
