//! Connections to target systems, built from the config file and the secret store. The core
//! builds its own kind (`[http.<name>]`); each integration builds its kinds through a
//! [`ConnectionsBuilder`] and finds them again by type in [`Connections`], which does not know
//! what they are.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use base64::Engine as _;

use crate::config::Config;
use crate::secrets::{Secret, SecretStore};

/// A kind of connection: the config table its connections are in, and the connection a step
/// of this kind uses when it names none. Integrations define their own as constants:
///
/// ```
/// use haloflow_core::connections::ConnectionKind;
///
/// /// `[chat.<name>]`; steps without `"connection"` use `chat`.
/// pub const CHAT: ConnectionKind = ConnectionKind::new("chat", "chat").with_default("chat");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionKind {
    table: &'static str,
    label: &'static str,
    default_name: Option<&'static str>,
}

impl ConnectionKind {
    /// `[http.<name>]`; optional: without one, an `http.request` step sends no credentials.
    pub const HTTP: ConnectionKind = ConnectionKind::new("http", "HTTP");

    /// Connections in `[<table>.<name>]`, called `label` in messages ("no Halo connection
    /// named ...").
    pub const fn new(table: &'static str, label: &'static str) -> Self {
        ConnectionKind {
            table,
            label,
            default_name: None,
        }
    }

    /// The connection a step of this kind uses when it names none.
    pub const fn with_default(self, name: &'static str) -> Self {
        ConnectionKind {
            default_name: Some(name),
            ..self
        }
    }

    /// The config table the connections are in, e.g. `halo`.
    pub fn config_table(self) -> &'static str {
        self.table
    }

    /// The kind's name in messages, e.g. `Halo`.
    pub fn label(self) -> &'static str {
        self.label
    }

    /// The connection used when a step names none.
    pub fn default_name(self) -> Option<&'static str> {
        self.default_name
    }
}

/// Every configured connection, by kind and name. Each is kept as the type its integration
/// built and found again by that type ([`Connections::get`]).
#[derive(Default)]
pub struct Connections {
    /// `Arc<C>` boxed as `Any`, by config table and name.
    by_kind: BTreeMap<&'static str, BTreeMap<String, Box<dyn Any + Send + Sync>>>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = (self.by_kind.iter())
            .flat_map(|(table, named)| named.keys().map(move |name| format!("{table}.{name}")))
            .collect();
        f.debug_struct("Connections")
            .field("connections", &names)
            .finish()
    }
}

/// A step or an integration asked for a connection that is not configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no {label} connection named `{name}`; add a [{table}.{name}] table to the config file")]
pub struct NoConnection {
    pub label: &'static str,
    pub table: &'static str,
    pub name: String,
}

impl Connections {
    /// The connection `name` of `kind`, as the type its integration built.
    pub fn get<C: Any + Send + Sync>(
        &self,
        kind: ConnectionKind,
        name: &str,
    ) -> Result<Arc<C>, NoConnection> {
        self.find(kind, name).ok_or_else(|| NoConnection {
            label: kind.label,
            table: kind.table,
            name: name.to_owned(),
        })
    }

    /// The connection `name` of `kind`, if it is configured (and of type `C`).
    pub fn find<C: Any + Send + Sync>(&self, kind: ConnectionKind, name: &str) -> Option<Arc<C>> {
        (self.by_kind.get(kind.table)?.get(name))
            .and_then(|c| c.downcast_ref::<Arc<C>>())
            .cloned()
    }

    /// Every connection of `kind`, by name.
    pub fn all<C: Any + Send + Sync>(&self, kind: ConnectionKind) -> impl Iterator<Item = &Arc<C>> {
        (self.by_kind.get(kind.table).into_iter())
            .flat_map(|named| named.values())
            .filter_map(|c| c.downcast_ref::<Arc<C>>())
    }

    /// The names of the connections of `kind`.
    pub fn names(&self, kind: ConnectionKind) -> impl Iterator<Item = &str> {
        (self.by_kind.get(kind.table).into_iter())
            .flat_map(|named| named.keys())
            .map(String::as_str)
    }

    /// The `[http.<name>]` connection `name`.
    pub fn http(&self, name: &str) -> Result<Arc<HttpConnection>, NoConnection> {
        self.get(ConnectionKind::HTTP, name)
    }
}

/// A generic HTTP connection with its credentials resolved.
#[derive(Debug)]
pub struct HttpConnection {
    pub name: String,
    pub base_url: String,
    pub timeout: std::time::Duration,
    /// The header that carries the credentials (always sent as a secret).
    pub auth_header: Option<(String, crate::secrets::Secret)>,
}

impl HttpConnection {
    /// A request to `path` under this connection: `path` is joined to `base_url` (one `/`
    /// between them), the credentials header is added as a secret (masked in the run history,
    /// logs and dry runs) and the connection's timeout applies. Send it with
    /// [`StepContext::send`](crate::step::StepContext::send) to turn error statuses into
    /// step errors.
    pub fn request(&self, method: reqwest::Method, path: &str) -> crate::outbound::OutboundRequest {
        let url = format!(
            "{}/{}",
            self.base_url.trim_end_matches('/'),
            path.trim_start_matches('/')
        );
        let mut request = crate::outbound::OutboundRequest::new(method, url).timeout(self.timeout);
        if let Some((name, value)) = &self.auth_header {
            request = request.header(crate::outbound::Field::secret(name, value.expose()));
        }
        request
    }
}

/// A connection whose secret is not set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "[{table}.{connection}]: secret `{secret}` is not set. Set the environment variable {secret} or add it under [secrets] in the config file"
)]
pub struct MissingSecret {
    pub table: &'static str,
    pub connection: String,
    pub secret: String,
}

