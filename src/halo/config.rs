//! `[halo.<name>]`: the Halo instances steps connect to, by name.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{Config, Problems, Section, default_timeout_secs};

/// The `[halo]` section: Halo connections by name; steps pick one with
/// `"connection": "<name>"` (default `halo`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(transparent)]
pub struct HaloConfig(pub BTreeMap<String, HaloConnectionConfig>);

impl Section for HaloConfig {
    const TABLE: &'static str = "halo";
}

impl std::ops::Deref for HaloConfig {
    type Target = BTreeMap<String, HaloConnectionConfig>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for HaloConfig {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// Every problem of the `[halo]` section, each at its key path.
pub(super) fn check(config: &Config, problems: &mut Problems) {
    let Some(halo) = problems.section::<HaloConfig>(config) else {
        return;
    };
    for (name, connection) in halo.iter() {
        check_connection(problems.at(format!("[halo.{name}]")), connection);
    }
}

/// Problems of one `[halo.<name>]` table.
fn check_connection(problems: &mut Problems, halo: &HaloConnectionConfig) {
    problems.url("base_url", &halo.base_url, "https://<tenant>.haloitsm.com");
    if let Some(auth) = &halo.auth_url {
        problems.url("auth_url", auth, "https://<tenant>.haloitsm.com/auth");
    }
    let why =
        "the client id of the API application in Halo (Configuration > Integrations > Halo API)";
    problems.present("client_id", Some(&halo.client_id), why);
    let why = "the name of the secret (environment variable or [secrets] entry) holding the client secret";
    problems.present("client_secret_name", Some(&halo.client_secret_name), why);
    if let Err(e) = halo.idempotency() {
        let message = e.strip_prefix("idempotency_field: ").unwrap_or(&e);
        problems.add("idempotency_field", message);
    }
    if halo.timeout_secs == 0 {
        problems.add(
            "timeout_secs",
            "is 0; give requests at least 1 second (default 30)",
        );
    }
    if halo.rate_limit_requests > 0 && halo.rate_limit_window_secs == 0 {
        problems.add(
            "rate_limit_window_secs",
            "is 0 with rate_limit_requests set; write Halo's window (300) or rate_limit_requests = 0 to turn pacing off",
        );
    }
}

/// One Halo instance reached with OAuth client credentials
/// (`../shared/reference/halo-api.md` §1).
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// Halo's rate limit counts requests per tenant over a rolling window (300 to 700 per 5
    /// minutes depending on the plan, halo-api.md §6). Requests are paced to stay under it, so
    /// a burst of runs waits instead of collecting 429s; leave a margin below the tenant's
    /// limit, since Halo counts arrivals, not sends. 0 turns pacing off.
    #[serde(default = "default_rate_limit_requests")]
    pub rate_limit_requests: u32,
    #[serde(default = "default_rate_limit_window_secs")]
    pub rate_limit_window_secs: u64,
    /// Where Create Ticket writes its idempotency key so a create whose answer was lost is
    /// found instead of sent twice: `third_party_id_string` (a string in Halo's schema),
    /// `customfield:<id>` (a text custom field), or `none`.
    #[serde(default = "default_idempotency_field")]
    pub idempotency_field: String,
}

/// Under the lowest limit seen (300 per 5 minutes), with a margin for requests in flight.
fn default_rate_limit_requests() -> u32 {
    280
}

fn default_rate_limit_window_secs() -> u64 {
    300
}

fn default_idempotency_field() -> String {
    "third_party_id_string".to_owned()
}

/// Where a Halo create carries its idempotency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdempotencyField {
    /// `third_party_id_string`, typed `string` in Halo's schema (`third_party_id` is an int32).
    ThirdPartyIdString,
    CustomField(i64),
    None,
}

fn default_scope() -> String {
    "all".to_owned()
}

impl HaloConnectionConfig {
    /// A connection with every optional setting at its default.
    pub fn new(
        base_url: impl Into<String>,
        client_id: impl Into<String>,
        client_secret_name: impl Into<String>,
    ) -> Self {
        HaloConnectionConfig {
            base_url: base_url.into(),
            auth_url: None,
            tenant: None,
            client_id: client_id.into(),
            client_secret_name: client_secret_name.into(),
            scope: default_scope(),
            timeout_secs: default_timeout_secs(),
            rate_limit_requests: default_rate_limit_requests(),
            rate_limit_window_secs: default_rate_limit_window_secs(),
            idempotency_field: default_idempotency_field(),
        }
    }

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

    pub fn idempotency(&self) -> Result<IdempotencyField, String> {
        match self.idempotency_field.as_str() {
            "third_party_id_string" => Ok(IdempotencyField::ThirdPartyIdString),
            "third_party_id" => Err(
                "idempotency_field: `third_party_id` is an integer in Halo's schema and cannot hold haloflow's key; use \"third_party_id_string\" (the default) or \"customfield:<id>\"".to_owned()
            ),
            "none" => Ok(IdempotencyField::None),
            other => other
                .strip_prefix("customfield:")
                .and_then(|id| id.trim().parse::<i64>().ok())
                .map(IdempotencyField::CustomField)
                .ok_or_else(|| {
                    format!(
                        "idempotency_field: `{other}` is not third_party_id_string, customfield:<id> or none"
                    )
                }),
        }
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
        let halo = config.section::<HaloConfig>().unwrap();
        let main = &halo["main"];
        assert_eq!(main.token_url(), "https://acme.haloitsm.com/auth/token");
        assert_eq!(
            main.api_url("Tickets"),
            "https://acme.haloitsm.com/api/Tickets"
        );
        assert_eq!(main.scope, "all");
        assert_eq!(config.server.max_body_bytes, 1024 * 1024);
    }
}
