//! The step contract. Every step, built-in or an embedder's, implements [`Step`] and is
//! registered by type name in a [`StepRegistry`]; flows name steps by that type.

mod registry;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

pub use crate::template::OutputSpec;
pub use registry::{RegisteredStep, RegisteredTrigger, RegistryError, StepRegistry};

pub use crate::connections::ConnectionKind;
use crate::connections::{Connections, NoConnection};
use crate::outbound::{Outbound, OutboundError, TransportError};
use crate::storage::Link;

/// Which `"paths"` a step may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathRule {
    /// Not a branching step.
    None,
    /// Only these path names.
    Named(&'static [&'static str]),
    /// Any names (switch cases), plus `default`.
    Any,
}

/// What a step is, for the registry, the validator, the editor schema and listings: its type
/// name, a one-line summary, the JSON Schema of its inputs, its outputs, the connection kind
/// it takes and whether it branches or refines the trigger. [`Step::describe`] builds it; the
/// registry asks once, when the step is registered, and keeps it.
///
/// Build it with [`StepDescription::new`] and the methods below (only what differs from the
/// defaults: inputs any object, no outputs, no connection, no paths); read it by its fields.
///
/// ```
/// use haloflow_core::step::{ConnectionKind, StepDescription};
/// use serde_json::json;
///
/// let description = StepDescription::new("chat.post_message", "Post a message to a channel.")
///     .input_schema(json!({
///         "type": "object",
///         "required": ["text"],
///         "properties": {"text": {"type": "string"}}
///     }))
///     .output("status", "The chat service's answer status.")
///     .connection_kind(ConnectionKind::HTTP);
/// assert_eq!(description.type_name, "chat.post_message");
/// assert_eq!(description.outputs[0].name, "status");
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StepDescription {
    /// The name flows use in `"type"`, e.g. `halo.create_ticket`.
    pub type_name: &'static str,
    /// One line for listings, the editor schema and error hints.
    pub summary: &'static str,
    /// JSON Schema (2020-12) of the rendered inputs; checked at load (templates allowed in
    /// place of any value) and again on the rendered inputs before each run.
    pub input_schema: Value,
    /// The outputs `execute` returns as a JSON object.
    pub outputs: Vec<OutputSpec>,
    /// The connection kind the step needs, if any.
    pub connection_kind: Option<ConnectionKind>,
    /// Whether the step's outputs refine the trigger's: each output replaces the trigger output
    /// of the same name for the steps after it (a step that reads the full record an
    /// event-only webhook names, say). The step's outputs stay under `steps.<id>` too.
    pub refines_trigger: bool,
    /// Whether the step branches: a branching step's outputs carry `path`, the name of the path
    /// (in the flow's `"paths"`) that runs next; a name with no path falls back to `default`.
    pub paths: PathRule,
}

impl StepDescription {
    /// A step named `type_name` that takes any object as inputs, has no declared outputs, no
    /// connection and no paths.
    pub fn new(type_name: &'static str, summary: &'static str) -> Self {
        StepDescription {
            type_name,
            summary,
            input_schema: serde_json::json!({"type": "object"}),
            outputs: Vec::new(),
            connection_kind: None,
            refines_trigger: false,
            paths: PathRule::None,
        }
    }

    /// The JSON Schema (2020-12) of the inputs.
    #[must_use]
    pub fn input_schema(mut self, schema: Value) -> Self {
        self.input_schema = schema;
        self
    }

    /// One more output, reached by templates as `steps.<id>.<name>`.
    #[must_use]
    pub fn output(mut self, name: &'static str, description: &'static str) -> Self {
        self.outputs.push(OutputSpec { name, description });
        self
    }

    /// More outputs at once (a list shared by several steps, say).
    #[must_use]
    pub fn outputs(mut self, outputs: &[OutputSpec]) -> Self {
        self.outputs.extend_from_slice(outputs);
        self
    }

