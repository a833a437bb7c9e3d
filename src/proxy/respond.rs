//! Writing local answers (errors, health reports, cache hits) without dropping keep-alive.

use super::ctx::Ctx;
use crate::error::{failure_response, Failure};
use bytes::Bytes;
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// Writes a complete response. Unlike `Session::respond_error`, this keeps the downstream
/// connection reusable (queue rejections and cache hits must not cost the client a new
/// connection). The listener's and route's response rules apply (Apache `Header always`).
pub async fn write_local(
    session: &mut Session,
    ctx: &Ctx,
    status: u16,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(headers.len() + 2))?;
    for (k, v) in headers {
        resp.append_header(k.to_string(), *v)?;
    }
    resp.insert_header("content-length", body.len().to_string())?;
    super::headers::response_rules(session, ctx, &mut resp);
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
pub async fn write_failure(session: &mut Session, ctx: &Ctx, f: &Failure) -> Result<u16> {
    let request_id = ctx.request_id.as_str();
    let r = failure_response(f, request_id);
    let ra = r.retry_after.map(|s| s.to_string());
    let mut headers: Vec<(&str, &str)> = vec![
        ("content-type", r.content_type),
        ("x-request-id", request_id),
    ];
    if let Some(ra) = ra.as_deref() {
        headers.push(("retry-after", ra));
    }
    write_local(session, ctx, r.status, &headers, Bytes::from(r.body)).await?;
    Ok(r.status)
}

/// Answers a route's local answer (`respond:` / `redirect:`); no upstream is involved.
pub async fn write_answer(
    session: &mut Session,
    ctx: &Ctx,
    answer: &crate::rules::local::LocalAnswer,
) -> Result<()> {
    use crate::rules::local::LocalAnswer;
    match answer {
        LocalAnswer::Fixed {
            status,
            headers,
            body,
        } => {
            let mut hs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            if !body.is_empty()
                && !headers
                    .iter()
                    .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            {
                hs.push(("content-type", "text/plain; charset=utf-8"));
            }
            hs.push(("x-request-id", &ctx.request_id));
            write_local(session, ctx, *status, &hs, body.clone()).await
        }
        LocalAnswer::Redirect { status, .. } => {
            let f = super::headers::facts(session, ctx);
            let location = answer.location(&f).unwrap_or_default();
            let hs = [
                ("location", location.as_str()),
                ("x-request-id", ctx.request_id.as_str()),
            ];
            write_local(session, ctx, *status, &hs, Bytes::new()).await
        }
    }
}
