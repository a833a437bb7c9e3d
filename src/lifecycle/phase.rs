//! The lifecycle phase: a leaf (it imports nothing of the crate), so the state, the shutdown
//! sequence, the listeners and the admin API can all name it without importing each other.
//! The current phase lives on a `tokio::sync::watch` channel in `AppState`; tests wait on its
//! changes instead of sleeping.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Config loaded, first health round not finished: not ready.
    Starting,
    Running,
    /// The sockets were handed to a new process; both serve until the overlap ends.
    Upgrading,
    /// Readiness answers 503; requests are still served and the listeners still accept.
    Draining,
    /// The listeners stopped accepting; in-flight requests finish and their connections close.
    Closing,
    /// The process is about to exit.
    Stopping,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Starting,
        Phase::Running,
        Phase::Upgrading,
        Phase::Draining,
        Phase::Closing,
        Phase::Stopping,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Upgrading => "upgrading",
            Phase::Draining => "draining",
            Phase::Closing => "closing",
            Phase::Stopping => "stopping",
        }
    }

    /// `/readyz` answers 200: running, or serving beside the new process during an upgrade.
    pub fn is_ready(self) -> bool {
        matches!(self, Phase::Running | Phase::Upgrading)
    }

    /// Responses ask the client to close the connection (the listeners no longer accept).
    pub fn closes_connections(self) -> bool {
        matches!(self, Phase::Closing | Phase::Stopping)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_and_connection_closing_follow_the_phase() {
        let ready: Vec<&str> = Phase::ALL
            .iter()
            .filter(|p| p.is_ready())
            .map(|p| p.as_str())
            .collect();
        assert_eq!(ready, ["running", "upgrading"]);
        let closing: Vec<&str> = Phase::ALL
            .iter()
            .filter(|p| p.closes_connections())
            .map(|p| p.as_str())
            .collect();
        assert_eq!(closing, ["closing", "stopping"]);
    }
}
