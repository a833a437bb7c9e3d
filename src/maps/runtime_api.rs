//! HAProxy Runtime API (the `stats socket` text protocol) for maps, so existing
//! scripts keep working: `echo "set map /etc/haproxy/node.map n1 master2" | socat stdio unix:/run/floodgate.sock`.
//!
//! Owns command parsing ([`parse_command`]), execution against a [`MapStore`]
//! (implemented by the caller over the live snapshot), the staged versions of
//! `prepare map` / `add map @N` / `commit map @N`, and the UNIX socket server.
//!
//! Supported: `help`, `prompt`, `quit`, `show map [[@<ver>] <map>]`,
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

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::{check_entry, MapSource, MapTable};

/// Most staged (prepared, uncommitted) versions kept; preparing one more drops
/// the oldest, so an abandoned script cannot pile them up.
pub const MAX_STAGED_VERSIONS: usize = 16;
/// Most concurrent socket connections; more are answered with an error and closed.
pub const MAX_CONNECTIONS: usize = 32;
/// A connection idle this long without sending a full line is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest accepted command line, in bytes.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// Largest accepted `<<` payload, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 64 << 20;

const UNKNOWN_MAP: &str = "Unknown map identifier. Please use #<id> or <file>.";

/// One map as listed by `show map`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapInfo {
    /// Map name from the config.
    pub name: String,
    /// File the map is loaded from, if any (HAProxy scripts address maps by it).
    pub file: Option<PathBuf>,
    /// Current number of entries.
    pub entries: usize,
}

/// What a [`MapStore::replace`] stands for, which decides how strictly values are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Entries named by an operator (`set map`, `add map`, `del map`): a value naming no
    /// server refuses the change.
    Edit,
    /// A whole new map (`commit map`, `clear map`): the map's `on_unknown_value` applies.
    Whole,
}

/// The live maps, implemented by the caller over its snapshot.
pub trait MapStore: Send + Sync {
    /// All maps in a stable order (the position is the `#<id>`).
    fn list(&self) -> Vec<MapInfo>;
    /// The map name for a name or a file path; None when unknown.
    fn resolve(&self, name_or_file: &str) -> Option<String>;
    /// The current table of a map (by name).
    fn get(&self, map: &str) -> Option<Arc<MapTable>>;
    /// Validates and atomically swaps in new content; returns the new version,
    /// or a one-line reason (e.g. a value that names no server) and changes nothing.
    fn replace(
        &self,
        map: &str,
        entries: HashMap<String, String>,
        source: MapSource,
        change: Change,
    ) -> Result<u64, String>;
}

/// One parsed Runtime API command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `help`: list commands.
    Help,
    /// `prompt`: toggle interactive mode on the connection.
    Prompt,
    /// `quit`: close the connection.
    Quit,
    /// `show map`: list maps.
    ShowMaps,
    /// `show map [@ver] <map>`: dump the live or a staged version.
    ShowMap { map: String, version: Option<u64> },
    /// `get map <map> <key>`.
    GetMap { map: String, key: String },
    /// `set map <map> <key> <value>`: change an existing key.
    SetMap {
        map: String,
        key: String,
        value: String,
    },
    /// `add map [@ver] <map> <key> <value>` or with a payload (many entries).
    AddMap {
        map: String,
        version: Option<u64>,
        entries: Vec<(String, String)>,
    },
    /// `del map <map> <key>`.
    DelMap { map: String, key: String },
    /// `clear map [@ver] <map>`.
    ClearMap { map: String, version: Option<u64> },
    /// `prepare map <map>`.
    PrepareMap { map: String },
    /// `commit map @ver <map>`.
    CommitMap { map: String, version: u64 },
}

/// Splits a line into commands (`;`) of words (whitespace); `\` escapes the
/// next character.
fn split_line(line: &str) -> Vec<Vec<String>> {
    let mut cmds = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    word.push(n);
                }
                in_word = true;
            }
            ';' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
                cmds.push(std::mem::take(&mut words));
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    cmds.push(words);
    cmds.retain(|w| !w.is_empty());
    cmds
}

/// Parses one command (no `;`); the error is the HAProxy-style answer.
pub fn parse_command(line: &str) -> Result<Command, String> {
    let mut cmds = split_line(line);
    match cmds.len() {
        1 => parse_words(&cmds.remove(0), None),
        0 => Err(unknown_command(&[])),
        _ => Err("One command expected; use RuntimeApi::handle_line for ';' lists.".to_string()),
    }
}

