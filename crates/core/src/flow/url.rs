//! The trigger URL a sender (a Halo webhook) posts to, with its recipients: what
//! `haloflow trigger-url` prints and what a Halo webhook set up by haloflow points at.

use super::{TriggerAuth, ValidatedFlow};
use crate::outbound::encode_component as encode;

/// The trigger URL to paste into the sender (Halo's webhook URL). With a URL key the key rides in the query and
/// recipients follow with `&`; otherwise recipients start the query with `?`. `key` is the
/// key's value when it may be shown, else a placeholder naming its secret.
pub fn trigger_url(base: &str, flow: &ValidatedFlow, key: Option<&str>) -> String {
    let mut url = format!("{}/triggers/{}", base.trim_end_matches('/'), flow.id());
    if let TriggerAuth::UrlKey { param, secret_name } = &flow.document.trigger.auth {
        let value = key
            .map(encode)
            .unwrap_or_else(|| format!("<{secret_name}>"));
        url.push_str(&format!("?{}={value}", encode(param)));
    }
    url
}

/// Appends `recipients=a,b` to a trigger URL, each name URL-encoded.
pub fn with_recipients(url: &str, recipients: &[&str]) -> String {
    if recipients.is_empty() {
        return url.to_owned();
    }
    let joined = recipients
        .iter()
        .map(|r| encode(r))
        .collect::<Vec<_>>()
        .join(",");
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}recipients={joined}")
}
