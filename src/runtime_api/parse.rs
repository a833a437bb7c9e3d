//! Runtime API command lines: `;`-separated commands of words, `\\` escapes, the `<<`
//! payload of `add map`, and HAProxy's error answers and help list.

use super::command::{help_list, Command};
use super::servers::parse_server_words;

/// Splits a line into commands (`;`) of words (whitespace); `\` escapes the
/// next character.
pub(super) fn split_line(line: &str) -> Vec<Vec<String>> {
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
pub(super) fn parse_words(w: &[String], payload: Option<&str>) -> Result<Command, String> {
    let arg = |i: usize| w.get(i).map(String::as_str).unwrap_or("");
    let (verb, noun) = (arg(0), arg(1));
    if let Some(server_command) = parse_server_words(w) {
        return server_command;
    }
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

fn unknown_command(words: &[String]) -> String {
    if words.is_empty() {
        help_list("Unknown command. Please enter one of the following commands only:")
    } else {
        help_list("Unknown command, but maybe one of the following ones is a better match:")
    }
}
