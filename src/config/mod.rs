//! Configuration: the YAML file (`spec`), its validation (`validate`, a file per section) into
//! the runtime types (`types`), and
//! the small parsers for durations and sizes that error messages refer to.

mod locate;
pub mod spec;
pub mod types;
mod validate;

pub use types::*;
pub use validate::{load_config, parse_config};

use std::fmt;
use std::time::Duration;

/// One problem in a configuration: where (key path), what was found, and how to fix it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: String,
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.path, self.message)
        }
    }
}

/// All the problems found in one configuration; `check` prints each on its own line.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// True when some error's key path starts with `path` (used by tests and the reload report).
    pub fn mentions(&self, path: &str) -> bool {
        self.0.iter().any(|e| e.path.starts_with(path))
    }
}

/// How long a client may take to send a request body: `base`, plus one second per
/// `min_rate` bytes received so far (Apache mod_reqtimeout's `body=20,MinRate=500`), so a
/// large upload at a sane rate passes and a body trickled at 1 byte/s does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyTimeout {
    pub base: Duration,
    /// Bytes per second; 0 = no extension.
    pub min_rate: u64,
}

impl BodyTimeout {
    /// The total time allowed once `received` bytes have arrived.
    pub fn allowed(&self, received: u64) -> Duration {
        match received.checked_div(self.min_rate) {
            Some(extra) => self.base + Duration::from_secs(extra),
            None => self.base,
        }
    }
}

/// Parses `250ms`, `5s`, `2m`, `1h30m` (humantime).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("{s:?} is not a duration ({e}); write a number with a unit, e.g. \"5s\", \"250ms\", \"2m\"")
    })
}

/// Parses `512`, `64KiB`, `256MiB`, `1GiB` (also KB/MB/GB as powers of 1000).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("{s:?} is not a size; write a whole number with an optional unit, e.g. \"256MiB\"")
    })?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "{s:?} has an unknown size unit {other:?}; use B, KiB, MiB or GiB (e.g. \"256MiB\")"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_allowance_grows_with_the_bytes_received() {
        let t = BodyTimeout {
            base: Duration::from_secs(20),
            min_rate: 500,
        };
        assert_eq!(t.allowed(0), Duration::from_secs(20));
        assert_eq!(t.allowed(5_000), Duration::from_secs(30));
        let flat = BodyTimeout { min_rate: 0, ..t };
        assert_eq!(flat.allowed(1 << 30), Duration::from_secs(20));
    }

    #[test]
    fn sizes_and_durations_parse_with_units() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("10"), Ok(10));
        assert!(parse_size("12 parsecs").is_err());
        assert_eq!(parse_duration("170s"), Ok(Duration::from_secs(170)));
        assert!(parse_duration("5").is_err(), "a bare number has no unit");
    }
}