    /// The connection kind the step takes (its `"connection"`, else the kind's default).
    #[must_use]
    pub fn connection_kind(mut self, kind: ConnectionKind) -> Self {
        self.connection_kind = Some(kind);
        self
    }

    /// The step's outputs refine the trigger's (see [`StepDescription::refines_trigger`]).
    #[must_use]
    pub fn refining_trigger(mut self) -> Self {
        self.refines_trigger = true;
        self
    }

    /// The step branches, with the paths `rule` allows.
    #[must_use]
    pub fn paths(mut self, rule: PathRule) -> Self {
        self.paths = rule;
        self
    }
}

/// Whether a step may be sent again after an attempt whose outcome is unknown (a timeout, a
/// reset connection, a 5xx, or a crash between sending and recording).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resend {
    /// Sending again changes nothing (reads, updates that set fields).
    Safe,
    /// Sending again could create a duplicate: [`Step::find_previous`] looks for the earlier
    /// attempt's effect first, and the step is sent again only when nothing is found.
    LookUpFirst,
    /// Sending again could duplicate and nothing can be looked up: the step fails with
    /// `outcome_unknown` instead (retried only after failures that certainly changed nothing).
    Never,
}

/// One operation a flow can run. Object-safe: the registry holds `Arc<dyn Step>`.
///
/// Implementations need `#[async_trait]` (re-exported by `haloflow::prelude`): `execute` and
/// `find_previous` are async, and the attribute keeps the trait object-safe. Every step
/// chooses its [`Resend`]:
///
/// ```
/// use async_trait::async_trait;
/// use haloflow_core::step::{Resend, Step, StepContext, StepDescription, StepError};
/// use serde_json::{Value, json};
///
/// struct Echo;
///
/// #[async_trait]
/// impl Step for Echo {
///     fn describe(&self) -> StepDescription {
///         StepDescription::new("demo.echo", "Returns its inputs.")
///             .input_schema(json!({"type": "object"}))
///     }
///     // Echoing changes nothing anywhere: sending it again is harmless.
///     fn resend(&self, _inputs: &Value) -> Resend { Resend::Safe }
///     async fn execute(&self, _ctx: &StepContext, inputs: Value) -> Result<Value, StepError> {
///         Ok(inputs)
///     }
/// }
/// ```
///
/// A step that leaves the choice out does not compile:
///
/// ```compile_fail,E0046
/// use async_trait::async_trait;
/// use haloflow_core::step::{Resend, Step, StepContext, StepDescription, StepError};
/// use serde_json::{Value, json};
///
/// struct Echo;
///
/// #[async_trait]
/// impl Step for Echo {
///     fn describe(&self) -> StepDescription {
///         StepDescription::new("demo.echo", "Returns its inputs.")
///             .input_schema(json!({"type": "object"}))
///     }
///     async fn execute(&self, _ctx: &StepContext, inputs: Value) -> Result<Value, StepError> {
///         Ok(inputs)
///     }
/// }
/// ```
#[async_trait]
pub trait Step: Send + Sync + 'static {
    /// What the step is: type name, summary, input schema, outputs, connection kind, paths.
    /// The registry asks once, when the step is registered, and keeps the answer.
    fn describe(&self) -> StepDescription;
    /// Runs the step with rendered, schema-checked inputs; returns an object with the outputs.
    async fn execute(&self, ctx: &StepContext, inputs: Value) -> Result<Value, StepError>;
    /// Whether these inputs may be sent again after an attempt whose outcome is unknown (its
    /// answer was lost). Required: a wrong default either duplicates what a step creates or
    /// fails steps that could simply be sent again.
    ///
    /// - [`Resend::Safe`]: sending twice does what sending once does: reads, updates that set
    ///   fields to given values, deletes, steps with no effect outside the run.
    /// - [`Resend::LookUpFirst`]: the step creates something it can find again: write
    ///   [`StepContext::idempotency_key`] into it and implement [`Step::find_previous`].
    /// - [`Resend::Never`]: the step creates something it cannot find again (a chat message, an
    ///   email, a POST to a system without search): after a lost answer it fails with
    ///   `outcome_unknown` for a person to check, rather than risk a duplicate.
    fn resend(&self, inputs: &Value) -> Resend;
    /// For [`Resend::LookUpFirst`]: finds what an earlier attempt of this step run created
    /// (by [`StepContext::idempotency_key`]) and returns the outputs `execute` would have.
    async fn find_previous(
        &self,
        _ctx: &StepContext,
        _inputs: &Value,
    ) -> Result<Option<Value>, StepError> {
        Ok(None)
    }
}

