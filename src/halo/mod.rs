//! A Halo instance reached through its REST API (`../shared/reference/halo-api.md`): OAuth
//! client credentials, a cached token refreshed shortly before it expires and once on a 401,
//! and JSON array bodies for creates and updates.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::config::{HaloConnectionConfig, IdempotencyField};
use crate::outbound::{Field, Outbound, OutboundRequest, OutboundResponse};
use crate::secrets::Secret;
use crate::step::StepError;

/// Refresh this long before the token's own expiry (dotMARC does the same; §1).
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct HaloConnection {
    name: String,
    config: HaloConnectionConfig,
    client_secret: Secret,
    token: Mutex<Option<CachedToken>>,
    /// Paces requests under the tenant's rolling-window limit; `None` when turned off.
    pacer: Option<Pacer>,
}

#[derive(Debug, Clone)]
struct CachedToken {
    access_token: Secret,
    token_type: String,
    refresh_at: Instant,
}

/// Paces requests to at most `limit` in any rolling `window`, Halo's own rule (§6). A sliding
/// log of send times, exact where a token bucket would let up to twice the limit through a
/// window that straddles a burst.
#[derive(Debug)]
struct Pacer {
    limit: usize,
    window: Duration,
    sent: std::sync::Mutex<std::collections::VecDeque<Instant>>,
}

impl Pacer {
    fn new(limit: u32, window: Duration) -> Option<Pacer> {
        (limit > 0 && !window.is_zero()).then(|| Pacer {
            limit: limit as usize,
            window,
            sent: std::sync::Mutex::new(std::collections::VecDeque::with_capacity(limit as usize)),
        })
    }

    /// Waits until one more request fits in the window, and counts it.
    async fn acquire(&self) {
        loop {
            let wait = {
                let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                while sent
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= self.window)
                {
                    sent.pop_front();
                }
                if sent.len() < self.limit {
                    sent.push_back(now);
                    return;
                }
                self.window - now.duration_since(*sent.front().expect("the window is full"))
            };
            tokio::time::sleep(wait).await;
        }
    }
}

