//! Connections to target systems, built from the config file and the secret store.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::Config;
use crate::halo::HaloConnection;
use crate::secrets::SecretStore;
use crate::step::StepError;

/// Every configured connection, by kind and name.
#[derive(Debug, Default)]
pub struct Connections {
    halo: BTreeMap<String, Arc<HaloConnection>>,
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

impl Connections {
    /// Builds every connection; all missing secrets are reported together.
    pub fn from_config(config: &Config, secrets: &SecretStore) -> Result<Self, Vec<MissingSecret>> {
        let mut missing = Vec::new();
        let mut halo = BTreeMap::new();
        for (name, settings) in &config.halo {
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
        if missing.is_empty() {
            Ok(Connections { halo })
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

    pub fn halo_names(&self) -> impl Iterator<Item = &str> {
        self.halo.keys().map(String::as_str)
    }
}
