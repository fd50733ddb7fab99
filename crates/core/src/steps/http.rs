//! `http.request`: a generic HTTP call. Credentials come only from a named `[http.<name>]`
//! connection, never from the flow; the response (JSON when it parses) becomes the outputs.

use async_trait::async_trait;
use reqwest::Method;
use serde_json::{Value, json};

use crate::outbound::{Field, OutboundBody, OutboundRequest};
use crate::step::{ConnectionKind, Resend, Step, StepContext, StepDescription, StepError};

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HttpRequest;

/// Request headers that carry credentials. Secrets are by reference only: a flow file (or a
/// payload a template copies) must not hold them, and run history records inputs unmasked.
const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
];

impl HttpRequest {
    /// Whether `name` is a header that carries credentials (compared case-insensitively, as
    /// HTTP does).
    pub(crate) fn is_credential_header(name: &str) -> bool {
        CREDENTIAL_HEADERS
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name.trim()))
    }

    /// Why a credential header is refused, and what to do instead.
    pub(crate) fn credential_header_message(name: &str) -> String {
        format!(
            "header `{name}` carries credentials, and secrets are by reference only; put them in an [http.<name>] connection in the config file (bearer_token_secret_name, basic_username with basic_password_secret_name, or header_name with header_secret_name) and set \"connection\" on the step"
        )
    }
}

#[async_trait]
impl Step for HttpRequest {
    fn describe(&self) -> StepDescription {
        StepDescription::new(
            "http.request",
            "Send an HTTP request; with a connection, its URL is relative to the connection's base URL and its credentials are added.",
        )
        .input_schema(json!({
            "type": "object",
            "required": ["url"],
            "additionalProperties": false,
            "not": {"required": ["json", "text"]},
            "properties": {
                "method": {"enum": ["GET", "POST", "PUT", "PATCH", "DELETE"], "default": "GET", "description": "The HTTP method."},
                "url": {"type": "string", "minLength": 1, "description": "Absolute URL, or a path relative to the connection's base_url."},
                "query": {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}, "description": "Query parameters, URL-encoded for you."},
                "headers": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Request headers. Put credentials in a connection, not here."},
                "json": {"description": "A JSON body (sent as application/json)."},
                "text": {"type": "string", "description": "A text body."},
                "content_type": {"type": "string", "default": "text/plain", "description": "Content type of a text body."},
                "expected_status": {"type": "array", "items": {"type": "integer", "minimum": 100, "maximum": 599}, "minItems": 1, "description": "Statuses that count as success (default: any 2xx)."}
            }
        }))
        .output("status", "The response status.")
        .output("json", "The response body parsed as JSON (null when it is not JSON).")
        .output("body", "The response body as text.")
        .connection_kind(ConnectionKind::HTTP)
    }

    /// GET, PUT and DELETE mean the same when sent twice; a POST or PATCH whose answer was lost
    /// is not sent again (the run fails with `outcome_unknown` for someone to check).
    fn resend(&self, inputs: &Value) -> Resend {
        match inputs
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or("GET")
        {
            "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" => Resend::Safe,
            _ => Resend::Never,
        }
    }

    async fn execute(&self, ctx: &StepContext, inputs: Value) -> Result<Value, StepError> {
        let connection = ctx.http_connection()?;
        let url = with_query(request_url(&inputs, connection.as_deref())?, &inputs);
        // The URL that was checked is the URL that is sent: checking one spelling and sending
        // another would let a parser difference move the credentials to another host.
        let url = checked_url(&url, connection.as_deref())?.to_string();
        let method = request_method(&inputs)?;
        let request = OutboundRequest::new(method.clone(), url.clone());
        let request = with_headers(request, &inputs, connection.as_deref())?;
        let response = ctx.http().send(with_body(request, &inputs)).await?;
        answer(&method, &url, &inputs, response)
    }
}

