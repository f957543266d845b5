//! Writing edgepin's own answers ([`LocalAnswer`], built once for every engine) on
//! pingora's HTTP/2 sessions.

use bytes::Bytes;
use pingora::Result;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use super::local_answer::LocalAnswer;

/// Write `answer` as the whole response.
pub async fn send(session: &mut Session, answer: &LocalAnswer<'_>) -> Result<()> {
    let mut resp = ResponseHeader::build(answer.status, Some(4))?;
    resp.insert_header("content-type", answer.content_type)?;
    resp.insert_header("content-length", answer.body.len().to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    if let Some((name, value)) = &answer.field {
        resp.insert_header(*name, value.as_ref())?;
    }
    session
        .write_response_header(Box::new(resp), answer.body.is_empty())
        .await?;
    if !answer.body.is_empty() {
        session
            .write_response_body(Some(Bytes::copy_from_slice(answer.body.as_bytes())), true)
            .await?;
    }
    Ok(())
}
