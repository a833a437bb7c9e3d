//! HAProxy Runtime API (the `stats socket` text protocol) for maps and servers, so existing
//! scripts keep working: `echo "set map /etc/haproxy/node.map n1 master2" | socat stdio unix:/run/floodgate.sock`.
//!
//! This file owns the UNIX socket server and the dispatch; [`parse`] reads command lines,
//! [`maps`] runs map commands against a [`MapStore`] (with the staged versions of `prepare
//! map` / `add map @N` / `commit map @N`), [`servers`] runs server commands against an
//! [`UpstreamStore`]; both stores are implemented by the caller over the live snapshot.
//!
//! Server commands: `show stat [<upstream>|-1 <type> <sid>]`, `show servers state
//! [<upstream>]`, `disable server <upstream>/<server>`, `enable server <upstream>/<server>`,
//! `set server <upstream>/<server> state ready|drain|maint`,
//! `set server <upstream>/<server> weight <n>[%]`, `set weight <upstream>/<server> <n>[%]`,
//! `get weight <upstream>/<server>`.
//!
//! Map commands: `help`, `prompt`, `quit`, `show map [[@<ver>] <map>]`,
//! `get map <map> <key>`, `set map <map> <key> <value>`, `add map [@<ver>] <map>
//! <key> <value>` (or `<<` payload of `key value` lines), `del map <map> <key>`,
//! `clear map [@<ver>] <map>`, `prepare map <map>`, `commit map @<ver> <map>`.
//! `<map>` is a map name, its file path, or `#<id>` (position in `show map`).
//! Several commands per line are separated by `;`; `\` escapes the next char.
//!
//! Deviations from HAProxy, on purpose: `add map` on an existing key replaces
//! its value (HAProxy keeps a shadowed duplicate); entry refs (`#0x...`) are not
//! accepted by `set`/`del`; a multi-word value is joined with single spaces.
//! Every live change is a whole-map [`MapStore::replace`] (O(map size)): for
//! bulk changes use `prepare` + `add map @N` (payload) + `commit`, one swap.

mod command;
mod maps;
mod parse;
mod servers;
#[cfg(test)]
mod tests;

pub use command::Command;
pub use maps::{Change, MapInfo, MapStore, MAX_STAGED_VERSIONS};
pub use parse::parse_command;
pub use servers::UpstreamStore;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use command::help_list;
use maps::Staging;
use parse::{parse_words, split_line};

/// Most concurrent socket connections; more are answered with an error and closed.
pub const MAX_CONNECTIONS: usize = 32;
/// A connection idle this long without sending a full line is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest accepted command line, in bytes.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// Largest accepted `<<` payload, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 64 << 20;

/// What the commands act on: the live maps and upstreams.
#[derive(Clone)]
pub struct Stores {
    pub maps: Arc<dyn MapStore>,
    pub upstreams: Arc<dyn UpstreamStore>,
}

/// What [`RuntimeApi::handle_line`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineOutcome {
    /// Answers, each followed by an empty line as HAProxy does.
    pub output: String,
    /// A `prompt` command was seen (toggle interactive mode).
    pub toggle_prompt: bool,
    /// A `quit` command was seen.
    pub quit: bool,
}

/// Command executor: holds the staged versions and serialises live changes.
#[derive(Debug, Default)]
pub struct RuntimeApi {
    staging: Mutex<Staging>,
    // why: set/add/del are read-modify-write of the whole map; two clients must
    // not interleave and lose an update. Other writers (file, admin API) can
    // still race with a runtime change: last writer wins, as in HAProxy.
    write_lock: Mutex<()>,
}

impl RuntimeApi {
    /// An executor with no staged versions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs every `;`-separated command of `line` (the last one gets `payload`).
    pub fn handle_line(&self, line: &str, payload: Option<&str>, stores: &Stores) -> LineOutcome {
        let cmds = split_line(line);
        let mut out = LineOutcome {
            output: String::new(),
            toggle_prompt: false,
            quit: false,
        };
        if cmds.is_empty() {
            return out;
        }
        let last = cmds.len() - 1;
        for (i, words) in cmds.iter().enumerate() {
            let body = match parse_words(words, if i == last { payload } else { None }) {
                Ok(Command::Prompt) => {
                    out.toggle_prompt = !out.toggle_prompt;
                    String::new()
                }
                Ok(Command::Quit) => {
                    out.quit = true;
                    break;
                }
                Ok(cmd) => self.execute(cmd, stores),
                Err(msg) => msg,
            };
            out.output.push_str(&body);
            if !body.is_empty() && !body.ends_with('\n') {
                out.output.push('\n');
            }
            out.output.push('\n');
        }
        out
    }

