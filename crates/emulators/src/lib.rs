//! HTTP emulators of the Halo and ServiceNow APIs, for tests and the demo. They check method,
//! path, authentication and body shape as `../shared/reference/` describes, keep every request
//! they receive, and answer like the real APIs.

pub mod halo;
pub mod halo_contract;
pub mod servicenow;
mod servicenow_model;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use serde::Serialize;

/// One request an emulator received, as it arrived.
#[derive(Debug, Clone, Serialize)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Lower-case header names.
    pub headers: BTreeMap<String, String>,
    pub body: String,
    /// What the emulator answered.
    pub status: u16,
}

impl RecordedRequest {
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.body).ok()
    }

    pub(crate) async fn read(request: Request<Body>) -> RecordedRequest {
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, 16 * 1024 * 1024)
            .await
            .unwrap_or_default();
        RecordedRequest {
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: String::from_utf8_lossy(&body).into_owned(),
            status: 0,
        }
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// Query parameters, decoded.
    pub(crate) fn query_pairs(&self) -> Vec<(String, String)> {
        form_pairs(self.query.as_deref().unwrap_or_default())
    }

    /// The first value of query parameter `name`, decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

/// Decodes `a=b&c=d` (form encoding: `+` is a space).
pub(crate) fn form_pairs(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (decode(k), decode(v))
        })
        .collect()
}

/// Whether a request is one a scheduled failure or fault is for: the same method, and a path
/// under its prefix (both compared case-insensitively).
fn matches(scheduled_method: &str, path_prefix: &str, method: &str, path: &str) -> bool {
    scheduled_method.eq_ignore_ascii_case(method)
        && path
            .to_ascii_lowercase()
            .starts_with(&path_prefix.to_ascii_lowercase())
}

/// A failure to answer instead of the normal handling (`fail_next`).
#[derive(Debug, Clone)]
pub(crate) struct InjectedFailure {
    pub method: String,
    pub path_prefix: String,
    pub status: u16,
    pub remaining: usize,
    pub retry_after: Option<u64>,
}

impl InjectedFailure {
    /// True when an error status is scheduled for this request (it goes before other faults).
    pub(crate) fn pending(failures: &[InjectedFailure], method: &str, path: &str) -> bool {
        failures
            .iter()
            .any(|f| f.remaining > 0 && matches(&f.method, &f.path_prefix, method, path))
    }

    /// Takes one failure matching the request, if any is left.
    pub(crate) fn take(
        failures: &mut [InjectedFailure],
        method: &str,
        path: &str,
    ) -> Option<(u16, Option<u64>)> {
        let failure = failures
            .iter_mut()
            .find(|f| f.remaining > 0 && matches(&f.method, &f.path_prefix, method, path))?;
        failure.remaining -= 1;
        Some((failure.status, failure.retry_after))
    }
}

/// A misbehaviour other than an error status, for tests of retries and crash recovery.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Fault {
    /// Wait this long before handling the request (the client's timeout fires first).
    Delay(std::time::Duration),
    /// Handle the request, then break the connection in the middle of the answer: the work is
    /// done but the client never learns it.
    ResetAfterProcessing,
    /// Wait until [`Hold::release`] before handling the request.
    HoldBeforeProcessing(std::sync::Arc<Hold>),
    /// Handle the request, then wait until [`Hold::release`] before answering.
    HoldAfterProcessing(std::sync::Arc<Hold>),
}

/// A request held by the emulator until the test lets it go (or kills the client).
#[derive(Debug)]
pub struct Hold {
    arrived: tokio::sync::watch::Sender<bool>,
    release: tokio::sync::Semaphore,
}

impl Hold {
    pub fn new() -> std::sync::Arc<Hold> {
        std::sync::Arc::new(Hold {
            arrived: tokio::sync::watch::Sender::new(false),
            release: tokio::sync::Semaphore::new(0),
        })
    }