/// What a step may use while it runs.
#[derive(Debug, Clone)]
pub struct StepContext {
    pub flow_id: String,
    pub run_id: String,
    pub step_id: String,
    /// The connection named on the step (or the default), for steps that take one.
    pub connection: Option<String>,
    pub(crate) connections: Arc<Connections>,
    pub(crate) http: Outbound,
    pub(crate) shutdown: tokio::sync::watch::Receiver<bool>,
    /// Where links between a ticket and a record of another system live.
    pub(crate) storage: Arc<dyn crate::storage::Storage>,
    /// When this step's first attempt started (ms since the epoch), across restarts.
    pub(crate) first_attempt_at_ms: Option<i64>,
}

impl StepContext {
    /// Sends HTTP requests; recorded in the run history, previewed in a dry run.
    pub fn http(&self) -> &Outbound {
        &self.http
    }

    /// Sends `request` through [`StepContext::http`] (recorded, previewed in a dry run) and
    /// turns an answer outside 2xx into [`StepError::Status`] with an excerpt of its body and
    /// its `Retry-After`: the engine then retries what the error table says is worth retrying
    /// (429, 502, 503, 504, timeouts) and fails the rest. Build the request with
    /// [`HttpConnection::request`](crate::connections::HttpConnection::request) to get the
    /// connection's base URL, credentials and timeout.
    pub async fn send(
        &self,
        request: crate::outbound::OutboundRequest,
    ) -> Result<crate::outbound::OutboundResponse, StepError> {
        let method = request.method.clone();
        let url = request.url.clone();
        let response = self.http.send(request).await?;
        if response.is_success() {
            Ok(response)
        } else {
            Err(StepError::from_status(&method, &url, &response))
        }
    }

    /// A key unique to this step of this run, the same on every attempt and after a restart:
    /// write it into what the step creates so [`Step::find_previous`] can find it again.
    pub fn idempotency_key(&self) -> String {
        format!("haloflow:{}:{}", self.run_id, self.step_id)
    }

    /// When this step's first attempt started (ms since the epoch), the same after a restart:
    /// what an earlier attempt created cannot be older than this.
    pub fn first_attempt_at_ms(&self) -> Option<i64> {
        self.first_attempt_at_ms
    }