    /// Executes one command; returns the answer body (without the final empty line).
    pub fn execute(&self, cmd: Command, stores: &Stores) -> String {
        match cmd {
            Command::Help => help_list("The following commands are valid at this level:"),
            Command::Prompt | Command::Quit => String::new(),
            c if c.is_server_command() => servers::execute(c, &*stores.upstreams),
            c => self.execute_map(c, &*stores.maps),
        }
    }
}

/// A bound Runtime API socket; the socket file is removed on drop.
#[derive(Debug)]
pub struct RuntimeSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for RuntimeSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `path` with mode 0600. A stale socket file (nobody listening) is
/// removed first; a live socket or a non-socket file at `path` is an error.
pub async fn bind_unix(path: &Path) -> io::Result<RuntimeSocket> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; not removing it",
                    path.display()
                ),
            ));
        }
        if UnixStream::connect(path).await.is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by another process", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    let sock = RuntimeSocket {
        listener,
        path: path.to_path_buf(),
    };
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(sock)
}

/// Binds `path` (see [`bind_unix`]) and serves until `shutdown` is true.
pub async fn serve_unix(
    path: PathBuf,
    api: Arc<RuntimeApi>,
    stores: Stores,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let sock = bind_unix(&path).await?;
    serve(sock, api, stores, shutdown).await;
    Ok(())
}

/// Accepts connections until `shutdown` is true (or its sender is dropped),
/// then aborts open connections and removes the socket file. Each connection:
/// one line, answer, close; after `prompt`, interactive with `> ` prompts until
/// `quit` or EOF. At most [`MAX_CONNECTIONS`] at once.
pub async fn serve(
    sock: RuntimeSocket,
    api: Arc<RuntimeApi>,
    stores: Stores,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let accepted = tokio::select! {
            a = sock.listener.accept() => a,
            r = shutdown.changed() => {
                if r.is_err() { break; }
                continue;
            }
        };
        while conns.try_join_next().is_some() {}
        let mut stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                log::warn!("runtime API accept failed: {e}");
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            conns.spawn(async move {
                let _ = stream.write_all(b"Too many connections.\n\n").await;
            });
            continue;
        };
        let (api, stores, shutdown) = (api.clone(), stores.clone(), shutdown.clone());
        conns.spawn(async move {
            let _permit = permit;
            if let Err(e) = serve_conn(stream, api, stores, shutdown).await {
                log::debug!("runtime API connection ended: {e}");
            }
        });
    }
    conns.shutdown().await;
}

/// Reads one `\n`-terminated line (without the terminator); None on EOF.
async fn read_line<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
    max: usize,
) -> io::Result<Option<String>> {
    use tokio::io::AsyncReadExt as _;
    let mut buf = Vec::new();
    let n = (&mut *r)
        .take(max as u64 + 1)
        .read_until(b'\n', &mut buf)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.len() > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
    }
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "line is not UTF-8"))
}

async fn serve_conn(
    stream: UnixStream,
    api: Arc<RuntimeApi>,
    stores: Stores,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut interactive = false;
    loop {
        let next = tokio::select! {
            l = tokio::time::timeout(IDLE_TIMEOUT, read_line(&mut r, MAX_LINE_BYTES)) => l,
            _ = shutdown.changed() => return Ok(()),
        };
        let Ok(line) = next else { return Ok(()) };
        let Some(mut line) = line? else { return Ok(()) };
        // `<<` at the end of the line: payload lines follow until an empty line.
        let mut payload = None;
        if let Some(head) = line.trim_end().strip_suffix("<<") {
            let head = head.to_string();
            let mut p = String::new();
            loop {
                let Ok(next) =
                    tokio::time::timeout(IDLE_TIMEOUT, read_line(&mut r, MAX_LINE_BYTES)).await
                else {
                    return Ok(());
                };
                match next? {
                    Some(l) if !l.is_empty() => {
                        if p.len() + l.len() >= MAX_PAYLOAD_BYTES {
                            w.write_all(b"Payload too large.\n\n").await?;
                            return Ok(());
                        }
                        p.push_str(&l);
                        p.push('\n');
                    }
                    _ => break,
                }
            }
            line = head;
            payload = Some(p);
        }
        let (api2, stores2) = (api.clone(), stores.clone());
        // why: replace() clones and validates the whole map; keep that off the
        // async workers.
        let outcome = tokio::task::spawn_blocking(move || {
            api2.handle_line(&line, payload.as_deref(), &stores2)
        })
        .await
        .map_err(io::Error::other)?;
        if outcome.toggle_prompt {
            interactive = !interactive;
        }
        w.write_all(outcome.output.as_bytes()).await?;
        if !interactive || outcome.quit {
            w.shutdown().await?;
            return Ok(());
        }
        w.write_all(b"> ").await?;
    }
}
