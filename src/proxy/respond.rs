//! Writing local answers (errors, health reports, cache hits) without dropping keep-alive.

use crate::error::{failure_response, Failure};
use bytes::Bytes;
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// Writes a complete response. Unlike `Session::respond_error`, this keeps the downstream
/// connection reusable (queue rejections and cache hits must not cost the client a new
/// connection).
pub async fn write_local(
    session: &mut Session,
    status: u16,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(headers.len() + 2))?;
    for (k, v) in headers {
        resp.append_header(k.to_string(), *v)?;
    }
    resp.insert_header("content-length", body.len().to_string())?;
    let head = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head || body.is_empty())
        .await?;
    if !head && !body.is_empty() {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// Answers a failure through the one status mapping in [`crate::error`].
pub async fn write_failure(session: &mut Session, f: &Failure, request_id: &str) -> Result<u16> {
    let r = failure_response(f, request_id);
    let ra = r.retry_after.map(|s| s.to_string());
    let mut headers: Vec<(&str, &str)> = vec![
        ("content-type", r.content_type),
        ("x-request-id", request_id),
    ];
    if let Some(ra) = ra.as_deref() {
        headers.push(("retry-after", ra));
    }
    write_local(session, r.status, &headers, Bytes::from(r.body)).await?;
    Ok(r.status)
}
