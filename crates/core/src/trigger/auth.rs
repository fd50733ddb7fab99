//! Trigger authentication, resolved once when the engine starts and compared in constant time.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::secrets::{Secret, SecretStore};

/// How a trigger authenticates requests; every secret is a name, resolved at start.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TriggerAuth {
    UrlKey {
        #[serde(default = "default_key_param")]
        param: String,
        secret_name: String,
    },
    Basic {
        username: String,
        password_secret_name: String,
    },
    Header {
        #[serde(default = "default_key_header")]
        header: String,
        secret_name: String,
    },
    None,
}

fn default_key_param() -> String {
    "apiKey".to_owned()
}

fn default_key_header() -> String {
    "X-API-Key".to_owned()
}

impl TriggerAuth {
    /// The secret names this auth needs.
    pub fn secret_name(&self) -> Option<&str> {
        match self {
            TriggerAuth::UrlKey { secret_name, .. } | TriggerAuth::Header { secret_name, .. } => {
                Some(secret_name)
            }
            TriggerAuth::Basic {
                password_secret_name,
                ..
            } => Some(password_secret_name),
            TriggerAuth::None => None,
        }
    }
}

/// A flow's trigger authentication with its secret resolved.
#[derive(Debug, Clone)]
pub enum TriggerAuthenticator {
    UrlKey { param: String, key: Secret },
    Basic { username: String, password: Secret },
    Header { header: String, key: Secret },
    None,
}

/// Why a request was not authenticated; the text is safe to send to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure(pub String);

impl TriggerAuthenticator {
    /// Resolves the secret named by `auth`; `Err(name)` when it is not set.
    pub fn resolve(auth: &TriggerAuth, secrets: &SecretStore) -> Result<Self, String> {
        let get = |name: &String| secrets.get(name).ok_or_else(|| name.clone());
        Ok(match auth {
            TriggerAuth::UrlKey { param, secret_name } => TriggerAuthenticator::UrlKey {
                param: param.clone(),
                key: get(secret_name)?,
            },
            TriggerAuth::Basic {
                username,
                password_secret_name,
            } => TriggerAuthenticator::Basic {
                username: username.clone(),
                password: get(password_secret_name)?,
            },
            TriggerAuth::Header {
                header,
                secret_name,
            } => TriggerAuthenticator::Header {
                header: header.clone(),
                key: get(secret_name)?,
            },
            TriggerAuth::None => TriggerAuthenticator::None,
        })
    }

    /// The query parameter that carries the key, which must never be stored.
    pub fn secret_param(&self) -> Option<&str> {
        match self {
            TriggerAuthenticator::UrlKey { param, .. } => Some(param),
            _ => None,
        }
    }

    /// The trigger's secret (key or password), to be kept out of anything stored.
    pub fn secret(&self) -> Option<Secret> {
        match self {
            TriggerAuthenticator::UrlKey { key, .. } | TriggerAuthenticator::Header { key, .. } => {
                Some(key.clone())
            }
            TriggerAuthenticator::Basic { password, .. } => Some(password.clone()),
            TriggerAuthenticator::None => None,
        }
    }

    /// Checks a request: `query_value` is the decoded URL key parameter, `header` looks up a
    /// request header by name.
    pub fn check<'a>(
        &self,
        query_value: Option<&str>,
        header: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<(), AuthFailure> {
        match self {
            TriggerAuthenticator::None => Ok(()),
            TriggerAuthenticator::UrlKey { param, key } => match query_value {
                Some(given) if equal(given.as_bytes(), key.expose().as_bytes()) => Ok(()),
                Some(_) => Err(AuthFailure(format!(
                    "the `{param}` query parameter does not match this trigger's key"
                ))),
                None => Err(AuthFailure(format!(
                    "missing the `{param}` query parameter; use the trigger URL with its key"
                ))),
            },
            TriggerAuthenticator::Header { header: name, key } => match header(name) {
                Some(given) if equal(given.as_bytes(), key.expose().as_bytes()) => Ok(()),
                Some(_) => Err(AuthFailure(format!(
                    "the `{name}` header does not match this trigger's key"
                ))),
                None => Err(AuthFailure(format!("missing the `{name}` header"))),
            },
            TriggerAuthenticator::Basic { username, password } => {
                let Some(value) = header("authorization") else {
                    return Err(AuthFailure(
                        "missing Basic credentials; set Basic Authentication on the webhook that calls this URL"
                            .into(),
                    ));
                };
                let decoded = basic_credentials(value);
                let Some(decoded) = decoded else {
                    return Err(AuthFailure(
                        "the Authorization header is not valid Basic credentials".into(),
                    ));
                };
                let expected = format!("{username}:{}", password.expose());
                if equal(&decoded, expected.as_bytes()) {
                    Ok(())
                } else {
                    Err(AuthFailure("wrong user name or password".into()))
                }
            }
        }
    }
}

/// The decoded `user:password` of a Basic `Authorization` value. The scheme is matched
/// case-insensitively, as RFC 9110 §11.1 says (`BASIC`, `basic` and `Basic` are one scheme).
pub(crate) fn basic_credentials(value: &str) -> Option<Vec<u8>> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()
}

/// The token of a Bearer `Authorization` value, the scheme matched case-insensitively.
pub(crate) fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// Constant-time for equal lengths; a length mismatch is not a secret worth hiding.
pub fn equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_and_keys() {
        let basic = TriggerAuthenticator::Basic {
            username: "halo".into(),
            password: Secret::new("pw"),
        };
        let good = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("halo:pw")
        );
        assert!(basic.check(None, |_| Some(good.as_str())).is_ok());
        let bad = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("halo:px")
        );
        assert!(basic.check(None, |_| Some(bad.as_str())).is_err());
        assert!(basic.check(None, |_| None).is_err());
        for scheme in ["BASIC", "basic", "bAsIc"] {
            let upper = good.replacen("Basic", scheme, 1);
            assert!(
                basic.check(None, |_| Some(upper.as_str())).is_ok(),
                "{scheme}"
            );
        }
        assert_eq!(bearer_token("BEARER abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        let key = TriggerAuthenticator::UrlKey {
            param: "apiKey".into(),
            key: Secret::new("k"),
        };
        assert!(key.check(Some("k"), |_| None).is_ok());
        assert!(key.check(Some("kk"), |_| None).is_err());
        let header = TriggerAuthenticator::Header {
            header: "X-API-Key".into(),
            key: Secret::new("k"),
        };
        assert!(
            header
                .check(None, |n| (n == "X-API-Key").then_some("k"))
                .is_ok()
        );
        assert!(header.check(None, |_| None).is_err());
    }
}