/// The URL input, joined to the connection's base URL when it is relative.
fn request_url(
    inputs: &Value,
    connection: Option<&crate::connections::HttpConnection>,
) -> Result<String, StepError> {
    let url_input = inputs["url"].as_str().unwrap_or_default();
    match (connection, is_absolute(url_input)) {
        (Some(c), false) => Ok(format!(
            "{}/{}",
            c.base_url,
            url_input.trim_start_matches('/')
        )),
        (None, false) => Err(StepError::Input {
            pointer: "/url".into(),
            message: format!(
                "`{url_input}` is not an absolute URL; write https://... or name a connection"
            ),
        }),
        (_, true) => Ok(url_input.to_owned()),
    }
}

/// `url` with the `query` input appended, each name and value URL-encoded.
fn with_query(mut url: String, inputs: &Value) -> String {
    let Some(query) = inputs
        .get("query")
        .and_then(Value::as_object)
        .filter(|q| !q.is_empty())
    else {
        return url;
    };
    let encode = crate::outbound::encode_component;
    let pairs: Vec<String> = query
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                encode(k),
                encode(
                    &v.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string())
                )
            )
        })
        .collect();
    url.push(if url.contains('?') { '&' } else { '?' });
    url.push_str(&pairs.join("&"));
    url
}

fn request_method(inputs: &Value) -> Result<Method, StepError> {
    inputs
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("GET")
        .parse()
        .map_err(|_| StepError::Input {
            pointer: "/method".into(),
            message: "not an HTTP method".into(),
        })
}

/// The flow's headers (refusing credential headers), then the connection's timeout and
/// credentials.
fn with_headers(
    mut request: OutboundRequest,
    inputs: &Value,
    connection: Option<&crate::connections::HttpConnection>,
) -> Result<OutboundRequest, StepError> {
    for (name, value) in inputs
        .get("headers")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        // Also checked when the flow loads; this catches headers that came from a template
        // (`"headers": "{{...}}"`) and steps run directly with `Engine::run_step`.
        if HttpRequest::is_credential_header(name) {
            return Err(StepError::Input {
                pointer: format!("/headers/{}", crate::template::escape_pointer(name)),
                message: HttpRequest::credential_header_message(name),
            });
        }
        request = request.header(Field::plain(name, value.as_str().unwrap_or_default()));
    }
    if let Some(c) = connection {
        request = request.timeout(c.timeout);
        if let Some((name, value)) = &c.auth_header {
            request = request.header(Field::secret(name, value.expose()));
        }
    }
    Ok(request)
}

/// The `json` or `text` input as the body.
fn with_body(mut request: OutboundRequest, inputs: &Value) -> OutboundRequest {
    if let Some(body) = inputs.get("json") {
        request = request.json(body.clone());
    } else if let Some(text) = inputs.get("text").and_then(Value::as_str) {
        let content_type = inputs
            .get("content_type")
            .and_then(Value::as_str)
            .unwrap_or("text/plain");
        request.body = OutboundBody::Text {
            content_type: content_type.to_owned(),
            text: text.to_owned(),
        };
    }
    request
}

/// The outputs, or a [`StepError::Status`] when the status is not an expected one.
fn answer(
    method: &Method,
    url: &str,
    inputs: &Value,
    response: crate::outbound::OutboundResponse,
) -> Result<Value, StepError> {
    let expected = match inputs.get("expected_status").and_then(Value::as_array) {
        Some(list) => list
            .iter()
            .any(|s| s.as_u64() == Some(u64::from(response.status))),
        None => response.is_success(),
    };
    if !expected {
        return Err(StepError::from_status(method, url, &response));
    }
    let body = response.text();
    Ok(
        json!({"status": response.status, "json": response.json().unwrap_or(Value::Null), "body": body}),
    )
}

