//! Validation of the whole configuration: every problem at once, each at its key path
//! (`[servicenow.customers."12"].integrator.every`) with the fix. Parsing only checks types;
//! this checks meaning, so a config that parses but cannot work is refused before anything
//! serves or sends.

use std::fmt;
use std::time::Duration;

use super::{
    Config, HaloConnectionConfig, HttpConnectionConfig, RetrySettings, ServiceNowAuthKind,
    ServiceNowConnectionConfig, imported_table,
};

/// One problem of the config: where (a key path) and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Problems found so far, each under the table being checked.
#[derive(Default)]
struct Problems {
    table: String,
    found: Vec<ConfigProblem>,
}

impl Problems {
    /// Problems from here on are under `table`.
    fn at(&mut self, table: String) -> &mut Self {
        self.table = table;
        self
    }

    fn add(&mut self, key: &str, message: impl Into<String>) {
        let key = if key.is_empty() {
            self.table.clone()
        } else {
            format!("{}.{key}", self.table)
        };
        self.found.push(ConfigProblem {
            key,
            message: message.into(),
        });
    }

    /// An http(s) URL with a host.
    fn url(&mut self, key: &str, value: &str, example: &str) {
        let parsed = reqwest::Url::parse(value.trim());
        let ok = parsed.is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
        if !ok {
            self.add(
                key,
                format!("`{value}` is not an http(s) URL; write {example}"),
            );
        }
    }

    fn present(&mut self, key: &str, value: Option<&str>, why: &str) {
        if value.is_none_or(|v| v.trim().is_empty()) {
            self.add(key, format!("is missing; {why}"));
        }
    }
}

impl Config {
    /// Every problem of the configuration, all at once; empty when it can be used.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut p = Problems::default();
        if let Some(url) = &self.server.public_url {
            let example = "the address Halo reaches haloflow at, e.g. https://haloflow.example.com";
            p.at("[server]".into()).url("public_url", url, example);
        }
        check_retry(p.at("[retry]".into()), &self.retry.defaults());
        for (step_type, settings) in &self.retry.by_type {
            check_retry(p.at(format!("[retry.by_type.\"{step_type}\"]")), settings);
        }
        for (name, halo) in &self.halo {
            check_halo(p.at(format!("[halo.{name}]")), halo);
        }
        for (name, http) in &self.http {
            check_http(p.at(format!("[http.{name}]")), http);
        }
        for (side, connections) in [
            ("customers", &self.servicenow.customers),
            ("suppliers", &self.servicenow.suppliers),
        ] {
            for (id, connection) in connections {
                check_servicenow(p.at(format!("[servicenow.{side}.\"{id}\"]")), connection);
            }
        }
        p.found
    }
}

fn check_retry(problems: &mut Problems, settings: &RetrySettings) {
    if settings.max_attempts == Some(0) {
        problems.add(
            "max_attempts",
            "is 0; it counts attempts in all, the first included: write 1 for no retries",
        );
    }
    if let (Some(initial), Some(max)) = (settings.initial_delay_ms, settings.max_delay_ms)
        && initial > max
    {
        problems.add(
            "initial_delay_ms",
            format!("{initial} is above max_delay_ms ({max}); lower it or raise max_delay_ms"),
        );
    }
}

