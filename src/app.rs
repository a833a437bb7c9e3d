//! Wiring: build the state, register the proxy, admin and background services with a
//! Pingora `Server`, and run it with the phased shutdown watcher.

use crate::admin::AdminApp;
use crate::config::{load_config, ClientAuth, Config, ConfigErrors};
use crate::control::writer::first_snapshot;
use crate::lifecycle::handoff::{Draining, Gated, Intake};
use crate::lifecycle::shutdown::PhasedShutdown;
use crate::lifecycle::Phase;
use crate::proxy::Gateway;
use crate::state::AppState;
use async_trait::async_trait;
use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::ListenerConfig;
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::ShutdownWatch;
use pingora_core::server::{RunArgs, Server, ShutdownSignalWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service;
use pingora_core::services::ServiceReadyNotifier;
use std::path::Path;
use std::sync::Arc;

/// Longest wait for the shared cache tier to connect before the gateway reports ready.
pub const SHARED_CONNECT_BEFORE_READY: std::time::Duration = std::time::Duration::from_secs(2);

/// Longest wait for the Runtime API socket to be bound before a fresh start reports ready.
const RUNTIME_SOCKET_BEFORE_READY: std::time::Duration = std::time::Duration::from_secs(5);

/// Read buffer per downstream connection.
const L4_READ_BUFFER: usize = 16 * 1024;

/// Loads the config and everything it references into a first snapshot.
pub fn prepare(path: &Path) -> Result<Arc<AppState>, ConfigErrors> {
    let cfg = load_config(path)?;
    crate::logging::set_format(cfg.server.log_format);
    environment_errors(&cfg)?;
    let file = path.display().to_string();
    let (engine, policy) = crate::control::policy::load(cfg.policy.as_ref(), &file)?;
    let cache = build_cache(&cfg).map_err(|m| {
        ConfigErrors(vec![crate::config::ConfigError {
            file: file.clone(),
            path: "cache.shared.url".into(),
            message: m,
        }])
    })?;
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let snap = first_snapshot(cfg, policy, &metrics)?;
    Ok(AppState::new(
        snap,
        path.to_path_buf(),
        engine,
        cache,
        metrics,
    ))
}

/// Security settings that depend on the environment must take effect, or the start fails
/// (fail closed): a `token_env` whose variable is unset or empty would leave the admin API
/// open.
fn environment_errors(cfg: &Config) -> Result<(), ConfigErrors> {
    let Some(var) = &cfg.admin.token_env else {
        return Ok(());
    };
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Ok(()),
        found => Err(ConfigErrors(vec![crate::config::ConfigError {
            file: cfg.file.display().to_string(),
            path: "admin.token_env".into(),
            message: format!(
                "the environment variable {var} is {}, so the admin API would run without authentication; export {var}=<a long random token> before starting (or remove token_env, which a loopback-only admin bind allows)",
                if found.is_ok() { "empty" } else { "not set" }
            ),
        }])),
    }
}

/// Binds every listening address once before Pingora starts, so an address in use (or not
/// ours) stops the start with one clear line instead of a panic in a service thread that
/// leaves a process answering `/readyz` without a public listener.
pub fn check_binds(cfg: &Config) -> Result<(), String> {
    let admin = std::iter::once(("admin.bind".to_string(), cfg.admin.bind.clone()));
    let listeners = cfg
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (format!("listeners[{i}] ({})", l.name), l.bind.clone()));
    for (what, addr) in listeners.chain(admin) {
        if let Err(e) = std::net::TcpListener::bind(&addr) {
            return Err(format!(
                "{}: {what}: cannot listen on {addr}: {e}; stop whatever holds it (`ss -ltnp 'sport = :{}'`) or choose another address",
                cfg.file.display(),
                addr.rsplit(':').next().unwrap_or("")
            ));
        }
    }
    Ok(())
}

/// The response cache for a config: memory bound, shared tier, and which statuses to store.
pub fn build_cache(cfg: &Config) -> Result<crate::cache::ResponseCache, String> {
    // Route rules (statuses, entry size) are applied per request; these are the cache-wide bounds.
    let statuses = vec![200];
    let settings = crate::cache::CacheSettings {
        max_bytes: usize::try_from(cfg.cache.max_bytes).unwrap_or(usize::MAX),
        max_entry_bytes: None,
        shared: cfg.cache.shared.as_ref().map(|s| {
            let mut sh = crate::cache::SharedSettings::new(s.url.clone());
            sh.timeout = s.timeout;
            sh.key_prefix = s.key_prefix.clone();
            sh
        }),
        follower_timeout: cfg.cache.wait_timeout,
        cacheable_statuses: statuses,
    };
    crate::cache::ResponseCache::new(settings)
        .map_err(|e| format!("{e}; write e.g. \"redis://127.0.0.1:6379/0\""))
}