/// True for `scheme://...`: a scheme, then `://`, before any `/`, `?` or `#`. Anything else is
/// a path relative to the connection's base URL (a query may itself contain `://`).
fn is_absolute(url: &str) -> bool {
    url.split_once("://").is_some_and(|(scheme, _)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

/// Parses the URL to send and, with a connection, checks that it lies under the connection's
/// base URL: same scheme, host and port, and a path at or below the base path on a segment
/// boundary. A text prefix check is not enough: `https://acme.example.com.evil.io/` and
/// `https://acme.example.com@evil.io/` both start with `https://acme.example.com` and would
/// receive the connection's credentials. Credentials in the URL itself are refused too.
fn checked_url(
    url: &str,
    connection: Option<&crate::connections::HttpConnection>,
) -> Result<reqwest::Url, StepError> {
    let shown = crate::outbound::redact_url(url);
    let input_error = |message: String| StepError::Input {
        pointer: "/url".into(),
        message,
    };
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| input_error(format!("`{shown}` is not a valid URL: {e}")))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(input_error(format!(
            "`{shown}` has credentials before the host (user@host); secrets are by reference only: put them in an [http.<name>] connection and set \"connection\" on the step"
        )));
    }
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(input_error(format!(
            "`{shown}` is not an http or https URL"
        )));
    }
    let Some(connection) = connection else {
        return Ok(parsed);
    };
    let base = reqwest::Url::parse(&connection.base_url).map_err(|e| {
        StepError::Connection(format!(
            "[http.{}] base_url `{}` is not a URL ({e}); write it like https://host/path",
            connection.name,
            crate::outbound::redact_url(&connection.base_url)
        ))
    })?;
    let base_path = base.path().trim_end_matches('/');
    let same_origin = parsed.scheme() == base.scheme()
        && parsed.host_str() == base.host_str()
        && parsed.port_or_known_default() == base.port_or_known_default();
    // `/api` covers `/api` and `/api/...`, not `/apix`. The parsed path has `..` resolved,
    // so a relative `../admin` cannot climb out either.
    let under_path = parsed
        .path()
        .strip_prefix(base_path)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
    if same_origin && under_path {
        Ok(parsed)
    } else {
        Err(input_error(format!(
            "`{shown}` is not under the connection's base URL {}; use a path relative to it, or another connection for another host",
            connection.base_url
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(base_url: &str) -> crate::connections::HttpConnection {
        crate::connections::HttpConnection {
            name: "api".into(),
            base_url: base_url.into(),
            timeout: std::time::Duration::from_secs(5),
            auth_header: None,
        }
    }

    #[test]
    fn only_urls_under_the_base_url_get_the_connection() {
        let api = connection("https://acme.example.com/api");
        for ok in [
            "https://acme.example.com/api",
            "https://acme.example.com/api/tickets?x=1",
            "https://ACME.example.com:443/api/x",
        ] {
            assert!(checked_url(ok, Some(&api)).is_ok(), "{ok}");
        }
        for bad in [
            "https://acme.example.com.evil.io/api/x",
            "https://acme.example.com@evil.io/api/x",
            "https://acme.example.com:8443/api/x",
            "http://acme.example.com/api/x",
            "https://acme.example.com/apix",
            "https://acme.example.com/api/../admin",
            "https://evil.io/https://acme.example.com/api",
        ] {
            assert!(checked_url(bad, Some(&api)).is_err(), "{bad}");
        }
        assert!(checked_url("https://user:pw@example.org/", None).is_err());
        assert!(checked_url("file:///etc/passwd", None).is_err());
    }

    #[test]
    fn absolute_urls_have_a_scheme_first() {
        assert!(is_absolute("https://example.org/x"));
        assert!(!is_absolute("/search?next=https://example.org"));
        assert!(!is_absolute("api/now"));
    }

    #[test]
    fn credential_headers_in_any_case() {
        for name in [
            "Authorization",
            "cookie",
            "X-API-KEY",
            "Proxy-Authorization",
        ] {
            assert!(HttpRequest::is_credential_header(name), "{name}");
        }
        assert!(!HttpRequest::is_credential_header("Accept"));
    }
}