    /// True once the engine is shutting down; long-running steps should stop early.
    pub fn is_cancelled(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Completes when the engine starts shutting down (use it in a `tokio::select!`).
    pub async fn cancelled(&self) {
        let mut shutdown = self.shutdown.clone();
        let _ = shutdown.wait_for(|down| *down).await;
    }

    /// True in a dry run, where outputs of earlier steps are placeholders such as
    /// `{{steps.create.ticket_id}}` (see [`is_placeholder`]).
    pub fn is_dry_run(&self) -> bool {
        self.http.dry_run_recorder().is_some()
    }

    /// The HTTP connection this step names, if any.
    pub fn http_connection(
        &self,
    ) -> Result<Option<Arc<crate::connections::HttpConnection>>, StepError> {
        self.connection
            .as_deref()
            .map(|name| self.connections.http(name).map_err(StepError::from))
            .transpose()
    }

    /// The connection of `kind` this step names (or the kind's default), as the type its
    /// integration built, e.g. `ctx.connection::<ChatConnection>(CHAT)` for an integration's
    /// `ChatConnection`s of kind `CHAT`.
    pub fn connection<C: std::any::Any + Send + Sync>(
        &self,
        kind: ConnectionKind,
    ) -> Result<Arc<C>, StepError> {
        let name = self.connection.as_deref().ok_or_else(|| {
            StepError::Connection(format!("this step has no {} connection", kind.label()))
        })?;
        Ok(self.connections.get(kind, name)?)
    }

    /// Every configured connection, for a step that picks one from its data (an instance by
    /// the ticket's client, say) rather than by the step's `"connection"`.
    pub fn connections(&self) -> &Arc<Connections> {
        &self.connections
    }

    /// The run's storage, for a step that keeps state of its own there (an integration's links
    /// between a ticket and a record of another system, its sync claims).
    pub fn storage(&self) -> &Arc<dyn crate::storage::Storage> {
        &self.storage
    }

    /// The link of ticket `ticket_id` of this step's connection to a record of another
    /// system, if any.
    pub async fn link_for_ticket(&self, ticket_id: i64) -> Result<Option<Link>, StepError> {
        let connection = self.connection.as_deref().unwrap_or_default();
        self.storage
            .link_for_ticket(connection, ticket_id)
            .await
            .map_err(|e| StepError::storage("reading the ticket's link", e))
    }

    /// Records a link (replacing the ticket's earlier one, which is returned).
    pub async fn save_link(&self, link: &Link) -> Result<Option<Link>, StepError> {
        self.storage
            .save_link(link)
            .await
            .map_err(|e| StepError::storage("recording the link", e))
    }
}

/// True for a dry-run placeholder standing for an earlier step's output.
pub fn is_placeholder(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|s| s.starts_with("{{steps.") && s.ends_with("}}"))
}

/// Why a step failed. Steps say whether trying again could help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StepError {
    /// The rendered inputs are wrong; `pointer` is relative to the step's `inputs`.
    #[error("input {pointer}: {message}")]
    Input { pointer: String, message: String },
    /// A connection is missing or misconfigured (config file, secrets).
    #[error("{0}")]
    Connection(String),
    /// The request did not complete (connect error, timeout, broken body).
    #[error(transparent)]
    Transport(TransportError),
    /// The remote system answered with an error status.
    #[error("{method} {url} answered {status}: {message}")]
    Status {
        method: String,
        url: String,
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    /// The remote system answered 2xx with something we cannot use.
    #[error("{0}")]
    Response(String),
    /// An earlier attempt may have taken effect and the step cannot look it up, so it is not
    /// sent again.
    #[error("{0}")]
    OutcomeUnknown(String),
    /// A dry run stopped the step before its first request was sent.
    #[error("dry run: the request was not sent")]
    DryRun,
    /// Haloflow's own storage could not be read or written, usually a passing database error.
    #[error("{0}")]
    Storage(String),
    #[error("{0}")]
    Failed(String),
}

impl StepError {
    /// The error for an answer outside what the step expected: method, URL (credentials
    /// masked), status, the first 300 characters of the body, and `Retry-After`.
    pub fn from_status(
        method: &reqwest::Method,
        url: &str,
        response: &crate::outbound::OutboundResponse,
    ) -> StepError {
        let mut message: String = response.text().chars().take(300).collect();
        if message.is_empty() {
            message = "(empty body)".into();
        }
        StepError::Status {
            method: method.to_string(),
            url: crate::outbound::redact_url(url),
            status: response.status,
            message,
            retry_after: response.retry_after,
        }
    }
}

impl From<OutboundError> for StepError {
    fn from(error: OutboundError) -> Self {
        match error {
            OutboundError::Transport(failure) => StepError::Transport(failure),
            OutboundError::DryRun => StepError::DryRun,
        }
    }
}

impl From<NoConnection> for StepError {
    fn from(error: NoConnection) -> Self {
        StepError::Connection(error.to_string())
    }
}

impl StepError {
    /// A storage error met while a step or sync runs: a database hiccup should not fail it
    /// for good.
    pub fn storage(what: &str, error: crate::storage::StorageError) -> StepError {
        StepError::Storage(format!("{what} failed: {error}"))
    }

