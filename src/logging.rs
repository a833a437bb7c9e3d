//! The one logging path: every record of the `log` facade (ours and Pingora's) goes through
//! env_logger with the format below, one line per record on stderr; `RUST_LOG` filters.
//!
//! - Process logs: `[TIME LEVEL target] message` (`server.log_format: text`, the default) or
//!   one JSON object `{"time","level","target","message"}` per line (`json`).
//! - Access logs (target `access`): the line as `access_log.format` renders it, with nothing
//!   around it, so a JSON access log is pure JSON lines and a combined one is Apache's format.
//! - A message spanning lines (a reload refused with several errors, a Lua traceback) stays
//!   one record: in text its line breaks are written as `\n`; in JSON they are escaped inside
//!   the string.
//!
//! The format is a process setting read from the config at start (`app::prepare`); until then
//! (and for `check`/`convert`) it is text.

use crate::config::ProcessLogFormat;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// The log target of access-log lines.
pub const ACCESS_TARGET: &str = "access";

// why: the `log` facade is process-global, so its format switch is too; it is set once at
// start (and by in-process tests, where no logger is installed and it changes nothing)
static JSON: AtomicBool = AtomicBool::new(false);

/// Installs the logger (text until [`set_format`]); default filter `info`, Pingora at `warn`.
pub fn init() {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,pingora_core=warn,pingora_proxy=warn"),
    )
    .format(|buf, record| {
        let line = render(
            JSON.load(Ordering::Relaxed),
            std::time::SystemTime::now(),
            record.level(),
            record.target(),
            &record.args().to_string(),
        );
        writeln!(buf, "{line}")
    })
    .init();
}

/// Switches process logs to `format` (access lines are unaffected).
pub fn set_format(format: ProcessLogFormat) {
    JSON.store(format == ProcessLogFormat::Json, Ordering::Relaxed);
}

/// One record as one line (without the line break).
pub fn render(
    json: bool,
    time: std::time::SystemTime,
    level: log::Level,
    target: &str,
    message: &str,
) -> String {
    if target == ACCESS_TARGET {
        return one_line(message);
    }
    let time = humantime::format_rfc3339_millis(time).to_string();
    if json {
        serde_json::json!({
            "time": time,
            "level": level.as_str(),
            "target": target,
            "message": message.trim_end(),
        })
        .to_string()
    } else {
        format!("[{time} {level:<5} {target}] {}", one_line(message))
    }
}

/// `message` with line breaks written as `\n` (and `\r` dropped), trailing ones removed.
fn one_line(message: &str) -> String {
    let m = message.trim_end_matches(['\n', '\r']);
    if !m.contains(['\n', '\r']) {
        return m.to_string();
    }
    m.replace('\r', "").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn t() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_500)
    }

    #[test]
    fn a_multi_line_message_is_one_text_line() {
        let line = render(
            false,
            t(),
            log::Level::Error,
            "floodgate::reload",
            "reload refused, keeping version 3:\nf.yaml:2: a\r\nf.yaml:5: b\n",
        );
        assert_eq!(
            line,
            "[1970-01-01T00:00:01.500Z ERROR floodgate::reload] reload refused, keeping version 3:\\nf.yaml:2: a\\nf.yaml:5: b"
        );
    }

    #[test]
    fn a_json_record_is_one_object_that_keeps_the_line_breaks() {
        let line = render(true, t(), log::Level::Warn, "floodgate::health", "x\ny\n");
        assert!(!line.contains('\n'), "one line: {line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["target"], "floodgate::health");
        assert_eq!(v["message"], "x\ny");
        assert_eq!(v["time"], "1970-01-01T00:00:01.500Z");
    }

    #[test]
    fn access_lines_are_written_bare_in_both_formats() {
        for json in [false, true] {
            assert_eq!(
                render(json, t(), log::Level::Info, "access", "{\"status\":200}"),
                "{\"status\":200}"
            );
        }
    }
}