/// Which connections to build, and so whose secrets a command needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Needed {
    /// Every connection of the config (`serve`, `connections check`).
    #[default]
    All,
    /// Only these (`run` of one flow): connections by (config table, name), and the step
    /// types the flows use (an integration whose connection a step picks at run time, like
    /// ServiceNow's by the ticket's client, builds its connections when its steps are used).
    Only {
        connections: BTreeSet<(&'static str, String)>,
        step_types: BTreeSet<&'static str>,
    },
}

impl Needed {
    /// Whether connection `name` of `kind` is needed.
    pub fn connection(&self, kind: ConnectionKind, name: &str) -> bool {
        match self {
            Needed::All => true,
            Needed::Only { connections, .. } => {
                connections.contains(&(kind.table, name.to_owned()))
            }
        }
    }

    /// Whether a step whose type starts with `prefix` (e.g. `servicenow.`) is used.
    pub fn steps_of(&self, prefix: &str) -> bool {
        match self {
            Needed::All => true,
            Needed::Only { step_types, .. } => step_types.iter().any(|t| t.starts_with(prefix)),
        }
    }
}

/// What connections are built from, and where they go: the core's and each integration's
/// connection building (its `Integration::build_connections`). Missing secrets are collected,
/// so every one is reported at once.
pub struct ConnectionsBuilder<'a> {
    config: &'a Config,
    secrets: &'a SecretStore,
    needed: &'a Needed,
    built: Connections,
    missing: Vec<MissingSecret>,
}

impl<'a> ConnectionsBuilder<'a> {
    pub fn new(config: &'a Config, secrets: &'a SecretStore, needed: &'a Needed) -> Self {
        ConnectionsBuilder {
            config,
            secrets,
            needed,
            built: Connections::default(),
            missing: Vec::new(),
        }
    }

    /// The config the connections come from.
    pub fn config(&self) -> &'a Config {
        self.config
    }

    /// Which connections to build.
    pub fn needed(&self) -> &'a Needed {
        self.needed
    }

    /// The secret `name`; when it is not set, `None`, and it is reported missing for
    /// `[table.connection]`.
    pub fn secret(&mut self, table: &'static str, connection: &str, name: &str) -> Option<Secret> {
        let found = self.secrets.get(name);
        if found.is_none() {
            self.missing.push(MissingSecret {
                table,
                connection: connection.to_owned(),
                secret: name.to_owned(),
            });
        }
        found
    }

    /// Adds a connection of `kind`.
    pub fn insert<C: Any + Send + Sync>(
        &mut self,
        kind: ConnectionKind,
        name: impl Into<String>,
        connection: Arc<C>,
    ) {
        (self.built.by_kind.entry(kind.table).or_default())
            .insert(name.into(), Box::new(connection));
    }

    /// Whether a connection of `kind` named `name` was built already.
    pub fn contains(&self, kind: ConnectionKind, name: &str) -> bool {
        (self.built.by_kind.get(kind.table)).is_some_and(|named| named.contains_key(name))
    }

    /// The connections, or every secret that is missing.
    pub fn finish(self) -> Result<Connections, Vec<MissingSecret>> {
        if self.missing.is_empty() {
            Ok(self.built)
        } else {
            Err(self.missing)
        }
    }

    /// Builds the `[http.<name>]` connections.
    pub fn build_http(&mut self) {
        let (config, needed) = (self.config, self.needed);
        for (name, settings) in
            (config.http.iter()).filter(|(n, _)| needed.connection(ConnectionKind::HTTP, n))
        {
            let auth_header = self.http_auth_header(name, settings);
            let connection = HttpConnection {
                name: name.clone(),
                base_url: settings.base_url.trim_end_matches('/').to_owned(),
                timeout: std::time::Duration::from_secs(settings.timeout_secs),
                auth_header,
            };
            self.insert(ConnectionKind::HTTP, name.clone(), Arc::new(connection));
        }
    }

    /// The header an HTTP connection's credentials go in.
    fn http_auth_header(
        &mut self,
        name: &str,
        settings: &crate::config::HttpConnectionConfig,
    ) -> Option<(String, Secret)> {
        let mut secret = |secret_name: &String| self.secret("http", name, secret_name);
        if let Some(token) = &settings.bearer_token_secret_name {
            secret(token).map(|t| {
                (
                    "Authorization".to_owned(),
                    Secret::new(format!("Bearer {}", t.expose())),
                )
            })
        } else if let (Some(user), Some(password)) = (
            &settings.basic_username,
            &settings.basic_password_secret_name,
        ) {
            secret(password).map(|p| {
                let encoded = base64::engine::general_purpose::STANDARD
                    .encode(format!("{user}:{}", p.expose()));
                (
                    "Authorization".to_owned(),
                    Secret::new(format!("Basic {encoded}")),
                )
            })
        } else if let (Some(header), Some(value)) =
            (&settings.header_name, &settings.header_secret_name)
        {
            secret(value).map(|v| (header.clone(), v))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_under_a_connection_has_its_base_url_secret_credentials_and_timeout() {
        let connection = HttpConnection {
            name: "chat".into(),
            base_url: "https://chat.example/hooks/".into(),
            timeout: std::time::Duration::from_secs(7),
            auth_header: Some(("X-Chat-Token".into(), Secret::new("s3cr3t-token"))),
        };
        let request = connection.request(reqwest::Method::POST, "/ops");
        assert_eq!(request.url, "https://chat.example/hooks/ops");
        assert_eq!(request.timeout, std::time::Duration::from_secs(7));
        let preview = request.preview();
        assert_eq!(preview.headers.len(), 1);
        assert_eq!(preview.headers[0].0, "X-Chat-Token");
        assert!(
            !format!("{preview:?}").contains("s3cr3t-token"),
            "the credentials are a secret: {preview:?}"
        );
    }
}
