//! Why a request could not be proxied, and the ONE function that turns that into an HTTP answer.
//!
//! Every local refusal (no route, queue full, no healthy server, policy deny...) and every
//! upstream failure (refused, timed out) ends up in [`failure_response`], so status codes,
//! `Retry-After` and bodies stay consistent across the gateway and its access log.

use std::time::Duration;

/// What went wrong, as decided by floodgate (not by the upstream).
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    NoRoute,
    /// The route's map lookup missed and `on_miss: reject`.
    MapMiss {
        status: u16,
    },
    QueueFull {
        retry_after: Duration,
        body: String,
    },
    QueueTimeout {
        retry_after: Duration,
        body: String,
    },
    FailFast {
        retry_after: Duration,
        body: String,
    },
    /// No server of the upstream is healthy (or the pinned one is down with redispatch off).
    NoHealthyServer {
        retry_after: Duration,
    },
    /// Could not connect to any server (after retries).
    UpstreamUnreachable,
    UpstreamTimeout,
    /// The upstream answered something unusable.
    UpstreamProtocol,
    PolicyDeny {
        status: u16,
        retry_after: Option<Duration>,
        body: Option<String>,
    },
    PolicyError {
        status: u16,
    },
    BadRequest,
    /// The client did not send its request body in time (`server.client_body_timeout`).
    ClientBodyTimeout,
    /// The request itself is malformed, ambiguous or over a listener limit (see
    /// [`crate::frontdoor`]).
    Refused(crate::frontdoor::refusal::Refusal),
    /// The gateway is shutting down and does not take new work.
    ShuttingDown,
}

impl Failure {
    /// Short machine-friendly name for logs and metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::NoRoute => "no_route",
            Failure::MapMiss { .. } => "map_miss",
            Failure::QueueFull { .. } => "queue_full",
            Failure::QueueTimeout { .. } => "queue_timeout",
            Failure::FailFast { .. } => "fail_fast",
            Failure::NoHealthyServer { .. } => "no_healthy_server",
            Failure::UpstreamUnreachable => "upstream_unreachable",
            Failure::UpstreamTimeout => "upstream_timeout",
            Failure::UpstreamProtocol => "upstream_protocol",
            Failure::PolicyDeny { .. } => "policy_deny",
            Failure::PolicyError { .. } => "policy_error",
            Failure::BadRequest => "bad_request",
            Failure::ClientBodyTimeout => "client_body_timeout",
            Failure::Refused(r) => r.reason(),
            Failure::ShuttingDown => "shutting_down",
        }
    }
}

/// A complete local answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorResponse {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub content_type: &'static str,
    pub body: String,
}

fn secs(d: Duration) -> u64 {
    d.as_secs().max(1)
}

/// The one mapping from a failure to what the client receives.
pub fn failure_response(f: &Failure, request_id: &str) -> ErrorResponse {
    let text = |status: u16, msg: &str| ErrorResponse {
        status,
        retry_after: None,
        content_type: "text/plain; charset=utf-8",
        body: format!("{status} {msg}\nrequest-id: {request_id}\n"),
    };
    let busy = |status: u16, ra: Duration, body: &str| ErrorResponse {
        status,
        retry_after: Some(secs(ra)),
        content_type: if body.trim_start().starts_with('{') {
            "application/json"
        } else {
            "text/plain; charset=utf-8"
        },
        body: body.to_string(),
    };
    match f {
        Failure::NoRoute => text(404, "no route matches this request"),
        Failure::MapMiss { status } => text(*status, "no server is mapped for this request"),
        Failure::QueueFull { retry_after, body } => busy(503, *retry_after, body),
        Failure::QueueTimeout { retry_after, body } => busy(503, *retry_after, body),
        Failure::FailFast { retry_after, body } => busy(503, *retry_after, body),
        Failure::NoHealthyServer { retry_after } => {
            let mut r = text(503, "no healthy server can take this request");
            r.retry_after = Some(secs(*retry_after));
            r
        }
        Failure::UpstreamUnreachable => text(502, "the upstream server could not be reached"),
        Failure::UpstreamTimeout => text(504, "the upstream server did not answer in time"),
        Failure::UpstreamProtocol => text(502, "the upstream server sent an invalid response"),
        Failure::PolicyDeny {
            status,
            retry_after,
            body,
        } => {
            let mut r = match body {
                Some(b) => ErrorResponse {
                    status: *status,
                    retry_after: None,
                    content_type: if b.trim_start().starts_with('{') {
                        "application/json"
                    } else {
                        "text/plain; charset=utf-8"
                    },
                    body: b.clone(),
                },
                None => text(*status, "denied by policy"),
            };
            r.retry_after = retry_after.map(secs);
            r
        }
        Failure::PolicyError { status } => text(*status, "the request policy failed"),
        Failure::BadRequest => text(400, "bad request"),
        Failure::ClientBodyTimeout => text(408, "the request body did not arrive in time"),
        Failure::Refused(r) => {
            use crate::frontdoor::refusal::Refusal::*;
            let status = match r {
                HeaderTimeout => 408,
                RequestLineTooLong => 414,
                HeaderTooLarge | TooManyHeaders => 431,
                ConnectMethod => 405,
                TransferEncodingUnsupported => 501,
                HttpVersion => 505,
                _ => 400,
            };
            text(status, r.message())
        }
        Failure::ShuttingDown => {
            let mut r = text(503, "the gateway is shutting down");
            r.retry_after = Some(1);
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_rejections_carry_retry_after_and_the_configured_body() {
        let r = failure_response(
            &Failure::QueueFull {
                retry_after: Duration::from_secs(30),
                body: "{\"displayMessage\": \"busy\"}".into(),
            },
            "rid",
        );
        assert_eq!(r.status, 503);
        assert_eq!(r.retry_after, Some(30));
        assert_eq!(r.content_type, "application/json");
    }

    #[test]
    fn upstream_failures_map_to_502_and_504_with_request_id() {
        let r = failure_response(&Failure::UpstreamUnreachable, "abc");
        assert_eq!(r.status, 502);
        assert!(
            r.body.contains("abc"),
            "body names the request id: {}",
            r.body
        );
        assert_eq!(failure_response(&Failure::UpstreamTimeout, "x").status, 504);
        assert_eq!(failure_response(&Failure::NoRoute, "x").status, 404);
    }

    #[test]
    fn refusals_map_to_their_rfc_statuses() {
        use crate::frontdoor::refusal::Refusal;
        let s = |r| failure_response(&Failure::Refused(r), "-").status;
        assert_eq!(s(Refusal::LengthAndChunked), 400);
        assert_eq!(s(Refusal::HeaderTimeout), 408);
        assert_eq!(s(Refusal::RequestLineTooLong), 414);
        assert_eq!(s(Refusal::HeaderTooLarge), 431);
        assert_eq!(s(Refusal::TooManyHeaders), 431);
        assert_eq!(s(Refusal::TransferEncodingUnsupported), 501);
        assert_eq!(s(Refusal::HttpVersion), 505);
        assert_eq!(s(Refusal::ConnectMethod), 405);
        for r in Refusal::ALL {
            assert!((400..=505).contains(&s(r)), "{r:?}");
        }
    }
}
