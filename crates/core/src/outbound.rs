//! Every HTTP request a step sends goes through [`Outbound`]: it applies timeouts, records each
//! exchange for the run history, and in a dry run records a masked preview instead of sending.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A request about to be sent. Values marked sensitive are masked in every record.
#[derive(Debug, Clone)]
pub struct OutboundRequest {
    pub method: reqwest::Method,
    pub url: String,
    pub headers: Vec<Field>,
    pub body: OutboundBody,
    pub timeout: Duration,
}

/// A header or form field; `sensitive` ones are shown as `***`.
#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    pub value: String,
    pub sensitive: bool,
}

impl Field {
    pub fn plain(name: impl Into<String>, value: impl Into<String>) -> Self {
        Field {
            name: name.into(),
            value: value.into(),
            sensitive: false,
        }
    }

    pub fn secret(name: impl Into<String>, value: impl Into<String>) -> Self {
        Field {
            name: name.into(),
            value: value.into(),
            sensitive: true,
        }
    }

    fn masked_value(&self) -> String {
        if !self.sensitive {
            return self.value.clone();
        }
        // Keep the scheme of an Authorization header readable: `Bearer ***`.
        match self.value.split_once(' ') {
            Some((scheme, _)) if self.name.eq_ignore_ascii_case("authorization") => {
                format!("{scheme} ***")
            }
            _ => "***".to_owned(),
        }
    }
}

#[derive(Debug, Clone)]
pub enum OutboundBody {
    None,
    Json(Value),
    Form(Vec<Field>),
    Text {
        content_type: String,
        text: String,
    },
    /// Raw bytes (a file upload); previews show the size, not the content.
    Bytes {
        content_type: String,
        bytes: Vec<u8>,
    },
}

impl OutboundRequest {
    pub fn new(method: reqwest::Method, url: impl Into<String>) -> Self {
        OutboundRequest {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: OutboundBody::None,
            timeout: Duration::from_secs(30),
        }
    }

    pub fn header(mut self, field: Field) -> Self {
        self.headers.push(field);
        self
    }

    pub fn json(mut self, body: Value) -> Self {
        self.body = OutboundBody::Json(body);
        self
    }

    pub fn form(mut self, fields: Vec<Field>) -> Self {
        self.body = OutboundBody::Form(fields);
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The request as shown to people: secrets masked, body as JSON.
    pub fn preview(&self) -> RequestPreview {
        let mut headers: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|h| (h.name.clone(), h.masked_value()))
            .collect();
        let body = match &self.body {
            OutboundBody::None => None,
            OutboundBody::Json(v) => {
                headers.push(("Content-Type".into(), "application/json".into()));
                Some(v.clone())
            }
            OutboundBody::Text { content_type, text } => {
                headers.push(("Content-Type".into(), content_type.clone()));
                Some(Value::String(text.clone()))
            }
            OutboundBody::Bytes {
                content_type,
                bytes,
            } => {
                headers.push(("Content-Type".into(), content_type.clone()));
                Some(Value::String(format!("<{} bytes>", bytes.len())))
            }
            OutboundBody::Form(fields) => {
                headers.push((
                    "Content-Type".into(),
                    "application/x-www-form-urlencoded".into(),
                ));
                Some(Value::String(
                    fields
                        .iter()
                        .map(|f| format!("{}={}", f.name, f.masked_value()))
                        .collect::<Vec<_>>()
                        .join("&"),
                ))
            }
        };
        RequestPreview {
            method: self.method.to_string(),
            url: redact_url(&self.url),
            headers,
            body,
        }
    }
}

/// What a dry run shows for one request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RequestPreview {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Value>,
}

/// Why a request got no response. Any HTTP status is a response, not an error.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error(transparent)]
    Transport(TransportError),
    /// A dry run recorded the request instead of sending it.
    #[error("dry run: the request was not sent")]
    DryRun,
}

/// The request did not complete (connect error, timeout, broken body).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{method} {url}: {message}")]
pub struct TransportError {
    pub method: String,
    pub url: String,
    pub message: String,
    pub retryable: bool,
    /// The request may have reached the remote system (not a connect failure).
    pub sent: bool,
}

