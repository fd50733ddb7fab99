//! Secrets are referenced by name in flows and config, and resolved here: first from the
//! process environment, then from the config file's `[secrets]` table. The value type never
//! prints itself, so a secret cannot leak through `Debug`, logs or error text by accident.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// A secret value. `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Secret(value.into())
    }

    /// The value itself; call only where it goes on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where named secrets come from.
#[derive(Clone, Default)]
pub struct SecretStore {
    use_environment: bool,
    values: HashMap<String, Secret>,
}

impl fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretStore")
            .field("use_environment", &self.use_environment)
            .field("names", &self.values.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SecretStore {
    /// Environment first, then the given values (the config file's `[secrets]`).
    pub fn from_environment(values: HashMap<String, String>) -> Self {
        SecretStore {
            use_environment: true,
            values: values
                .into_iter()
                .map(|(k, v)| (k, Secret::new(v)))
                .collect(),
        }
    }

    /// Only the given values; the environment is not read (tests, the demo, embedders).
    pub fn from_values<I, K, V>(values: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        SecretStore {
            use_environment: false,
            values: values
                .into_iter()
                .map(|(k, v)| (k.into(), Secret::new(v.into())))
                .collect(),
        }
    }

    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.values.insert(name.into(), Secret::new(value.into()));
    }

    /// Resolves a secret by name; `None` when it is set nowhere (or set to an empty string).
    pub fn get(&self, name: &str) -> Option<Secret> {
        if self.use_environment
            && let Ok(value) = std::env::var(name)
            && !value.is_empty()
        {
            return Some(Secret::new(value));
        }
        self.values.get(name).cloned()
    }

    /// Every known secret value, for scrubbing text before it is shown or stored.
    pub fn known_values(&self) -> impl Iterator<Item = &Secret> {
        self.values.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?} {secret}"), "Secret(***) ***");
        let store = SecretStore::from_values([("KEY", "hunter2")]);
        assert!(!format!("{store:?}").contains("hunter2"));
        assert_eq!(store.get("KEY").unwrap().expose(), "hunter2");
        assert!(store.get("OTHER").is_none());
    }
}