    /// A 400 or 401 answer to a token request, with `hint` (what to check) after its message;
    /// any other error as it is.
    pub fn with_credentials_hint(self, hint: impl FnOnce() -> String) -> StepError {
        match self {
            StepError::Status {
                status: status @ (400 | 401),
                method,
                url,
                message,
                retry_after,
            } => StepError::Status {
                method,
                url,
                status,
                message: format!("{message}. {}", hint()),
                retry_after,
            },
            other => other,
        }
    }

    /// Connection failures, timeouts, 408, 409, 429, 5xx other than 501 and storage errors
    /// may succeed later; other 4xx will not.
    pub fn is_retryable(&self) -> bool {
        match self {
            StepError::Transport(failure) => failure.retryable,
            StepError::Storage(_) => true,
            StepError::Status { status, .. } => {
                matches!(status, 408 | 409 | 429) || (*status >= 500 && *status != 501)
            }
            _ => false,
        }
    }

    /// True when the remote system may have acted on the request: the answer was lost (timeout,
    /// reset) or it failed after starting (500, 502, 504). 408, 429 and 503 mean it did not.
    /// A storage error may follow a request that took effect (a link written after the record
    /// it links was created), so a step that can look up what it made does so before resending.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            StepError::Transport(failure) => failure.sent,
            StepError::Storage(_) => true,
            StepError::Status { status, .. } => matches!(status, 500 | 502 | 504),
            _ => false,
        }
    }

    /// How long the remote system asked us to wait (`Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            StepError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The stable code recorded with a failed step.
    pub fn code(&self) -> &'static str {
        match self {
            StepError::Input { .. } => "invalid_input",
            StepError::Connection(_) => "connection_error",
            StepError::Transport(_) => "transport_error",
            StepError::Status { .. } => "http_status",
            StepError::Response(_) => "bad_response",
            StepError::OutcomeUnknown(_) => "outcome_unknown",
            StepError::DryRun => "dry_run",
            StepError::Storage(_) => "storage_error",
            StepError::Failed(_) => "step_failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_status_names_the_request_and_keeps_retry_after() {
        let response = crate::outbound::OutboundResponse {
            status: 503,
            retry_after: Some(Duration::from_secs(4)),
            body: b"busy".to_vec(),
        };
        let url = "https://user:pw@chat.example/hooks/ops";
        let error = StepError::from_status(&reqwest::Method::POST, url, &response);
        assert_eq!(error.retry_after(), Some(Duration::from_secs(4)));
        assert!(error.is_retryable(), "{error}");
        let text = error.to_string();
        assert!(
            text.contains("POST") && text.contains("503") && text.contains("busy"),
            "{text}"
        );
        assert!(
            !text.contains("pw@"),
            "credentials in the URL are masked: {text}"
        );
        let empty = crate::outbound::OutboundResponse {
            status: 400,
            retry_after: None,
            body: Vec::new(),
        };
        let error = StepError::from_status(&reqwest::Method::GET, "https://x.example/", &empty);
        assert!(!error.is_retryable());
        assert!(error.to_string().contains("(empty body)"));
    }

    fn status(status: u16) -> StepError {
        StepError::Status {
            method: "POST".into(),
            url: "u".into(),
            status,
            message: String::new(),
            retry_after: None,
        }
    }

    #[test]
    fn a_storage_error_is_retried_and_looked_up_first() {
        let error =
            StepError::storage("recording the link", crate::storage::StorageError::Conflict);
        assert!(error.is_retryable());
        assert!(error.outcome_unknown());
        assert_eq!(error.code(), "storage_error");
    }

    #[test]
    fn retryable_statuses() {
        for s in [408, 409, 429, 500, 502, 503] {
            assert!(status(s).is_retryable(), "{s}");
        }
        for s in [400, 401, 404, 422, 501] {
            assert!(!status(s).is_retryable(), "{s}");
        }
    }
}