/// One exchange as kept in the run history: never headers or secrets.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExchangeRecord {
    pub method: String,
    pub url: String,
    pub status: Option<u16>,
    pub duration_ms: u64,
    pub error: Option<String>,
}

/// A response with its body read.
#[derive(Debug, Clone)]
pub struct OutboundResponse {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

impl OutboundResponse {
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Sends requests for one step run and keeps its exchange log.
#[derive(Debug, Clone)]
pub struct Outbound {
    client: reqwest::Client,
    mode: Mode,
    log: Arc<Mutex<Vec<ExchangeRecord>>>,
    /// The run's execution slot, lent while the step waits (none outside a served run).
    slot: Option<Arc<dyn SlotLender>>,
}

/// A served run's execution slot, which a step may lend to other runs while it waits (the
/// engine's; see [`Outbound::wait_without_slot`]).
pub(crate) trait SlotLender: Send + Sync + std::fmt::Debug {
    /// Gives the slot back to the pool when the engine allows it; the guard returned takes one
    /// again when dropped (the wait ended, or was cancelled).
    fn lend(&self) -> Option<Box<dyn Send>>;
}

#[derive(Debug, Clone)]
enum Mode {
    Live,
    DryRun(DryRunRecorder),
}

/// Collects the requests a dry run would have sent.
#[derive(Debug, Clone, Default)]
pub struct DryRunRecorder {
    previews: Arc<Mutex<Vec<RequestPreview>>>,
    announced_tokens: Arc<Mutex<Vec<String>>>,
}

impl DryRunRecorder {
    pub fn take(&self) -> Vec<RequestPreview> {
        std::mem::take(&mut *self.previews.lock().expect("preview lock"))
    }

    fn record(&self, preview: RequestPreview) {
        self.previews.lock().expect("preview lock").push(preview);
    }

    /// True the first time a token request for `connection` is shown in this dry run.
    pub fn first_token_request(&self, connection: &str) -> bool {
        let mut seen = self.announced_tokens.lock().expect("token lock");
        if seen.iter().any(|c| c == connection) {
            return false;
        }
        seen.push(connection.to_owned());
        true
    }
}

impl Outbound {
    pub fn live(client: reqwest::Client) -> Self {
        Outbound {
            client,
            mode: Mode::Live,
            log: Arc::default(),
            slot: None,
        }
    }

    pub fn dry_run(client: reqwest::Client, recorder: DryRunRecorder) -> Self {
        Outbound {
            client,
            mode: Mode::DryRun(recorder),
            log: Arc::default(),
            slot: None,
        }
    }

    /// Sends for a run that holds `slot`, which [`Outbound::wait_without_slot`] may lend.
    pub(crate) fn lending(mut self, slot: Option<Arc<dyn SlotLender>>) -> Self {
        self.slot = slot;
        self
    }

    /// Awaits `wait` without holding the run's execution slot where the engine allows it:
    /// for a wait that only time ends (an API's pacing), so runs waiting on one tenant's rate
    /// limit leave the slots to other runs. The slot is taken again before this returns.
    /// Check first whether you must wait at all: lending costs a slot hand-off each way.
    pub async fn wait_without_slot<F: std::future::Future>(&self, wait: F) -> F::Output {
        let lent = self.slot.as_ref().and_then(|slot| slot.lend());
        let output = wait.await;
        drop(lent);
        output
    }

    /// The recorder when this is a dry run.
    pub fn dry_run_recorder(&self) -> Option<&DryRunRecorder> {
        match &self.mode {
            Mode::DryRun(r) => Some(r),
            Mode::Live => None,
        }
    }

    /// Shows `request` in a dry run (without sending); does nothing live.
    pub fn preview_only(&self, request: &OutboundRequest) {
        if let Mode::DryRun(recorder) = &self.mode {
            recorder.record(request.preview());
        }
    }

    /// The exchanges sent so far.
    pub fn exchanges(&self) -> Vec<ExchangeRecord> {
        self.log.lock().expect("exchange log lock").clone()
    }