impl HaloConnection {
    pub fn new(name: String, config: HaloConnectionConfig, client_secret: Secret) -> Self {
        let pacer = Pacer::new(
            config.rate_limit_requests,
            Duration::from_secs(config.rate_limit_window_secs),
        );
        HaloConnection {
            name,
            config,
            client_secret,
            token: Mutex::new(None),
            pacer,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where creates carry their idempotency key (checked when the config loads).
    pub fn idempotency_field(&self) -> IdempotencyField {
        self.config
            .idempotency()
            .unwrap_or(IdempotencyField::ThirdPartyId)
    }

    /// Waits for a slot under the rate limit (nothing in a dry run).
    async fn pace(&self, http: &Outbound) {
        if http.dry_run_recorder().is_none()
            && let Some(pacer) = &self.pacer
        {
            pacer.acquire().await;
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.config.timeout_secs)
    }

    /// `GET /api/{path}`.
    pub async fn get(&self, http: &Outbound, path: &str) -> Result<Value, StepError> {
        self.call(http, Method::GET, path, None).await
    }

    /// `POST /api/{path}` with `[object]`, Halo's shape for creates and updates (§2, §3);
    /// a one-element array answers the single object.
    pub async fn post_one(
        &self,
        http: &Outbound,
        path: &str,
        object: Value,
    ) -> Result<Value, StepError> {
        let answer = self
            .call(http, Method::POST, path, Some(Value::Array(vec![object])))
            .await?;
        match answer {
            Value::Array(mut items) if items.len() == 1 => Ok(items.remove(0)),
            other => Ok(other),
        }
    }

    /// Proves the credentials: a fresh token and a one-ticket read.
    pub async fn check(&self, http: &Outbound) -> Result<(), StepError> {
        self.token(http, true).await?;
        self.get(http, "Tickets?count=1").await.map(|_| ())
    }

    /// `GET /api/{path}` answered with raw bytes (an attachment's file, §4).
    pub async fn get_bytes(&self, http: &Outbound, path: &str) -> Result<Vec<u8>, StepError> {
        let (url, response) = self.exchange(http, Method::GET, path, None).await?;
        if response.is_success() {
            return Ok(response.body);
        }
        parse_answer(&Method::GET, &url, response).map(|_| Vec::new())
    }

    async fn call(
        &self,
        http: &Outbound,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, StepError> {
        let (url, response) = self.exchange(http, method.clone(), path, body).await?;
        parse_answer(&method, &url, response)
    }

    /// Sends with a token, refreshing it once on 401; any answer is returned.
    async fn exchange(
        &self,
        http: &Outbound,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(String, OutboundResponse), StepError> {
        let url = self.config.api_url(path);
        let mut refreshed = false;
        loop {
            let token = self.token(http, refreshed).await?;
            self.pace(http).await;
            let mut request = OutboundRequest::new(method.clone(), url.clone())
                .header(Field::secret(
                    "Authorization",
                    format!("{} {}", token.token_type, token.access_token.expose()),
                ))
                .header(Field::plain("Accept", "application/json"))
                .timeout(self.timeout());
            if let Some(body) = &body {
                request = request.json(body.clone());
            }
            let response = http.send(request).await?;
            // One refresh on 401: the token may have been revoked before its expiry.
            if response.status == 401 && !refreshed {
                refreshed = true;
                continue;
            }
            return Ok((url, response));
        }
    }

    /// A valid token, from the cache unless `force_refresh`.
    async fn token(&self, http: &Outbound, force_refresh: bool) -> Result<CachedToken, StepError> {
        if let Some(recorder) = http.dry_run_recorder() {
            // A dry run shows the token request once, and sends nothing.
            if recorder.first_token_request(&self.name) {
                http.preview_only(&self.token_request());
            }
            return Ok(CachedToken {
                access_token: Secret::new("dry-run"),
                token_type: "Bearer".into(),
                refresh_at: Instant::now(),
            });
        }
        let mut cached = self.token.lock().await;
        if !force_refresh
            && let Some(token) = cached.as_ref()
            && Instant::now() < token.refresh_at
        {
            return Ok(token.clone());
        }
        let request = self.token_request();
        let url = request.url.clone();
        self.pace(http).await;
        let response = http.send(request).await?;
        let body = parse_answer(&Method::POST, &url, response).map_err(|e| match e {
            StepError::Status { status, message, retry_after, method, url } if status == 400 || status == 401 => {
                StepError::Status {
                    method,
                    url,
                    status,
                    message: format!(
                        "{message}. Check client_id and the secret `{}` of [halo.{}] (the Client ID changes when the Halo application is saved)",
                        self.config.client_secret_name, self.name
                    ),
                    retry_after,
                }
            }
            other => other,
        })?;
        let access_token = body
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                StepError::Response(format!("token answer from {url} has no access_token"))
            })?;
        let expires_in = body
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(3600);
        let token = CachedToken {
            access_token: Secret::new(access_token),
            // Halo issues bearer tokens only (§1); HaloAPI builds "{token_type} {token}".
            token_type: "Bearer".to_owned(),
            refresh_at: Instant::now()
                + Duration::from_secs(expires_in).saturating_sub(EXPIRY_MARGIN),
        };
        *cached = Some(token.clone());
        Ok(token)
    }

    fn token_request(&self) -> OutboundRequest {
        let mut url = self.config.token_url();
        if let Some(tenant) = &self.config.tenant {
            url = format!("{url}?tenant={}", crate::outbound::encode_component(tenant));
        }
        OutboundRequest::new(Method::POST, url)
            .header(Field::plain("Accept", "application/json"))
            .form(vec![
                Field::plain("grant_type", "client_credentials"),
                Field::plain("client_id", &self.config.client_id),
                Field::secret("client_secret", self.client_secret.expose()),
                Field::plain("scope", &self.config.scope),
            ])
            .timeout(self.timeout())
    }
}

/// 2xx with a JSON body (or none) is success; anything else becomes a [`StepError::Status`]
/// carrying Halo's own message from any of its error shapes (§6).
fn parse_answer(
    method: &Method,
    url: &str,
    response: OutboundResponse,
) -> Result<Value, StepError> {
    if response.is_success() {
        if response.body.is_empty() {
            return Ok(Value::Null);
        }
        return response.json().ok_or_else(|| {
            StepError::Response(format!(
                "{method} {url} answered {} with a body that is not JSON",
                response.status
            ))
        });
    }
    Err(StepError::Status {
        method: method.to_string(),
        url: url.to_owned(),
        status: response.status,
        message: halo_error_message(&response),
        retry_after: response.retry_after,
    })
}

fn halo_error_message(response: &OutboundResponse) -> String {
    let text = response.text();
    let Some(body) = response.json() else {
        return truncate(text.trim());
    };
    let field = |key: &str| body.get(key).and_then(Value::as_str).map(str::to_owned);
    let message = field("error_description")
        .or_else(|| field("errorMessage"))
        .or_else(|| field("Message"))
        .or_else(|| field("message"))
        .or_else(|| field("error"))
        .or_else(|| body.as_str().map(str::to_owned))
        .unwrap_or_else(|| body.to_string());
    truncate(&message)
}

fn truncate(text: &str) -> String {
    const LIMIT: usize = 500;
    if text.len() <= LIMIT {
        return text.to_owned();
    }
    let mut end = LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}