fn parse_version(word: &str) -> Option<u64> {
    word.strip_prefix('@')?.parse().ok()
}

/// Parses the words of one command, with the `<<` payload if any.
fn parse_words(w: &[String], payload: Option<&str>) -> Result<Command, String> {
    let arg = |i: usize| w.get(i).map(String::as_str).unwrap_or("");
    let (verb, noun) = (arg(0), arg(1));
    match (verb, noun) {
        ("help", _) => return Ok(Command::Help),
        ("prompt", _) => return Ok(Command::Prompt),
        ("quit", _) => return Ok(Command::Quit),
        ("show" | "get" | "set" | "add" | "del" | "clear" | "prepare" | "commit", "map") => {}
        _ => return Err(unknown_command(w)),
    }
    // Optional @version right after "map" (not for get/set/del/prepare).
    let version = parse_version(arg(2));
    let versioned = arg(2).starts_with('@');
    if versioned && version.is_none() {
        return Err("Malformed version number.".to_string());
    }
    let base = if versioned { 3 } else { 2 };
    let map = arg(base).to_string();
    let rest = |from: usize| w.get(from..).map(|s| s.join(" ")).unwrap_or_default();
    match verb {
        "show" if map.is_empty() && !versioned => Ok(Command::ShowMaps),
        "show" if map.is_empty() => Err("Missing map identifier.".to_string()),
        "show" => Ok(Command::ShowMap { map, version }),
        "get" | "set" | "del" | "prepare" if versioned => Err(unknown_command(w)),
        "get" if map.is_empty() || arg(3).is_empty() => {
            Err("Missing map identifier and/or key.".to_string())
        }
        "get" => Ok(Command::GetMap { map, key: rest(3) }),
        "set" if map.is_empty() || arg(3).is_empty() || arg(4).is_empty() => {
            Err("'set map' expects three parameters: map identifier, key and value.".to_string())
        }
        "set" => Ok(Command::SetMap {
            map,
            key: arg(3).to_string(),
            value: rest(4),
        }),
        "del" if map.is_empty() || arg(3).is_empty() => {
            Err("This command expects two parameters: map identifier and key.".to_string())
        }
        "del" => Ok(Command::DelMap {
            map,
            key: arg(3).to_string(),
        }),
        "add" => {
            let usage = "'add map' expects three parameters (map identifier, key and value) or one parameter (map identifier) and a payload";
            let entries = match payload {
                Some(p) if !map.is_empty() => parse_payload(p)?,
                None if !map.is_empty()
                    && !arg(base + 1).is_empty()
                    && !arg(base + 2).is_empty() =>
                {
                    vec![(arg(base + 1).to_string(), rest(base + 2))]
                }
                _ => return Err(usage.to_string()),
            };
            Ok(Command::AddMap {
                map,
                version,
                entries,
            })
        }
        "clear" if map.is_empty() => Err("Missing map identifier.".to_string()),
        "clear" => Ok(Command::ClearMap { map, version }),
        "prepare" if map.is_empty() => Err("Missing map identifier.".to_string()),
        "prepare" => Ok(Command::PrepareMap { map }),
        "commit" => match version {
            None => Err("Missing version number.".to_string()),
            Some(_) if map.is_empty() => Err("Missing map identifier.".to_string()),
            Some(v) => Ok(Command::CommitMap { map, version: v }),
        },
        _ => Err(unknown_command(w)),
    }
}

/// `key value` lines of an `add map ... <<` payload (value = rest of line).
fn parse_payload(p: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for line in p.lines() {
        let line = line.trim_matches([' ', '\t', '\r']);
        if line.is_empty() {
            continue;
        }
        match line.find([' ', '\t']) {
            Some(i) => out.push((
                line[..i].to_string(),
                line[i..].trim_start_matches([' ', '\t']).to_string(),
            )),
            None => return Err(format!("Missing value for key '{line}'.")),
        }
    }
    Ok(out)
}

