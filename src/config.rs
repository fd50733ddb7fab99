//! The `haloflow.toml` configuration file: server settings, connections to Halo instances and
//! optional secret values. Connections live here, never in flow files, so one flow can run
//! against a test and a production Halo unchanged.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    /// Halo connections by name; steps pick one with `"connection": "<name>"`.
    #[serde(default)]
    pub halo: BTreeMap<String, HaloConnectionConfig>,
    /// Connections of the generic `http.request` step, by name.
    #[serde(default)]
    pub http: BTreeMap<String, HttpConnectionConfig>,
    /// Secret values by name, for secrets not set in the environment. Keep this file private.
    #[serde(default)]
    pub secrets: HashMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the HTTP server listens on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Largest accepted webhook body, in bytes; larger bodies are answered 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// The URL Halo reaches this server at, used when printing trigger URLs.
    #[serde(default)]
    pub public_url: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            max_body_bytes: default_max_body_bytes(),
            public_url: None,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_max_body_bytes() -> usize {
    1024 * 1024
}

/// One Halo instance reached with OAuth client credentials
/// (`../shared/reference/halo-api.md` §1).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaloConnectionConfig {
    /// The instance, e.g. `https://acme.haloitsm.com`; the API is under `{base_url}/api`.
    pub base_url: String,
    /// The authorisation server; defaults to `{base_url}/auth`. Tokens come from `{auth_url}/token`.
    #[serde(default)]
    pub auth_url: Option<String>,
    /// Tenant, sent as `?tenant=` on the token request for Halo-hosted instances.
    #[serde(default)]
    pub tenant: Option<String>,
    pub client_id: String,
    /// Name of the secret (environment variable or `[secrets]` entry) holding the client secret.
    pub client_secret_name: String,
    #[serde(default = "default_scope")]
    pub scope: String,
    /// Per-request timeout in seconds.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

fn default_scope() -> String {
    "all".to_owned()
}

fn default_timeout_secs() -> u64 {
    30
}

impl HaloConnectionConfig {
    pub fn token_url(&self) -> String {
        let auth = match &self.auth_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("{}/auth", self.base_url.trim_end_matches('/')),
        };
        format!("{auth}/token")
    }

    pub fn api_url(&self, path: &str) -> String {
        format!("{}/api/{}", self.base_url.trim_end_matches('/'), path)
    }
}

/// A base URL and credentials for `http.request` steps. At most one kind of credentials.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConnectionConfig {
    /// Relative step URLs are joined to this; absolute ones must start with it.
    pub base_url: String,
    /// Sends `Authorization: Bearer <secret>`.
    #[serde(default)]
    pub bearer_token_secret_name: Option<String>,
    /// Sends HTTP Basic with this user and the password in `basic_password_secret_name`.
    #[serde(default)]
    pub basic_username: Option<String>,
    #[serde(default)]
    pub basic_password_secret_name: Option<String>,
    /// Sends the secret in this header (e.g. `X-API-Key`).
    #[serde(default)]
    pub header_name: Option<String>,
    #[serde(default)]
    pub header_secret_name: Option<String>,
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

/// A configuration file that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the config file: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}. Check the file against the example in examples/haloflow.toml")]
    Parse { path: PathBuf, message: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', " "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_halo_connection_with_defaults() {
        let config = Config::parse(
            r#"
            [halo.main]
            base_url = "https://acme.haloitsm.com/"
            client_id = "abc"
            client_secret_name = "HALO_SECRET"
            "#,
        )
        .unwrap();
        let main = &config.halo["main"];
        assert_eq!(main.token_url(), "https://acme.haloitsm.com/auth/token");
        assert_eq!(
            main.api_url("Tickets"),
            "https://acme.haloitsm.com/api/Tickets"
        );
        assert_eq!(main.scope, "all");
        assert_eq!(config.server.max_body_bytes, 1024 * 1024);
    }

    #[test]
    fn rejects_unknown_keys_with_their_name() {
        let err = Config::parse("[server]\nlisten_port = 1\n").unwrap_err();
        assert!(err.contains("listen_port"), "{err}");
    }
}
