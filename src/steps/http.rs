//! `http.request`: a generic HTTP call. Credentials come only from a named `[http.<name>]`
//! connection, never from the flow; the response (JSON when it parses) becomes the outputs.

use async_trait::async_trait;
use reqwest::Method;
use serde_json::{Value, json};

use crate::outbound::{Field, OutboundBody, OutboundRequest};
use crate::step::{ConnectionKind, OutputSpec, Step, StepContext, StepError};

#[derive(Debug, Clone, Copy, Default)]
pub struct HttpRequest;

#[async_trait]
impl Step for HttpRequest {
    fn type_name(&self) -> &'static str {
        "http.request"
    }

    fn description(&self) -> &'static str {
        "Send an HTTP request; with a connection, its URL is relative to the connection's base URL and its credentials are added."
    }

    fn input_schema(&self) -> Value {
        json!({
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
        })
    }

    fn outputs(&self) -> &'static [OutputSpec] {
        const OUTPUTS: &[OutputSpec] = &[
            OutputSpec {
                name: "status",
                description: "The response status.",
            },
            OutputSpec {
                name: "json",
                description: "The response body parsed as JSON (null when it is not JSON).",
            },
            OutputSpec {
                name: "body",
                description: "The response body as text.",
            },
        ];
        OUTPUTS
    }

    fn connection_kind(&self) -> Option<ConnectionKind> {
        Some(ConnectionKind::Http)
    }

    async fn execute(&self, ctx: &StepContext, inputs: Value) -> Result<Value, StepError> {
        let connection = ctx.http_connection()?;
        let url_input = inputs["url"].as_str().unwrap_or_default();
        let mut url = match (&connection, url_input.contains("://")) {
            (Some(c), false) => format!("{}/{}", c.base_url, url_input.trim_start_matches('/')),
            (Some(c), true) if !url_input.starts_with(&c.base_url) => {
                return Err(StepError::Input {
                    pointer: "/url".into(),
                    message: format!(
                        "`{url_input}` is not under the connection's base URL {}; use a relative path",
                        c.base_url
                    ),
                });
            }
            (None, false) => {
                return Err(StepError::Input {
                    pointer: "/url".into(),
                    message: format!(
                        "`{url_input}` is not an absolute URL; write https://... or name a connection"
                    ),
                });
            }
            _ => url_input.to_owned(),
        };
        if let Some(query) = inputs
            .get("query")
            .and_then(Value::as_object)
            .filter(|q| !q.is_empty())
        {
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
        }
        let method: Method = inputs
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or("GET")
            .parse()
            .map_err(|_| StepError::Input {
                pointer: "/method".into(),
                message: "not an HTTP method".into(),
            })?;
        let mut request = OutboundRequest::new(method.clone(), url.clone());
        for (name, value) in inputs
            .get("headers")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            request = request.header(Field::plain(name, value.as_str().unwrap_or_default()));
        }
        if let Some(c) = &connection {
            request = request.timeout(c.timeout);
            if let Some((name, value)) = &c.auth_header {
                request = request.header(Field::secret(name, value.expose()));
            }
        }
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
        let response = ctx.http().send(request).await?;
        let expected = match inputs.get("expected_status").and_then(Value::as_array) {
            Some(list) => list
                .iter()
                .any(|s| s.as_u64() == Some(u64::from(response.status))),
            None => response.is_success(),
        };
        let body = response.text();
        if !expected {
            let mut message = body.chars().take(300).collect::<String>();
            if message.is_empty() {
                message = "(empty body)".into();
            }
            return Err(StepError::Status {
                method: method.to_string(),
                url: crate::outbound::redact_url(&url),
                status: response.status,
                message,
                retry_after: response.retry_after,
            });
        }
        Ok(
            json!({"status": response.status, "json": response.json().unwrap_or(Value::Null), "body": body}),
        )
    }
}
