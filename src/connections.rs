//! Connections to target systems, built from the config file and the secret store.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::config::Config;
use crate::halo::HaloConnection;
use crate::servicenow::{ServiceNowConnection, Side};
use base64::Engine as _;

use crate::secrets::{Secret, SecretStore};
use crate::step::StepError;

/// Every configured connection, by kind and name.
#[derive(Debug, Default)]
pub struct Connections {
    halo: BTreeMap<String, Arc<HaloConnection>>,
    http: BTreeMap<String, Arc<HttpConnection>>,
    /// ServiceNow instances by side and Halo client or supplier id.
    servicenow: BTreeMap<(&'static str, String), Arc<ServiceNowConnection>>,
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
    /// Only these (`run` of one flow): Halo and HTTP connections by name, and whether the
    /// ServiceNow connections are used (a ServiceNow step picks one by the ticket's client).
    Only {
        halo: BTreeSet<String>,
        http: BTreeSet<String>,
        servicenow: bool,
    },
}

impl Needed {
    fn halo(&self, name: &str) -> bool {
        match self {
            Needed::All => true,
            Needed::Only { halo, .. } => halo.contains(name),
        }
    }

    fn http(&self, name: &str) -> bool {
        match self {
            Needed::All => true,
            Needed::Only { http, .. } => http.contains(name),
        }
    }

    fn servicenow(&self) -> bool {
        match self {
            Needed::All => true,
            Needed::Only { servicenow, .. } => *servicenow,
        }
    }
}

impl Connections {
    /// Builds every connection; all missing secrets are reported together.
    pub fn from_config(config: &Config, secrets: &SecretStore) -> Result<Self, Vec<MissingSecret>> {
        Self::from_config_for(config, secrets, &Needed::All)
    }

    /// Builds the connections `needed`; only their secrets must be set.
    pub fn from_config_for(
        config: &Config,
        secrets: &SecretStore,
        needed: &Needed,
    ) -> Result<Self, Vec<MissingSecret>> {
        let mut missing = Vec::new();
        let mut halo = BTreeMap::new();
        let halo_needed = |name: &str| {
            needed.halo(name)
                || (needed.servicenow()
                    && (config.servicenow.customers.values())
                        .chain(config.servicenow.suppliers.values())
                        .any(|sn| sn.halo_connection == name))
        };
        for (name, settings) in config.halo.iter().filter(|(n, _)| halo_needed(n)) {
            match secrets.get(&settings.client_secret_name) {
                Some(secret) => {
                    halo.insert(
                        name.clone(),
                        Arc::new(HaloConnection::new(name.clone(), settings.clone(), secret)),
                    );
                }
                None => missing.push(MissingSecret {
                    table: "halo",
                    connection: name.clone(),
                    secret: settings.client_secret_name.clone(),
                }),
            }
        }
        let mut http = BTreeMap::new();
        for (name, settings) in config.http.iter().filter(|(n, _)| needed.http(n)) {
            let mut secret = |secret_name: &String| match secrets.get(secret_name) {
                Some(value) => Some(value),
                None => {
                    missing.push(MissingSecret {
                        table: "http",
                        connection: name.clone(),
                        secret: secret_name.clone(),
                    });
                    None
                }
            };
            let auth_header = if let Some(token) = &settings.bearer_token_secret_name {
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
            };
            http.insert(
                name.clone(),
                Arc::new(HttpConnection {
                    name: name.clone(),
                    base_url: settings.base_url.trim_end_matches('/').to_owned(),
                    timeout: std::time::Duration::from_secs(settings.timeout_secs),
                    auth_header,
                }),
            );
        }
        let mut servicenow = BTreeMap::new();
        for (side, table, settings) in [
            (
                Side::Customer,
                "servicenow.customers",
                &config.servicenow.customers,
            ),
            (
                Side::Supplier,
                "servicenow.suppliers",
                &config.servicenow.suppliers,
            ),
        ] {
            for (id, connection) in settings.iter().filter(|_| needed.servicenow()) {
                // The webhook's secrets must exist too, or every webhook would be refused.
                if let Some(webhook) = &connection.webhook {
                    for name in [&webhook.secret_name, &webhook.hmac_secret_name]
                        .into_iter()
                        .flatten()
                    {
                        if secrets.get(name).is_none() {
                            missing.push(MissingSecret {
                                table,
                                connection: format!("\"{id}\".webhook"),
                                secret: name.clone(),
                            });
                        }
                    }
                }
                let secret_name = connection.secret_name().unwrap_or_default();
                match secrets.get(secret_name) {
                    Some(secret) => {
                        servicenow.insert(
                            (side.as_str(), id.clone()),
                            Arc::new(ServiceNowConnection::new(
                                side,
                                id.clone(),
                                connection.clone(),
                                secret,
                                &config.servicenow,
                            )),
                        );
                    }
                    None => missing.push(MissingSecret {
                        table,
                        connection: format!("\"{id}\""),
                        secret: secret_name.to_owned(),
                    }),
                }
            }
        }
        if missing.is_empty() {
            Ok(Connections {
                halo,
                http,
                servicenow,
            })
        } else {
            Err(missing)
        }
    }

    pub fn halo(&self, name: &str) -> Result<Arc<HaloConnection>, StepError> {
        self.halo.get(name).cloned().ok_or_else(|| {
            StepError::Connection(format!(
                "no Halo connection named `{name}`; add a [halo.{name}] table to the config file"
            ))
        })
    }

    pub fn http(&self, name: &str) -> Result<Arc<HttpConnection>, StepError> {
        self.http.get(name).cloned().ok_or_else(|| {
            StepError::Connection(format!(
                "no HTTP connection named `{name}`; add a [http.{name}] table to the config file"
            ))
        })
    }

    pub fn halo_names(&self) -> impl Iterator<Item = &str> {
        self.halo.keys().map(String::as_str)
    }

    /// The ServiceNow instance of a Halo customer (client id) or supplier (supplier id).
    pub fn servicenow(&self, side: Side, id: &str) -> Option<Arc<ServiceNowConnection>> {
        self.servicenow
            .get(&(side.as_str(), id.to_owned()))
            .cloned()
    }

    /// Every ServiceNow connection, customers first.
    pub fn servicenow_all(&self) -> impl Iterator<Item = &Arc<ServiceNowConnection>> {
        self.servicenow.values()
    }

    /// Every Halo connection, by name.
    pub fn halo_all(&self) -> impl Iterator<Item = &Arc<HaloConnection>> {
        self.halo.values()
    }
}