    /// Sends the request; any HTTP status is a response, not an error. In a dry run the request
    /// is recorded and [`OutboundError::DryRun`] stops the step.
    pub async fn send(&self, request: OutboundRequest) -> Result<OutboundResponse, OutboundError> {
        if let Mode::DryRun(recorder) = &self.mode {
            recorder.record(request.preview());
            return Err(OutboundError::DryRun);
        }
        let url = redact_url(&request.url);
        let method = request.method.to_string();
        let builder = self.builder(&request);
        let started = Instant::now();
        let result = read_response(builder).await;
        let mut record = ExchangeRecord {
            method: method.clone(),
            url: url.clone(),
            status: None,
            duration_ms: started.elapsed().as_millis() as u64,
            error: None,
        };
        let outcome = match result {
            Ok(response) => {
                record.status = Some(response.status);
                Ok(response)
            }
            Err(e) => {
                let error = TransportError::of(&e, method, url);
                record.error = Some(error.message.clone());
                Err(OutboundError::Transport(error))
            }
        };
        self.log.lock().expect("exchange log lock").push(record);
        outcome
    }

    /// The request as reqwest sends it: headers, body and its content type, timeout.
    fn builder(&self, request: &OutboundRequest) -> reqwest::RequestBuilder {
        let mut builder = self
            .client
            .request(request.method.clone(), &request.url)
            .timeout(request.timeout);
        for h in &request.headers {
            builder = builder.header(&h.name, &h.value);
        }
        match &request.body {
            OutboundBody::None => builder,
            OutboundBody::Json(v) => builder.json(v),
            OutboundBody::Text { content_type, text } => builder
                .header(reqwest::header::CONTENT_TYPE, content_type.as_str())
                .body(text.clone()),
            OutboundBody::Bytes {
                content_type,
                bytes,
            } => builder
                .header(reqwest::header::CONTENT_TYPE, content_type.as_str())
                .body(bytes.clone()),
            OutboundBody::Form(fields) => builder.form(
                &fields
                    .iter()
                    .map(|f| (f.name.as_str(), f.value.as_str()))
                    .collect::<Vec<_>>(),
            ),
        }
    }
}

/// Sends the request and reads the whole answer, with its `Retry-After`.
async fn read_response(
    builder: reqwest::RequestBuilder,
) -> Result<OutboundResponse, reqwest::Error> {
    let response = builder.send().await?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v.trim()));
    let body = response.bytes().await?.to_vec();
    Ok(OutboundResponse {
        status,
        retry_after,
        body,
    })
}

impl TransportError {
    /// Why reqwest got no answer, and whether sending again may help.
    fn of(e: &reqwest::Error, method: String, url: String) -> TransportError {
        TransportError {
            method,
            url,
            message: describe_reqwest_error(e),
            retryable: e.is_timeout() || e.is_connect() || e.is_request() || e.is_body(),
            // A connect failure never reached the server; anything later may have.
            sent: !e.is_connect(),
        }
    }
}

/// `Retry-After` as seconds or as an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = when.timestamp_millis() - chrono::Utc::now().timestamp_millis();
    Some(Duration::from_millis(wait.max(0) as u64))
}

/// reqwest's error text can include the URL; ours is already in the record, so keep the cause.
fn describe_reqwest_error(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "failed reading the response"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut cause = String::new();
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    if cause.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {cause}")
    }
}

/// Everything but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`) is encoded.
const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes a query name or value (or a path segment).
pub fn encode_component(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, COMPONENT).to_string()
}

/// Drops credentials embedded in a URL (`https://user:pass@host`).
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((userinfo, host)) if !userinfo.contains('/') => format!("{scheme}://***@{host}"),
            _ => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// An OAuth 2.0 client-credentials token (RFC 6749 §4.4), fetched once and reused until
/// shortly before it expires.
#[derive(Debug, Default)]
pub struct TokenCache {
    slot: tokio::sync::Mutex<Option<(crate::secrets::Secret, Instant)>>,
}

