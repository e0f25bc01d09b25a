//! The faults the simulator can inject, per instance: every way the real API has been seen to
//! misbehave, from throttling to half-written bodies.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::data::{self, SimSession};
use super::error_response;

/// One fault. In config files and on `PUT /_sim/faults/{instance}` it is written as JSON/TOML with
/// a `kind` tag, e.g. `{"kind": "throttling_user", "retry_after_ms": 2000}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// `Throttling.User`, HTTP 400, optionally with `x-acs-retry-after`.
    ThrottlingUser { retry_after_ms: Option<u64> },
    /// `Throttling.Api`, HTTP 400.
    ThrottlingApi { retry_after_ms: Option<u64> },
    /// `ServiceUnavailable`, HTTP 503.
    ServiceUnavailable,
    /// `InternalError`, HTTP 500.
    InternalError,
    /// `SignatureDoesNotMatch`, as if the key were wrong; the message echoes the request's string
    /// to sign (key id and `SecurityToken` included), as the real gateway's does.
    SignatureDoesNotMatch,
    /// `InvalidTimeStamp.Expired`, as if the clock were off.
    InvalidTimestampExpired,
    /// `NoPermission`, HTTP 403.
    NoPermission,
    /// `InvalidParams`, HTTP 400.
    InvalidParams,
    /// A 5xx with an HTML page, as a load balancer sends.
    HtmlError { status: u16 },
    /// A normal answer, after `delay_ms`.
    Slow { delay_ms: u64 },
    /// No answer at all until the instance's fault is cleared or replaced; then the answer the
    /// instance gets at that moment. Lets a test hold a request in flight for exactly as long
    /// as it needs (a state to wait for, not a delay to guess).
    Hold,
    /// Headers and half the body, then silence.
    StallMidBody,
    /// Headers and part of the body, then the connection is cut.
    ResetMidBody,
    /// The connection is cut after the request is read, before a single byte of the answer
    /// (what a crashed or restarting gateway does: the client sees a reset, not a status).
    ResetBeforeResponse,
    /// A normal answer cut in the middle.
    TruncatedJson,
    /// Valid JSON that is not a GetRedisAllSession answer.
    WrongShape,
    /// HTTP 200 with `Success: false`.
    SuccessFalse,
    /// HTTP 200 with `Data: null`.
    DataNull,
    /// A valid answer padded to `bytes`; with `chunked`, streamed in 64 KiB chunks without a
    /// `content-length`, so only a cap enforced while reading can stop it.
    Oversized {
        bytes: u64,
        #[serde(default)]
        chunked: bool,
    },
    /// `Total` larger than the list of sessions.
    TotalMismatch { extra: u64 },
    /// `fault` on every `every`-th request, a normal answer otherwise.
    Every { every: u64, fault: Box<Fault> },
}

impl Fault {
    /// The fault to apply to request number `n` (0-based) of its instance, if any.
    pub fn resolve(self, n: u64) -> Option<Fault> {
        match self {
            Fault::Every { every, fault } => {
                (every > 0 && n % every == every - 1).then_some(*fault)
            }
            f => Some(f),
        }
    }

