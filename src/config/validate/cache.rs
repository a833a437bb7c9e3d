//! `cache:`: the memory bound, the wait for another request's fetch, and the shared tier.

use super::Validator;
use crate::config::spec::*;
use crate::config::types::*;

impl Validator {
    pub(super) fn cache(&mut self, s: &ConfigSpec) -> CacheConfig {
        let cs = s.cache.clone().unwrap_or_default();
        CacheConfig {
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
        }
    }
}