fn check_halo(problems: &mut Problems, halo: &HaloConnectionConfig) {
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

fn check_http(problems: &mut Problems, http: &HttpConnectionConfig) {
    problems.url("base_url", &http.base_url, "https://api.example.com");
    let kinds = [
        http.bearer_token_secret_name.is_some(),
        http.basic_username.is_some() || http.basic_password_secret_name.is_some(),
        http.header_name.is_some() || http.header_secret_name.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() > 1 {
        problems.add(
            "",
            "sets more than one kind of credentials; keep one of bearer_token_secret_name, basic_username + basic_password_secret_name, header_name + header_secret_name",
        );
    }
    for (key, set, other, other_set) in [
        (
            "basic_password_secret_name",
            http.basic_password_secret_name.is_some(),
            "basic_username",
            http.basic_username.is_some(),
        ),
        (
            "header_secret_name",
            http.header_secret_name.is_some(),
            "header_name",
            http.header_name.is_some(),
        ),
    ] {
        if set != other_set {
            let (missing, given) = if set { (other, key) } else { (key, other) };
            problems.add(missing, format!("is missing; {given} needs it"));
        }
    }
    if http.timeout_secs == 0 {
        problems.add(
            "timeout_secs",
            "is 0; give requests at least 1 second (default 30)",
        );
    }
}

fn check_servicenow(problems: &mut Problems, sn: &ServiceNowConnectionConfig) {
    problems.url(
        "instance_url",
        &sn.instance_url,
        "https://<instance>.service-now.com",
    );
    match sn.auth {
        ServiceNowAuthKind::Basic => {
            let why = "auth = \"basic\" needs the integration user";
            problems.present("username", sn.username.as_deref(), why);
            let why = "auth = \"basic\" needs the name of the secret holding the user's password";
            problems.present(
                "password_secret_name",
                sn.password_secret_name.as_deref(),
                why,
            );
        }
        ServiceNowAuthKind::Oauth => {
            let why = "auth = \"oauth\" needs the application registry's client id";
            problems.present("client_id", sn.client_id.as_deref(), why);
            let why = "auth = \"oauth\" needs the name of the secret holding the client secret";
            problems.present("client_secret_name", sn.client_secret_name.as_deref(), why);
        }
    }
    if sn.timeout_secs == 0 {
        problems.add(
            "timeout_secs",
            "is 0; give requests at least 1 second (default 30)",
        );
    }
    if let Err(e) = parse_interval(&sn.integrator.every) {
        problems.add("integrator.every", e);
    }
    let tables: Vec<String> = sn
        .imported_types
        .iter()
        .map(|t| imported_table(t).to_owned())
        .collect();
    for (key, message) in sn.integrator.filter_problems(&tables) {
        problems.add(&key, message);
    }
    for (i, m) in sn.priority.iter().enumerate() {
        if !matches!(
            (&m.servicenow, &m.impact, &m.urgency),
            (Some(_), None, None) | (None, Some(_), Some(_))
        ) {
            problems.add(&format!("priority[{i}]"), format!(
                "the mapping for Halo {} needs either impact and urgency (recommended: the instance calculates priority from them) or servicenow (a priority written directly, which the instance may recalculate), not both",
                m.halo
            ));
        }
    }
    let syncs_back = sn.webhook.is_some() || sn.integrator.enabled;
    if sn.auth == ServiceNowAuthKind::Oauth && syncs_back && sn.integration_user.is_none() {
        problems.add("integration_user", "is missing; auth = \"oauth\" with sync back (webhook or integrator) needs the user_name of the application registry's OAuth Application User, which ServiceNow records as the writer of haloflow's notes; without it haloflow's own notes come back as new ones");
    }
    if let Some(webhook) = &sn.webhook {
        if webhook.user_id.is_some() && webhook.site_id.is_none() {
            problems.add("webhook.site_id", "is missing; webhook.user_id needs it: Halo requires a site whenever a user is set on a ticket; add the user's site id");
        }
        if webhook.secret_name.is_none() && webhook.hmac_secret_name.is_none() {
            problems.add(
                "webhook.secret_name",
                "is missing (or hmac_secret_name): an unauthenticated webhook could create tickets",
            );
        }
    }
}

/// An interval like `15m`, `6h` or `1d` (a bare number is days), at least a minute.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let unlike = || {
        format!("`{text}` is not an interval; write a number with s, m, h or d, like 15m, 6h or 1d")
    };
    let n: u64 = number.parse().map_err(|_| unlike())?;
    let seconds = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" | "" => n.saturating_mul(86_400),
        _ => return Err(unlike()),
    };
    if seconds < 60 {
        return Err(format!("`{text}` is under a minute; write 1m or more"));
    }
    Ok(Duration::from_secs(seconds))
}
