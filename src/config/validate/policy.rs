//! `policy:`: the Lua scripts, their budgets and what a failing script does to the request.

use super::{resolve, Validator};
use crate::config::spec::*;
use crate::config::types::*;
use std::path::Path;

impl Validator {
    pub(super) fn policy(&mut self, s: &ConfigSpec, base: &Path) -> Option<PolicyConfig> {
        let rel = |p: &str| resolve(base, p);
        s.policy.as_ref().map(|p| {
            if p.scripts.is_empty() {
                self.err(
                    "policy.scripts",
                    "the list is empty; name at least one .lua file or remove the policy section",
                );
            }
            let on_error = match &p.on_error {
                None => OnPolicyError::Continue,
                Some(serde_yaml::Value::String(s)) if s == "continue" => OnPolicyError::Continue,
                Some(serde_yaml::Value::Number(n))
                    if n.as_u64().is_some_and(|c| (400..600).contains(&c)) =>
                {
                    OnPolicyError::Status(n.as_u64().unwrap_or(503) as u16)
                }
                Some(o) => {
                    self.err(
                        "policy.on_error",
                        format!("{o:?} is not a choice; use continue or a status from 400 to 599"),
                    );
                    OnPolicyError::Continue
                }
            };
            PolicyConfig {
                scripts: p.scripts.iter().map(|s| rel(s)).collect(),
                budget: self.duration("policy.budget", p.budget.as_ref(), DEFAULT_POLICY_BUDGET),
                memory_limit: self.size(
                    "policy.memory_limit",
                    p.memory_limit.as_ref(),
                    DEFAULT_POLICY_MEMORY,
                ),
                on_error,
            }
        })
    }
}