    /// Completes once a held request has arrived.
    pub async fn arrived(&self) {
        let mut arrived = self.arrived.subscribe();
        let _ = arrived.wait_for(|a| *a).await;
    }

    /// Lets held requests continue.
    pub fn release(&self) {
        self.release.add_permits(1_000_000);
    }

    pub(crate) async fn hold(&self) {
        self.arrived.send_replace(true);
        if let Ok(permit) = self.release.acquire().await {
            permit.forget();
        }
    }
}

/// A fault for the next `remaining` requests matching method and path prefix.
#[derive(Debug, Clone)]
pub(crate) struct ScheduledFault {
    pub method: String,
    pub path_prefix: String,
    pub fault: Fault,
    pub remaining: usize,
}

impl ScheduledFault {
    pub(crate) fn take(faults: &mut [ScheduledFault], method: &str, path: &str) -> Option<Fault> {
        let found = faults
            .iter_mut()
            .find(|f| f.remaining > 0 && matches(&f.method, &f.path_prefix, method, path))?;
        found.remaining -= 1;
        Some(found.fault.clone())
    }
}

/// The fault for this request: none while an error status is scheduled for it (statuses go
/// first), else the next matching scheduled fault.
pub(crate) fn next_fault(
    failures: &[InjectedFailure],
    faults: &mut [ScheduledFault],
    request: &RecordedRequest,
) -> Option<Fault> {
    if InjectedFailure::pending(failures, &request.method, &request.path) {
        return None;
    }
    ScheduledFault::take(faults, &request.method, &request.path)
}

/// Handles a request directly, or through its fault.
pub(crate) async fn dispatch(
    fault: Option<Fault>,
    work: impl FnOnce() -> axum::response::Response + Send + 'static,
) -> axum::response::Response {
    match fault {
        None => work(),
        Some(fault) => with_fault(fault, work).await,
    }
}

/// Handles a request through `fault`. Like a real server, the emulator finishes its work even
/// when the client has gone (timed out or killed): the work runs in its own task.
async fn with_fault(
    fault: Fault,
    work: impl FnOnce() -> axum::response::Response + Send + 'static,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let task = tokio::spawn(async move {
        match fault {
            Fault::Delay(wait) => {
                tokio::time::sleep(wait).await;
                work()
            }
            Fault::HoldBeforeProcessing(hold) => {
                hold.hold().await;
                work()
            }
            Fault::HoldAfterProcessing(hold) => {
                let response = work();
                hold.hold().await;
                response
            }
            Fault::ResetAfterProcessing => {
                let (parts, _) = work().into_parts();
                let mut response = axum::response::Response::from_parts(parts, broken_body());
                response
                    .headers_mut()
                    .remove(axum::http::header::CONTENT_LENGTH);
                response
            }
        }
    });
    task.await
        .unwrap_or_else(|_| axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// A body that sends a few bytes and then fails, so the connection breaks mid-answer.
pub(crate) fn broken_body() -> Body {
    let chunks: Vec<Result<&'static [u8], std::io::Error>> = vec![
        Ok(b"{\"id\":"),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "emulated connection reset",
        )),
    ];
    Body::from_stream(Chunks(chunks.into_iter()))
}

/// A stream over ready chunks.
struct Chunks(std::vec::IntoIter<Result<&'static [u8], std::io::Error>>);

impl futures_core::Stream for Chunks {
    type Item = Result<&'static [u8], std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::task::Poll::Ready(self.0.next())
    }
}

/// A running emulator on a real TCP port; it stops when dropped.
#[derive(Debug)]
pub struct RunningEmulator {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl RunningEmulator {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) async fn serve(router: Router) -> std::io::Result<RunningEmulator> {
        Self::serve_at(router, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Serves `router` at `addr` (port 0: any free port).
    pub(crate) async fn serve_at(
        router: Router,
        addr: SocketAddr,
    ) -> std::io::Result<RunningEmulator> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(RunningEmulator { addr, task })
    }
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}
