//! Reading a request's body within the limits: its size, the time it may take, and the
//! node's budget of bodies held at once.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Request;
use hyper::body::Body;
use hyper::header;

use crate::body_budget::{BodyBudget, HeldBody};
use crate::config::HttpConfig;
use crate::error::{ApiError, ErrorCode};
use crate::metrics::Limit;

/// The request's body, within `config`'s size and time limits, and its bytes held from
/// `bodies` (given back when the hold is dropped, once the request is answered).
pub(super) async fn read_body<B>(
    request: Request<B>,
    config: &HttpConfig,
    bodies: &Arc<BodyBudget>,
) -> Result<(Bytes, HeldBody), ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let limit = config.max_body_bytes;
    let too_large = || {
        ApiError::new(
            ErrorCode::BodyTooLarge,
            format!("the body is larger than {limit} bytes"),
        )
        .hit(Limit::BodySize)
    };
    let no_room = || {
        ApiError::new(
            ErrorCode::MemoryLimit,
            format!(
                "the request bodies this node is receiving fill http.max_body_bytes_in_flight ({} bytes)",
                bodies.max()
            ),
        )
        .hit(Limit::Bodies)
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    // Each chunk is held as it arrives: a declared length that never comes holds nothing,
    // so a client cannot take the budget without sending the bytes.
    let mut held = bodies.hold(0).ok_or_else(no_room)?;
    let mut body = std::pin::pin!(request.into_body());
    let read = async {
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut total = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::new(
                    ErrorCode::InvalidJson,
                    format!("could not read the body: {e}"),
                )
            })?;
            let Ok(chunk) = frame.into_data() else {
                continue; // trailers
            };
            total += chunk.len();
            if total > limit {
                return Err(too_large());
            }
            if !held.grow(chunk.len()) {
                return Err(no_room());
            }
            chunks.push(chunk);
        }
        Ok(match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.swap_remove(0),
            _ => {
                let mut all = Vec::with_capacity(total);
                for chunk in &chunks {
                    all.extend_from_slice(chunk);
                }
                Bytes::from(all)
            }
        })
    };
    let Ok(read) = tokio::time::timeout(config.body_read_timeout, read).await else {
        return Err(ApiError::new(
            ErrorCode::BodyTimeout,
            format!(
                "the body did not arrive within {} s",
                config.body_read_timeout.as_secs_f64()
            ),
        )
        .hit(Limit::BodyTime));
    };
    Ok((read?, held))
}