impl TokenCache {
    /// Fetch a new token this long before the old one's own expiry (common client libraries
    /// do the same).
    const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

    /// The cached token unless `force_refresh` or it is due; else the one `fetch` returns with
    /// its lifespan in seconds, cached until shortly before it expires. Concurrent callers wait
    /// for one fetch. The flag is true for a token fetched by this call.
    pub async fn get<E, F>(
        &self,
        force_refresh: bool,
        fetch: impl FnOnce() -> F,
    ) -> Result<(crate::secrets::Secret, bool), E>
    where
        F: std::future::Future<Output = Result<(crate::secrets::Secret, u64), E>>,
    {
        let mut cached = self.slot.lock().await;
        if !force_refresh
            && let Some((token, refresh_at)) = cached.as_ref()
            && Instant::now() < *refresh_at
        {
            return Ok((token.clone(), false));
        }
        let (token, lifespan_secs) = fetch().await?;
        let refresh_at =
            Instant::now() + Duration::from_secs(lifespan_secs).saturating_sub(Self::EXPIRY_MARGIN);
        *cached = Some((token.clone(), refresh_at));
        Ok((token, true))
    }
}

/// The `access_token` of a token endpoint's JSON answer and its `expires_in` in seconds, if
/// given (a number, or a string of one as some servers send it; RFC 6749 §5.1).
pub fn granted_token(body: &Value) -> Option<(crate::secrets::Secret, Option<u64>)> {
    let token = body.get("access_token").and_then(Value::as_str)?;
    let expires_in = body
        .get("expires_in")
        .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()));
    Some((crate::secrets::Secret::new(token), expires_in))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_mask_sensitive_values() {
        let request = OutboundRequest::new(reqwest::Method::POST, "https://u:p@h/auth/token")
            .header(Field::secret("Authorization", "Bearer abc"))
            .form(vec![
                Field::plain("client_id", "id"),
                Field::secret("client_secret", "s3cr3t"),
            ]);
        let preview = request.preview();
        assert_eq!(preview.url, "https://***@h/auth/token");
        assert_eq!(
            preview.headers[0],
            ("Authorization".into(), "Bearer ***".into())
        );
        assert_eq!(
            preview.body,
            Some(Value::String("client_id=id&client_secret=***".into()))
        );
    }

    #[tokio::test]
    async fn a_cached_token_is_reused_until_refresh_is_forced_or_it_is_due() {
        let cache = TokenCache::default();
        let fetch = |token: &'static str, lifespan: u64| {
            move || async move { Ok::<_, ()>((crate::secrets::Secret::new(token), lifespan)) }
        };
        let (token, fresh) = cache.get(false, fetch("a", 3600)).await.unwrap();
        assert_eq!((token.expose(), fresh), ("a", true));
        let (token, fresh) = cache.get(false, fetch("b", 3600)).await.unwrap();
        assert_eq!((token.expose(), fresh), ("a", false));
        let (token, fresh) = cache.get(true, fetch("c", 30)).await.unwrap();
        assert_eq!((token.expose(), fresh), ("c", true));
        // A lifespan within the margin is due at once.
        let (token, _) = cache.get(false, fetch("d", 3600)).await.unwrap();
        assert_eq!(token.expose(), "d");
        assert_eq!(
            cache.get(false, || async { Err("down") }).await.map(|_| ()),
            Ok(())
        );
    }

    #[test]
    fn granted_tokens_take_a_number_or_a_numeric_string_as_lifespan() {
        let granted = |body: Value| granted_token(&body).map(|(t, e)| (t.expose().to_owned(), e));
        assert_eq!(
            granted(serde_json::json!({"access_token": "t", "expires_in": 60})),
            Some(("t".into(), Some(60)))
        );
        assert_eq!(
            granted(serde_json::json!({"access_token": "t", "expires_in": "1799"})),
            Some(("t".into(), Some(1799)))
        );
        assert_eq!(
            granted(serde_json::json!({"access_token": "t"})),
            Some(("t".into(), None))
        );
        assert_eq!(
            granted(serde_json::json!({"error": "invalid_client"})),
            None
        );
    }
}
