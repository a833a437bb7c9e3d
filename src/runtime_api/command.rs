//! What a Runtime API command is ([`Command`] and the server references it carries) and the
//! help list: the words both the parser and the command handlers share, importing neither.

use std::fmt::Write as _;

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
    /// `show stat [<upstream>|<iid> <type> <sid>]`: CSV, one line per upstream and server.
    ShowStat { filter: StatFilter },
    /// `show servers state [<upstream>]`.
    ShowServersState { upstream: Option<String> },
    /// `disable server <upstream>/<server>`: no new request; those in flight finish.
    DisableServer { target: ServerRef },
    /// `enable server <upstream>/<server>`.
    EnableServer { target: ServerRef },
    /// `set server <upstream>/<server> weight <w>` or `set weight <upstream>/<server> <w>`;
    /// `<w>` is `N` or `N%` of the configured weight.
    SetWeight { target: ServerRef, weight: String },
    /// `get weight <upstream>/<server>`.
    GetWeight { target: ServerRef },
    /// `set server <upstream>/<server> state ready|drain|maint`.
    SetState {
        target: ServerRef,
        state: crate::upstream::runtime::AdminState,
    },
}

impl Command {
    /// Whether this command acts on upstream servers (not maps).
    pub fn is_server_command(&self) -> bool {
        matches!(
            self,
            Command::ShowStat { .. }
                | Command::ShowServersState { .. }
                | Command::DisableServer { .. }
                | Command::EnableServer { .. }
                | Command::SetWeight { .. }
                | Command::GetWeight { .. }
                | Command::SetState { .. }
        )
    }
}

/// `<upstream>/<server>` as typed; the server is a name or `ip:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRef {
    pub upstream: String,
    pub server: String,
}

/// Which lines `show stat` prints: `show stat [<proxy>|<iid>|-1 [<type> [<sid>]]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatFilter {
    /// An upstream name or `iid`; `None` (or `-1`) for all.
    pub proxy: Option<String>,
    /// Bit mask: 2 = BACKEND lines, 4 = server lines (1, frontends, has no lines here);
    /// `-1` for all.
    pub types: i32,
    /// A server id (position + 1), or `-1` for all.
    pub sid: i32,
}

impl Default for StatFilter {
    fn default() -> Self {
        StatFilter {
            proxy: None,
            types: -1,
            sid: -1,
        }
    }
}

pub(super) const HELP_SERVERS: &[(&str, &str)] = &[
    (
        "show stat [<upstream> [<type> <sid>]]",
        "report counters for each upstream and server (CSV)",
    ),
    (
        "show servers state [<upstream>]",
        "dump the state of the servers",
    ),
    (
        "disable server <upstream>/<server>",
        "stop sending new requests to a server (drain)",
    ),
    (
        "enable server <upstream>/<server>",
        "let a disabled server take requests again",
    ),
    (
        "set server <upstream>/<server> weight <w>[%]",
        "change a server's weight (0-256)",
    ),
    (
        "set server <upstream>/<server> state <s>",
        "ready, drain (no balanced request) or maint (none)",
    ),
    (
        "set weight <upstream>/<server> <w>[%]",
        "change a server's weight (0-256)",
    ),
    (
        "get weight <upstream>/<server>",
        "report a server's current and configured weight",
    ),
];

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

pub(super) fn help_list(header: &str) -> String {
    let mut out = format!("{header}\n");
    for (cmd, what) in HELP.iter().chain(HELP_SERVERS) {
        let _ = writeln!(out, "  {cmd:<40}: {what}");
    }
    out.pop();
    out
}