    /// A short label for statistics.
    pub fn label(&self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_owned))
            .unwrap_or_else(|| "fault".into())
    }

    /// The response for this fault. `string_to_sign` is the request's, for the faults whose
    /// real counterpart echoes it.
    pub async fn respond(
        self,
        sessions: &[SimSession],
        request_id: &str,
        string_to_sign: &str,
    ) -> Response {
        let normal = || data::answer(sessions, sessions.len() as u64, super::now_ms(), request_id);
        let json = |status: StatusCode, body: Vec<u8>| {
            (
                status,
                [("content-type", "application/json;charset=utf-8")],
                Body::from(body),
            )
                .into_response()
        };
        match self {
            Fault::ThrottlingUser { retry_after_ms } | Fault::ThrottlingApi { retry_after_ms } => {
                let code = if matches!(self, Fault::ThrottlingUser { .. }) {
                    "Throttling.User"
                } else {
                    "Throttling.Api"
                };
                let mut r = error_response(StatusCode::BAD_REQUEST, code, "Request was denied due to flow control.");
                if let Some(ms) = retry_after_ms {
                    r.headers_mut().insert("x-acs-retry-after", ms.into());
                }
                r
            }
            Fault::ServiceUnavailable => error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "The request has failed due to a temporary failure of the server.",
            ),
            Fault::InternalError => error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "The request processing has failed due to some unknown error.",
            ),
            Fault::SignatureDoesNotMatch => super::signature_mismatch(string_to_sign),
            Fault::InvalidTimestampExpired => error_response(
                StatusCode::BAD_REQUEST,
                "InvalidTimeStamp.Expired",
                "Specified time stamp or date value is expired.",
            ),
            Fault::NoPermission => error_response(
                StatusCode::FORBIDDEN,
                "NoPermission",
                "You are not authorized to do this action.",
            ),
            Fault::InvalidParams => error_response(
                StatusCode::BAD_REQUEST,
                "InvalidParams",
                "The request parameters are invalid.",
            ),
            Fault::HtmlError { status } => (
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                [("content-type", "text/html")],
                "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center><hr><center>Tengine</center></body></html>",
            )
                .into_response(),
            // Held in the request handler, which alone sees the fault change; once released it
            // is answered normally.
            Fault::Hold => json(StatusCode::OK, normal()),
            Fault::Slow { delay_ms } => {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                json(StatusCode::OK, normal())
            }
            Fault::StallMidBody | Fault::ResetMidBody => {
                let body = normal();
                let half = Bytes::copy_from_slice(&body[..body.len() / 2]);
                let stall = matches!(self, Fault::StallMidBody);
                let stream = futures_util::stream::unfold(0u8, move |step| {
                    let half = half.clone();
                    async move {
                        match step {
                            0 => Some((Ok::<Bytes, std::io::Error>(half), 1)),
                            _ if stall => {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                                None
                            }
                            1 => Some((Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "cut")), 2)),
                            _ => None,
                        }
                    }
                });
                // A content-length larger than what is sent makes the cut unambiguous.
                let mut r = json(StatusCode::OK, Vec::new());
                *r.body_mut() = Body::from_stream(stream);
                r.headers_mut().insert("content-length", body.len().into());
                r
            }
            Fault::ResetBeforeResponse => {
                // The body fails before its first chunk: hyper then drops the connection without
                // flushing the status line it had only buffered, so not one byte reaches the client.
                let stream = futures_util::stream::once(async {
                    Err::<Bytes, _>(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "reset before the answer",
                    ))
                });
                let mut r = json(StatusCode::OK, Vec::new());
                *r.body_mut() = Body::from_stream(stream);
                r.headers_mut().insert("content-length", 1000.into());
                r
            }
            Fault::TruncatedJson => {
                let body = normal();
                json(StatusCode::OK, body[..body.len() * 2 / 3].to_vec())
            }
            Fault::WrongShape => json(
                StatusCode::OK,
                br#"{"RequestId":"X","Items":{"Item":[{"Name":"not a session answer"}]},"PageNumber":1}"#.to_vec(),
            ),
            Fault::SuccessFalse => json(
                StatusCode::OK,
                format!(r#"{{"Code":200,"Success":false,"Message":"Internal processing failed","RequestId":"{request_id}","Data":null}}"#).into_bytes(),
            ),
            Fault::DataNull => json(
                StatusCode::OK,
                format!(r#"{{"Code":200,"Success":true,"Message":"Successful","RequestId":"{request_id}","Data":null}}"#).into_bytes(),
            ),
            Fault::Oversized { bytes, chunked } => {
                let mut body = normal();
                // Pad inside the object with an ignored field, so the JSON itself stays valid.
                body.pop();
                let pad = (bytes as usize).saturating_sub(body.len() + 16);
                body.extend_from_slice(b",\"Padding\":\"");
                body.resize(body.len() + pad, b'x');
                body.extend_from_slice(b"\"}");
                if !chunked {
                    return json(StatusCode::OK, body);
                }
                let chunks: Vec<Result<Bytes, std::io::Error>> = body
                    .chunks(64 * 1024)
                    .map(|c| Ok(Bytes::copy_from_slice(c)))
                    .collect();
                let mut r = json(StatusCode::OK, Vec::new());
                *r.body_mut() = Body::from_stream(futures_util::stream::iter(chunks));
                r.headers_mut().remove("content-length");
                r
            }
            Fault::TotalMismatch { extra } => json(
                StatusCode::OK,
                data::answer(sessions, sessions.len() as u64 + extra, super::now_ms(), request_id),
            ),
            Fault::Every { fault, .. } => {
                Box::pin(fault.respond(sessions, request_id, string_to_sign)).await
            }
        }
    }
}
