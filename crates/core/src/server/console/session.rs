//! Console sessions: a stateless signed cookie `v1.<expiry_ms>.<nonce>.<mac>`, so every node
//! sharing the API's secrets accepts it, and the CSRF token bound to its nonce.

use hmac::{KeyInit, Mac};

use crate::secrets::Secret;
use crate::trigger::equal;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The cookie's name.
pub(in crate::server) const COOKIE: &str = "haloflow_session";
/// How long a session lasts: 12 hours.
pub(in crate::server) const LIFETIME_SECS: i64 = 12 * 60 * 60;

/// The key sessions and CSRF tokens are signed with, derived from the API's credentials:
/// changing any of them ends every session.
#[derive(Clone)]
pub(in crate::server) struct SessionKey([u8; 32]);

/// Why a cookie value is no session: an expired one was ours (a console left open), a forged
/// one a guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::server) enum Invalid {
    Expired,
    Forged,
}

/// A valid session cookie's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::server) struct Session {
    pub expires_at_ms: i64,
    pub nonce: String,
}

impl SessionKey {
    /// The key from the key material: `[server.api] session_secret_name` when set (shared by
    /// all nodes; rotating it signs everyone out), else the API's credentials (changing them
    /// ends every session). Each part is length-prefixed, so no two sets run together alike.
    /// None without any.
    pub(in crate::server) fn derive(
        shared: Option<&Secret>,
        token: Option<&Secret>,
        basic: Option<(&str, &Secret)>,
    ) -> Option<SessionKey> {
        let mut material = Vec::new();
        let mut push = |part: &str| {
            material.extend_from_slice(&(part.len() as u64).to_be_bytes());
            material.extend_from_slice(part.as_bytes());
        };
        if let Some(shared) = shared {
            push("session");
            push(shared.expose());
        } else {
            if let Some(token) = token {
                push("token");
                push(token.expose());
            }
            if let Some((user, password)) = basic {
                push("basic");
                push(user);
                push(password.expose());
            }
        }
        (!material.is_empty()).then(|| SessionKey(slow_hash(&material)))
    }

    /// A new cookie value valid until `expires_at_ms`.
    pub(in crate::server) fn issue(&self, expires_at_ms: i64) -> String {
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let signed = format!("v1.{expires_at_ms}.{nonce}");
        let mac = hex(&hmac(&self.0, signed.as_bytes()));
        format!("{signed}.{mac}")
    }

    /// The session of a cookie value signed with this key and not expired at `now_ms`.
    pub(in crate::server) fn verify(&self, value: &str, now_ms: i64) -> Result<Session, Invalid> {
        let (signed, mac) = value.rsplit_once('.').ok_or(Invalid::Forged)?;
        let expected = hex(&hmac(&self.0, signed.as_bytes()));
        if !equal(mac.as_bytes(), expected.as_bytes()) {
            return Err(Invalid::Forged);
        }
        let mut parts = signed.split('.');
        let (Some("v1"), Some(expiry), Some(nonce), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Invalid::Forged);
        };
        let expires_at_ms: i64 = expiry.parse().map_err(|_| Invalid::Forged)?;
        if expires_at_ms <= now_ms {
            return Err(Invalid::Expired);
        }
        Ok(Session {
            expires_at_ms,
            nonce: nonce.to_owned(),
        })
    }

    /// The CSRF token of a session: hex `HMAC(key, "csrf." + nonce)`.
    pub(in crate::server) fn csrf_token(&self, session: &Session) -> String {
        hex(&hmac(&self.0, format!("csrf.{}", session.nonce).as_bytes()))
    }

    /// Whether `given` is the session's CSRF token (constant time).
    pub(in crate::server) fn csrf_ok(&self, session: &Session, given: &str) -> bool {
        equal(given.as_bytes(), self.csrf_token(session).as_bytes())
    }
}

/// PBKDF2-HMAC-SHA256 iterations: about 60 ms on a current server core, once at startup.
pub(in crate::server) const KDF_ROUNDS: u32 = 300_000;
/// The application's fixed salt: the material is unique to the deployment already.
pub(in crate::server) const KDF_SALT: &[u8] = b"haloflow console session";

/// The key of `material` by a slow KDF, so a cookie does not let anyone test guesses of the
/// API's password offline at HMAC speed. The last result is kept: a server builds a guard per
/// listener (and tests many servers) from the same credentials.
fn slow_hash(material: &[u8]) -> [u8; 32] {
    static LAST: std::sync::Mutex<Option<(Vec<u8>, [u8; 32])>> = std::sync::Mutex::new(None);
    let mut last = crate::server::rejections::lock(&LAST);
    if let Some((known, key)) = last.as_ref()
        && equal(known, material)
    {
        return *key;
    }
    let mut key = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(material, KDF_SALT, KDF_ROUNDS, &mut key);
    *last = Some((material.to_vec(), key));
    key
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length, so this never fails.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| <HmacSha256 as KeyInit>::new(&Default::default()));
    mac.update(message);
    mac.finalize().into_bytes().into()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(DIGITS[usize::from(byte >> 4)] as char);
        text.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    text
}

/// The values of every cookie `name` in a request's `Cookie` headers (a browser may send
/// several, e.g. one set for another path).
pub(in crate::server) fn cookies<'a>(
    headers: &'a axum::http::HeaderMap,
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(move |(key, _)| *key == name)
        .map(|(_, value)| value.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(token: &str) -> SessionKey {
        SessionKey::derive(None, Some(&Secret::new(token)), None).unwrap()
    }

    #[test]
    fn a_session_verifies_until_it_expires_and_only_under_its_key() {
        let key = key("t1");
        let value = key.issue(2_000);
        let session = key.verify(&value, 1_000).unwrap();
        assert_eq!(session.expires_at_ms, 2_000);
        assert_eq!(key.verify(&value, 2_000), Err(Invalid::Expired));
        let forged = Err(Invalid::Forged);
        assert_eq!(super::tests::key("t2").verify(&value, 1_000), forged);
        let later = value.replacen("v1.2000.", "v1.9000.", 1);
        assert_eq!(key.verify(&later, 1_000), forged);
        assert_eq!(key.verify("v1.9000.x", 1_000), forged);
        assert_eq!(key.verify("", 1_000), forged);
        let token = key.csrf_token(&session);
        assert_eq!(token.len(), 64);
        assert!(key.csrf_ok(&session, &token));
        assert!(!key.csrf_ok(&session, "00"));
    }

    #[test]
    fn no_credentials_no_key() {
        assert!(SessionKey::derive(None, None, None).is_none());
    }
}