/// Validates a config and everything it references without starting anything (`floodgate check`).
pub fn check(path: &Path) -> Result<Config, ConfigErrors> {
    let cfg = load_config(path)?;
    environment_errors(&cfg)?;
    let (_, policy) =
        crate::control::policy::load(cfg.policy.as_ref(), &path.display().to_string())?;
    // (a registry of its own: nothing is served)
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let snap = first_snapshot(cfg, policy, &metrics)?;
    Ok((*snap.config).clone())
}

/// Background work: health loop, SIGHUP reloads, map file watching, the runtime API socket,
/// and the phase switch to `Running` once the first health round is done (which is also when
/// the proxy listeners start: they depend on this service's readiness).
struct Background {
    state: Arc<AppState>,
    intake: Arc<Intake>,
    handle_sighup: bool,
    upgrade: bool,
}

#[async_trait]
impl BackgroundService for Background {
    async fn start_with_ready_notifier(
        &self,
        shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        let st = self.state.clone();
        let files = Arc::new(crate::control::watch::FileEvents::new());
        let mut tasks = vec![
            tokio::spawn(crate::upstream::health::run(st.clone(), shutdown.clone())),
            tokio::spawn(crate::control::maps::watch_files(
                st.clone(),
                files.clone(),
                shutdown.clone(),
            )),
            tokio::spawn(crate::control::policy::watch_scripts(
                st.clone(),
                files,
                shutdown.clone(),
            )),
            tokio::spawn(crate::control::pollers::run_pollers(
                st.clone(),
                shutdown.clone(),
            )),
            tokio::spawn(crate::upstream::resolve::run(st.clone(), shutdown.clone())),
            tokio::spawn(st.cache.clone().sweep_expired(shutdown.clone())),
        ];
        if self.handle_sighup {
            tasks.push(tokio::spawn(crate::control::reload::sighup_loop(
                st.clone(),
                shutdown.clone(),
            )));
        }
        // Settled when the runtime socket is bound (or failed to bind): a fresh start reports
        // ready only after, so a script that waits for /readyz finds the socket there.
        let (socket_settled, runtime_socket) = tokio::sync::oneshot::channel::<()>();
        if let Some(sock) = st.snapshot().config.admin.runtime_socket.clone() {
            // why: the runtime socket stops with the listeners, so during an upgrade the new
            // process (which waits for the path to be free) takes it over
            tasks.push(tokio::spawn(serve_runtime_socket(
                st.clone(),
                sock,
                self.intake.watch(),
                self.upgrade,
                socket_settled,
            )));
        } else {
            drop(socket_settled);
        }
        // why: connect the shared cache tier before reporting ready, so a gateway restarted
        // during a storm reads what the others stored instead of rendering it again; bounded,
        // because the tier is optional (requests fall back to memory while Redis is down).
        if !st.cache.connect_shared(SHARED_CONNECT_BEFORE_READY).await {
            log::warn!(
                "shared cache tier not connected within {SHARED_CONNECT_BEFORE_READY:?}; ready without it (it keeps reconnecting)"
            );
        }
        // why: not during an upgrade: the socket is freed only when the old process stops its
        // listeners, which waits for this one to be ready
        if !self.upgrade {
            let _ = tokio::time::timeout(RUNTIME_SOCKET_BEFORE_READY, runtime_socket).await;
        }
        // Ready once every actively checked server has had its first check (bounded wait).
        let started = std::time::Instant::now();
        while !crate::upstream::health::first_round_done(&st)
            && started.elapsed() < std::time::Duration::from_secs(10)
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // the proxy listeners start now (they depend on this service)...
        ready.notify_ready();
        // ...and /readyz says so only once they listen: an outer load balancer (or a script)
        // that sends traffic on the first 200 must not meet a refused connection.
        let intake = self.intake.clone();
        let expected = st.snapshot().config.listeners.len() + 1;
        let st_ready = st.clone();
        tasks.push(tokio::spawn(async move {
            wait_until_listening(&intake, expected).await;
            if st_ready.current_phase() == Phase::Starting {
                st_ready.set_phase(Phase::Running);
                log::info!(
                    "floodgate {} is ready (config version {})",
                    crate::VERSION,
                    st_ready.snapshot().version
                );
            }
            // why: MAINPID lets systemd follow a process started by an upgrade (NotifyAccess=all)
            crate::sdnotify::notify(&format!("READY=1\nMAINPID={}", std::process::id()));
        }));
        let mut sd = shutdown;
        let _ = sd.changed().await;
        for t in tasks {
            t.abort();
        }
    }
}