const HELP: &[(&str, &str)] = &[
    ("help", "list known commands"),
    ("prompt", "toggle interactive mode with prompt"),
    ("quit", "disconnect"),
    (
        "add map [@<ver>] <map> <key> <val>",
        "add a map entry (payload supported instead of key/val)",
    ),
    ("clear map [@<ver>] <map>", "clear the contents of this map"),
    ("commit map @<ver> <map>", "commit the map at this version"),
    ("del map <map> <key>", "delete the map entry of <key>"),
    ("get map <map> <key>", "report the value a key maps to"),
    (
        "prepare map <map>",
        "prepare a new version for atomic map replacement",
    ),
    ("set map <map> <key> <value>", "modify a map entry"),
    (
        "show map [@ver] [map]",
        "report available maps or dump a map's contents",
    ),
];

fn help_list(header: &str) -> String {
    let mut out = format!("{header}\n");
    for (cmd, what) in HELP {
        let _ = writeln!(out, "  {cmd:<40}: {what}");
    }
    out.pop();
    out
}

fn unknown_command(words: &[String]) -> String {
    if words.is_empty() {
        help_list("Unknown command. Please enter one of the following commands only:")
    } else {
        help_list("Unknown command, but maybe one of the following ones is a better match:")
    }
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

#[derive(Debug, Default)]
struct Staging {
    versions: BTreeMap<(String, u64), HashMap<String, String>>,
    last_prepared: HashMap<String, u64>,
    /// Order of preparation, for evicting the oldest.
    order: Vec<(String, u64)>,
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
    pub fn handle_line(
        &self,
        line: &str,
        payload: Option<&str>,
        store: &dyn MapStore,
    ) -> LineOutcome {
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
                Ok(cmd) => self.execute(cmd, store),
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
    pub fn execute(&self, cmd: Command, store: &dyn MapStore) -> String {
        match cmd {
            Command::Help => help_list("The following commands are valid at this level:"),
            Command::Prompt | Command::Quit => String::new(),
            Command::ShowMaps => show_maps(store),
            Command::ShowMap { map, version } => self.with_map(store, &map, |name| match version {
                None => match store.get(name) {
                    Some(t) => dump(t.sorted().into_iter()),
                    None => String::new(),
                },
                Some(v) => match self.staging.lock().versions.get(&(name.to_string(), v)) {
                    Some(entries) => {
                        let mut sorted: Vec<(&str, &str)> =
                            entries.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                        sorted.sort_unstable();
                        dump(sorted.into_iter())
                    }
                    None => String::new(),
                },
            }),
            Command::GetMap { map, key } => self.with_map(store, &map, |name| {
                match store.get(name).as_deref().and_then(|t| t.get(&key)) {
                    Some(v) => format!(
                        "type=str, case=sensitive, found=yes, idx=tree, key=\"{key}\", value=\"{v}\", type=\"str\""
                    ),
                    None => "type=str, case=sensitive, found=no".to_string(),
                }
            }),
            Command::SetMap { map, key, value } => self.with_map(store, &map, |name| {
                if let Err(e) = check_entry(&key, &value) {
                    return format!("{e}.");
                }
                self.modify(store, name, |m| match m.get_mut(&key) {
                    Some(slot) => {
                        *slot = value.clone();
                        Ok(())
                    }
                    None => Err("entry not found.".to_string()),
                })
            }),
            Command::AddMap { map, version, entries } => self.with_map(store, &map, |name| {
                if let Some(e) = entries.iter().find_map(|(k, v)| check_entry(k, v).err()) {
                    return format!("{e}.");
                }
                match version {
                    None => self.modify(store, name, |m| {
                        m.extend(entries.iter().cloned());
                        Ok(())
                    }),
                    Some(v) => self.with_staged(name, v, |m| m.extend(entries.iter().cloned())),
                }
            }),
            Command::DelMap { map, key } => self.with_map(store, &map, |name| {
                self.modify(store, name, |m| match m.remove(&key) {
                    Some(_) => Ok(()),
                    None => Err("Key not found.".to_string()),
                })
            }),
            Command::ClearMap { map, version } => self.with_map(store, &map, |name| match version {
                None => {
                    let _w = self.write_lock.lock();
                    match store.replace(name, HashMap::new(), MapSource::RuntimeApi, Change::Whole) {
                        Ok(_) => String::new(),
                        Err(e) => format!("{e}."),
                    }
                }
                Some(v) => self.with_staged(name, v, HashMap::clear),
            }),
            Command::PrepareMap { map } => {
                self.with_map(store, &map, |name| format!("New version created: {}", self.prepare(store, name)))
            }
            Command::CommitMap { map, version } => self.with_map(store, &map, |name| self.commit(store, name, version)),
        }
    }

    /// Resolves `<map>` (name, file or `#id`) and runs `f` with the name.
    fn with_map(&self, store: &dyn MapStore, map: &str, f: impl FnOnce(&str) -> String) -> String {
        match resolve(store, map) {
            Some(name) => f(&name),
            None => UNKNOWN_MAP.to_string(),
        }
    }

    /// Copy, change, replace the live map; empty answer on success.
    fn modify(
        &self,
        store: &dyn MapStore,
        name: &str,
        change: impl FnOnce(&mut HashMap<String, String>) -> Result<(), String>,
    ) -> String {
        let _w = self.write_lock.lock();
        let mut entries = store
            .get(name)
            .map(|t| t.content().to_entries())
            .unwrap_or_default();
        if let Err(e) = change(&mut entries) {
            return e;
        }
        match store.replace(name, entries, MapSource::RuntimeApi, Change::Edit) {
            Ok(_) => String::new(),
            Err(e) => format!("{e}."),
        }
    }

    fn with_staged(
        &self,
        name: &str,
        version: u64,
        change: impl FnOnce(&mut HashMap<String, String>),
    ) -> String {
        let mut st = self.staging.lock();
        let last = st.last_prepared.get(name).copied().unwrap_or(0);
        match st.versions.get_mut(&(name.to_string(), version)) {
            Some(m) => {
                change(m);
                String::new()
            }
            None if version > last => {
                "Version number in the future, please use 'prepare map' before.".to_string()
            }
            None => "Version number out of range.".to_string(),
        }
    }

    fn prepare(&self, store: &dyn MapStore, name: &str) -> u64 {
        let live = store.get(name).map(|t| t.version).unwrap_or(0);
        let mut st = self.staging.lock();
        let next = st.last_prepared.get(name).copied().unwrap_or(0).max(live) + 1;
        st.last_prepared.insert(name.to_string(), next);
        st.versions.insert((name.to_string(), next), HashMap::new());
        st.order.push((name.to_string(), next));
        while st.versions.len() > MAX_STAGED_VERSIONS {
            let oldest = st.order.remove(0);
            if st.versions.remove(&oldest).is_some() {
                log::warn!(
                    "runtime API: dropped uncommitted version @{} of map {}",
                    oldest.1,
                    oldest.0
                );
            }
        }
        let Staging {
            order, versions, ..
        } = &mut *st;
        order.retain(|k| versions.contains_key(k));
        next
    }

    fn commit(&self, store: &dyn MapStore, name: &str, version: u64) -> String {
        let key = (name.to_string(), version);
        let Some(entries) = self.staging.lock().versions.remove(&key) else {
            return "Version number out of range.".to_string();
        };
        let _w = self.write_lock.lock();
        match store.replace(name, entries.clone(), MapSource::RuntimeApi, Change::Whole) {
            Ok(_) => {
                // HAProxy purges all versions up to the committed one.
                let mut st = self.staging.lock();
                st.versions.retain(|(m, v), _| m != name || *v > version);
                let Staging {
                    order, versions, ..
                } = &mut *st;
                order.retain(|k| versions.contains_key(k));
                String::new()
            }
            Err(e) => {
                // Keep the staged version so the operator can fix and retry.
                self.staging.lock().versions.insert(key, entries);
                format!("{e}.")
            }
        }
    }
}

fn resolve(store: &dyn MapStore, map: &str) -> Option<String> {
    if let Some(id) = map.strip_prefix('#') {
        let id: usize = id.parse().ok()?;
        return store.list().into_iter().nth(id).map(|i| i.name);
    }
    store.resolve(map)
}

fn show_maps(store: &dyn MapStore) -> String {
    let mut out = String::from("# id (file) description");
    for (id, info) in store.list().into_iter().enumerate() {
        let shown = info
            .file
            .as_ref()
            .map(|f| f.display().to_string())
            .unwrap_or_else(|| info.name.clone());
        let (ver, source) = store
            .get(&info.name)
            .map(|t| (t.version, t.source.as_str()))
            .unwrap_or((0, "empty"));
        let _ = write!(
            out,
            "\n{id} ({shown}) map '{}' source={source} entries:{}. curr_ver={ver} entry_cnt={}",
            info.name, info.entries, info.entries
        );
    }
    out
}

/// `0x<id> key value` lines; ids are positions in key order (display only).
fn dump<'a>(entries: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::new();
    for (i, (k, v)) in entries.enumerate() {
        let _ = writeln!(out, "0x{:012x} {k} {v}", i + 1);
    }
    out
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
    store: Arc<dyn MapStore>,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let sock = bind_unix(&path).await?;
    serve(sock, api, store, shutdown).await;
    Ok(())
}

/// Accepts connections until `shutdown` is true (or its sender is dropped),
/// then aborts open connections and removes the socket file. Each connection:
/// one line, answer, close; after `prompt`, interactive with `> ` prompts until
/// `quit` or EOF. At most [`MAX_CONNECTIONS`] at once.
pub async fn serve(
    sock: RuntimeSocket,
    api: Arc<RuntimeApi>,
    store: Arc<dyn MapStore>,
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
        let (api, store, shutdown) = (api.clone(), store.clone(), shutdown.clone());
        conns.spawn(async move {
            let _permit = permit;
            if let Err(e) = serve_conn(stream, api, store, shutdown).await {
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
    store: Arc<dyn MapStore>,
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
        let (api2, store2) = (api.clone(), store.clone());
        // why: replace() clones and validates the whole map; keep that off the
        // async workers.
        let outcome = tokio::task::spawn_blocking(move || {
            api2.handle_line(&line, payload.as_deref(), &*store2)
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    type Slot = (String, Option<PathBuf>, Arc<MapTable>);

    /// In-memory stand-in for the caller's snapshot-backed store.
    struct MemStore {
        maps: Mutex<Vec<Slot>>,
        servers: Vec<&'static str>,
    }

    impl MemStore {
        fn new() -> Arc<Self> {
            let nodes: HashMap<String, String> = [("n1", "master1"), ("n2", "master2")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Arc::new(MemStore {
                maps: Mutex::new(vec![
                    (
                        "nodes".into(),
                        Some(PathBuf::from("/etc/haproxy/node-master.map")),
                        Arc::new(MapTable::new(nodes, 1, MapSource::Api)),
                    ),
                    ("other".into(), None, Arc::new(MapTable::empty())),
                ]),
                servers: vec!["master1", "master2", "master3"],
            })
        }
        fn value(&self, map: &str, key: &str) -> Option<String> {
            self.get(map)?.get(key).map(str::to_string)
        }
    }

    impl MapStore for MemStore {
        fn list(&self) -> Vec<MapInfo> {
            let maps = self.maps.lock();
            maps.iter()
                .map(|(n, f, t)| MapInfo {
                    name: n.clone(),
                    file: f.clone(),
                    entries: t.len(),
                })
                .collect()
        }
        fn resolve(&self, name_or_file: &str) -> Option<String> {
            let maps = self.maps.lock();
            maps.iter()
                .find(|(n, f, _)| {
                    n == name_or_file || f.as_deref() == Some(Path::new(name_or_file))
                })
                .map(|(n, _, _)| n.clone())
        }
        fn get(&self, map: &str) -> Option<Arc<MapTable>> {
            self.maps
                .lock()
                .iter()
                .find(|(n, _, _)| n == map)
                .map(|(_, _, t)| t.clone())
        }
        fn replace(
            &self,
            map: &str,
            entries: HashMap<String, String>,
            source: MapSource,
            _change: Change,
        ) -> Result<u64, String> {
            let errs = super::super::validate_values(&entries, |v| self.servers.contains(&v), map);
            if let Some(e) = errs.first() {
                return Err(e.message.clone());
            }
            let mut maps = self.maps.lock();
            let slot = maps
                .iter_mut()
                .find(|(n, _, _)| n == map)
                .ok_or("no such map")?;
            let version = slot.2.version + 1;
            slot.2 = Arc::new(MapTable::new(entries, version, source));
            Ok(version)
        }
    }

    fn run(api: &RuntimeApi, store: &MemStore, line: &str) -> String {
        api.handle_line(line, None, store).output
    }

    #[test]
    fn parse_command_reads_versions_values_and_escapes() {
        assert_eq!(parse_command("show map").unwrap(), Command::ShowMaps);
        assert_eq!(
            parse_command("add map @3 /m.map k v").unwrap(),
            Command::AddMap {
                map: "/m.map".into(),
                version: Some(3),
                entries: vec![("k".into(), "v".into())]
            }
        );
        assert_eq!(
            parse_command("set map m k two\\ words").unwrap(),
            Command::SetMap {
                map: "m".into(),
                key: "k".into(),
                value: "two words".into()
            }
        );
        assert_eq!(
            parse_command("commit map m").unwrap_err(),
            "Missing version number."
        );
        assert!(
            parse_command("frobnicate")
                .unwrap_err()
                .starts_with("Unknown command"),
            "unknown verb"
        );
        assert!(parse_command("set map m k")
            .unwrap_err()
            .starts_with("'set map' expects three"));
    }

    #[test]
    fn get_set_add_del_change_the_live_map_by_name_file_or_id() {
        let (api, store) = (RuntimeApi::new(), MemStore::new());
        assert_eq!(
            run(&api, &store, "get map /etc/haproxy/node-master.map n1"),
            "type=str, case=sensitive, found=yes, idx=tree, key=\"n1\", value=\"master1\", type=\"str\"\n\n"
        );
        assert_eq!(
            run(&api, &store, "set map #0 n1 master3"),
            "\n",
            "silent success + empty line"
        );
        assert_eq!(store.value("nodes", "n1").as_deref(), Some("master3"));
        assert_eq!(
            run(&api, &store, "set map nodes n9 master1"),
            "entry not found.\n\n"
        );
        assert_eq!(
            run(&api, &store, "add map nodes n9 master1; del map nodes n2"),
            "\n\n",
            "two answers"
        );
        assert_eq!(store.value("nodes", "n9").as_deref(), Some("master1"));
        assert_eq!(store.value("nodes", "n2"), None, "deleted");
        assert_eq!(run(&api, &store, "del map nodes n2"), "Key not found.\n\n");
        assert_eq!(
            run(&api, &store, "get map nodes n2"),
            "type=str, case=sensitive, found=no\n\n"
        );
        assert_eq!(
            run(&api, &store, "get map nope n2"),
            format!("{UNKNOWN_MAP}\n\n")
        );
    }

    #[test]
    fn set_to_unknown_server_is_refused_and_map_unchanged() {
        let (api, store) = (RuntimeApi::new(), MemStore::new());
        let out = run(&api, &store, "set map nodes n1 master9");
        assert!(out.contains("master9"), "store's reason is shown: {out}");
        assert_eq!(
            store.value("nodes", "n1").as_deref(),
            Some("master1"),
            "unchanged"
        );
    }

    #[test]
    fn show_lists_maps_and_dumps_sorted_entries() {
        let (api, store) = (RuntimeApi::new(), MemStore::new());
        let list = run(&api, &store, "show map");
        assert!(
            list.starts_with(
                "# id (file) description\n0 (/etc/haproxy/node-master.map) map 'nodes'"
            ),
            "{list}"
        );
        assert!(list.contains("\n1 (other) map 'other'"), "{list}");
        assert_eq!(
            run(&api, &store, "show map nodes"),
            "0x000000000001 n1 master1\n0x000000000002 n2 master2\n\n"
        );
    }

    #[test]
    fn prepare_add_commit_swaps_whole_map_once() {
        let (api, store) = (RuntimeApi::new(), MemStore::new());
        let out = run(&api, &store, "prepare map nodes");
        assert_eq!(
            out, "New version created: 2\n\n",
            "next after live version 1"
        );
        let out = api
            .handle_line("add map @2 nodes", Some("a master1\nb master2\n"), &*store)
            .output;
        assert_eq!(out, "\n", "payload add");
        run(&api, &store, "add map @2 nodes c master3");
        assert_eq!(store.value("nodes", "a"), None, "staged only");
        assert!(
            run(&api, &store, "show map @2 nodes").contains(" c master3\n"),
            "staged dump"
        );
        assert_eq!(
            run(&api, &store, "add map @7 nodes x master1"),
            "Version number in the future, please use 'prepare map' before.\n\n"
        );
        assert_eq!(run(&api, &store, "commit map @2 nodes"), "\n");
        let t = store.get("nodes").unwrap();
        assert_eq!(t.len(), 3, "whole map replaced");
        assert_eq!(t.source, MapSource::RuntimeApi);
        assert_eq!(
            run(&api, &store, "commit map @2 nodes"),
            "Version number out of range.\n\n",
            "consumed"
        );
    }

    #[test]
    fn failed_commit_keeps_staged_version_and_clear_at_version_empties_it() {
        let (api, store) = (RuntimeApi::new(), MemStore::new());
        run(&api, &store, "prepare map nodes");
        run(&api, &store, "add map @2 nodes a master9");
        assert!(
            run(&api, &store, "commit map @2 nodes").contains("master9"),
            "refused"
        );
        assert_eq!(
            run(&api, &store, "clear map @2 nodes"),
            "\n",
            "still staged"
        );
        assert_eq!(run(&api, &store, "commit map @2 nodes"), "\n");
        assert!(
            store.get("nodes").unwrap().is_empty(),
            "empty map committed"
        );
    }

    #[test]
    fn prepared_versions_are_bounded() {
        let (api, store) = (RuntimeApi::new(), MemStore::new());
        for _ in 0..MAX_STAGED_VERSIONS + 5 {
            run(&api, &store, "prepare map other");
        }
        assert_eq!(
            api.staging.lock().versions.len(),
            MAX_STAGED_VERSIONS,
            "oldest evicted"
        );
        assert_eq!(
            run(&api, &store, "clear map @1 other"),
            "Version number out of range.\n\n"
        );
    }

    async fn ask(path: &Path, input: &str) -> String {
        let mut s = UnixStream::connect(path).await.unwrap();
        s.write_all(input.as_bytes()).await.unwrap();
        s.shutdown().await.unwrap(); // like socat at the end of stdin
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
            .await
            .unwrap()
            .unwrap();
        out
    }

    #[tokio::test]
    async fn serve_unix_refuses_to_remove_a_regular_file() {
        let dir = std::env::temp_dir().join(format!("maps-rf-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fg.sock");
        std::fs::write(&path, "not a socket").unwrap();
        let (_tx, rx) = watch::channel(false);
        let store: Arc<dyn MapStore> = MemStore::new();
        let task = tokio::spawn(serve_unix(
            path.clone(),
            Arc::new(RuntimeApi::new()),
            store,
            rx,
        ));
        let err = task.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "not a socket",
            "file untouched"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn socket_answers_socat_style_commands_and_prompt_mode() {
        let dir = std::env::temp_dir().join(format!("maps-rt-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fg.sock");
        // A stale socket file from a dead process is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let store = MemStore::new();
        let (stop_tx, stop_rx) = watch::channel(false);
        let sock = bind_unix(&path).await.unwrap();
        assert!(
            bind_unix(&path).await.is_err(),
            "a live socket is not stolen"
        );
        let server = tokio::spawn(serve(
            sock,
            Arc::new(RuntimeApi::new()),
            store.clone(),
            stop_rx,
        ));

        assert_eq!(
            ask(&path, "set map /etc/haproxy/node-master.map n1 master2\n").await,
            "\n"
        );
        assert_eq!(
            store.value("nodes", "n1").as_deref(),
            Some("master2"),
            "changed via socket"
        );
        let out = ask(&path, "get map nodes n1").await;
        assert!(
            out.contains("value=\"master2\""),
            "answer without trailing newline in request: {out}"
        );
        let out = ask(
            &path,
            "prepare map nodes\nadd map @3 nodes <<\nz master1\n\n",
        )
        .await;
        assert_eq!(
            out, "New version created: 3\n\n",
            "non-interactive answers one line then closes"
        );
        let out = ask(&path, "prompt\nprepare map nodes\nadd map @4 nodes <<\nz master1\n\ncommit map @4 nodes\nquit\n").await;
        assert_eq!(
            out, "\n> New version created: 4\n\n> \n> \n> ",
            "interactive mode with prompts"
        );
        assert_eq!(store.value("nodes", "z").as_deref(), Some("master1"));
        assert_eq!(
            store.get("nodes").unwrap().len(),
            1,
            "payload commit replaced the map"
        );
        let out = ask(&path, "bogus\n").await;
        assert!(out.starts_with("Unknown command, but maybe"), "{out}");

        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
        assert!(!path.exists(), "socket file removed on shutdown");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