/// Returns once all `expected` sockets (listeners and admin) listen, at most 10 s: readiness
/// and systemd's `READY=1` (the start, or an upgrade, is done) wait for connections to be
/// taken.
async fn wait_until_listening(intake: &Intake, expected: usize) {
    let started = std::time::Instant::now();
    while intake.socket_count() < expected && started.elapsed() < std::time::Duration::from_secs(10)
    {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Serves the HAProxy Runtime API socket until the listeners stop. A process started by an
/// upgrade waits for the old one to release the path (at most the overlap plus the drain).
async fn serve_runtime_socket(
    st: Arc<AppState>,
    path: std::path::PathBuf,
    stop: ShutdownWatch,
    upgrade: bool,
    settled: tokio::sync::oneshot::Sender<()>,
) {
    use crate::runtime_api::{bind_unix, serve, RuntimeApi, Stores};
    let patience = if upgrade {
        crate::lifecycle::shutdown::UPGRADE_OVERLAP + st.snapshot().config.shutdown.drain
    } else {
        std::time::Duration::ZERO
    };
    let started = std::time::Instant::now();
    let sock = loop {
        match bind_unix(&path).await {
            Ok(s) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && started.elapsed() < patience => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => {
                log::error!("runtime API socket {}: {e}", path.display());
                return;
            }
        }
    };
    let _ = settled.send(());
    let api = Arc::new(RuntimeApi::new());
    let stores = Stores {
        maps: Arc::new(crate::control::maps::LiveMaps(st.clone())),
        upstreams: st,
    };
    serve(sock, api, stores, stop).await;
}

fn tls_settings(
    t: &crate::config::TlsConfig,
) -> pingora_core::Result<pingora_core::listeners::tls::TlsSettings> {
    use pingora_core::tls::ssl::{SslFiletype, SslVerifyMode};
    use pingora_error::{Error, ErrorType};
    let tls_err = |what: &str, e: pingora_core::tls::error::ErrorStack| {
        Error::because(ErrorType::InternalError, what.to_string(), e)
    };
    let mut tls = pingora_core::listeners::tls::TlsSettings::with_callbacks(Box::new(
        crate::tlsinfo::CaptureClientCert,
    ))?;
    tls.set_certificate_chain_file(&t.cert)
        .map_err(|e| tls_err("tls.cert", e))?;
    tls.set_private_key_file(&t.key, SslFiletype::PEM)
        .map_err(|e| tls_err("tls.key", e))?;
    if let Some(ca) = &t.client_ca {
        let mode = match t.client_auth {
            ClientAuth::Require => SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
            ClientAuth::Optional => SslVerifyMode::PEER,
            ClientAuth::None => SslVerifyMode::NONE,
        };
        tls.set_verify(mode);
        tls.set_ca_file(ca)
            .map_err(|e| tls_err("tls.client_ca", e))?;
        let names = pingora_core::tls::x509::X509Name::load_client_ca_file(ca)
            .map_err(|e| tls_err("tls.client_ca", e))?;
        tls.set_client_ca_list(names);
    }
    tls.enable_h2();
    Ok(tls)
}

/// Builds the Pingora server with all services. `handle_sighup` is off for in-process tests;
/// with `upgrade` the listening sockets come from the running process (`run --upgrade`).
// why: HttpServerOptions and ServerConf are non-exhaustive, so they cannot be struct literals
#[allow(clippy::field_reassign_with_default)]
pub fn build_server(
    state: Arc<AppState>,
    intake: Arc<Intake>,
    handle_sighup: bool,
    upgrade: bool,
) -> pingora_core::Result<Server> {
    let cfg = state.snapshot().config.clone();
    let mut conf = ServerConf::default();
    conf.threads = cfg.server.threads;
    conf.work_stealing = cfg.server.work_stealing;
    conf.upstream_keepalive_pool_size = cfg.server.upstream_keepalive_pool;
    // why: lifecycle/shutdown.rs drains before handing control back, so Pingora's own unconditional
    // grace sleep (300 s by default) must not run again
    conf.grace_period_seconds = Some(0);
    conf.graceful_shutdown_timeout_seconds =
        Some(crate::lifecycle::shutdown::RUNTIME_EXIT.as_secs());
    if let Some(p) = &cfg.server.pid_file {
        conf.pid_file = p.clone();
    }
    conf.upgrade_sock = cfg.server.upgrade_sock.clone();
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    // With `upgrade`: blocks until the running process sends its sockets (SIGQUIT), ~5 s at most.
    server.bootstrap();

    let mut opts = HttpServerOptions::default();
    opts.h2c = cfg.listeners.iter().any(|l| l.h2c);
    opts.keepalive_request_limit = cfg.server.keepalive_requests;
    let mut http = pingora_proxy::http_proxy(&server.configuration, Gateway::new(state.clone()));
    http.server_options = Some(opts);
    // why: the front door reads each HTTP/1.x head strictly before Pingora does
    // (src/frontdoor); Draining holds parked connections until the drain ends (src/handoff).
    let mut proxy = Service::new(
        "floodgate proxy".to_string(),
        Draining {
            inner: Arc::new(crate::frontdoor::FrontDoor::new(
                state.clone(),
                http,
                &cfg.listeners,
            )),
            state: state.clone(),
        },
    );
    for l in &cfg.listeners {
        match &l.tls {
            // why: Pingora's default 64 KiB read buffer per connection is zero-filled on every
            // accept and is most of the memory gap to HAProxy at many connections; 16 KiB
            // holds any sane request head
            None => proxy.add_listener(
                ListenerConfig::tcp(l.bind.clone())
                    .l4_buffer(L4BufferSettings::default().read(L4_READ_BUFFER)),
            ),
            Some(t) => proxy.add_listener(
                ListenerConfig::tcp(l.bind.clone())
                    .tls(tls_settings(t)?)
                    .l4_buffer(L4BufferSettings::default().read(L4_READ_BUFFER)),
            ),
        }
    }
    let proxy = server.add_service(Gated {
        inner: proxy,
        intake: intake.clone(),
    });

    let mut admin = Service::new(
        "floodgate admin".to_string(),
        AdminApp {
            state: state.clone(),
        },
    );
    admin.add_tcp(&cfg.admin.bind);
    admin.threads = Some(1);
    server.add_service(Gated {
        inner: admin,
        intake: intake.clone(),
    });
    let background = server.add_service(background_service(
        "floodgate background",
        Background {
            state,
            intake,
            handle_sighup,
            upgrade,
        },
    ));
    // why: the proxy listeners accept only once the first health round is done: before it no
    // server may take traffic, and during an upgrade the old process serves meanwhile
    proxy.add_dependency(&background);
    Ok(server)
}

/// Runs until shutdown (blocks the calling thread). `shutdown`: a signal source replacing the
/// process signals (tests, embedders); either way a graceful stop drains first
/// (see [`crate::shutdown`]).
pub fn run(
    state: Arc<AppState>,
    shutdown: Option<Box<dyn ShutdownSignalWatch + Send + Sync>>,
) -> pingora_core::Result<()> {
    run_with(state, shutdown, false)
}

/// [`run`], and with `upgrade` take the listening sockets over from the running process
/// instead of binding them (`floodgate run --upgrade`; the old process sends them on SIGQUIT).
pub fn run_with(
    state: Arc<AppState>,
    shutdown: Option<Box<dyn ShutdownSignalWatch + Send + Sync>>,
    upgrade: bool,
) -> pingora_core::Result<()> {
    let handle_sighup = shutdown.is_none();
    // why: during an upgrade the addresses are held by the old process on purpose
    if !upgrade {
        check_binds(&state.snapshot().config)
            .map_err(|m| pingora_error::Error::explain(pingora_error::ErrorType::BindError, m))?;
    }
    let intake = Intake::new();
    let watcher: Box<dyn ShutdownSignalWatch> = Box::new(PhasedShutdown {
        state: state.clone(),
        intake: intake.clone(),
        inner: shutdown,
    });
    let server = build_server(state, intake, handle_sighup, upgrade)?;
    server.run(RunArgs {
        shutdown_signal: watcher,
    });
    Ok(())
}
