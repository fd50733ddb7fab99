//! Validation of the configuration: every problem at once, each at its key path
//! (`[servicenow.customers."12"].integrator.every`) with the fix. Parsing only checks types;
//! this checks meaning, so a config that parses but cannot work is refused before anything
//! serves or sends. The core checks its own sections here; each integration checks its own
//! with the same [`Problems`] helper.

use std::fmt;
use std::time::Duration;

use super::{CORE_SECTIONS, Config, HttpConnectionConfig, RetrySettings, Section};

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
#[derive(Debug, Default)]
pub struct Problems {
    table: String,
    found: Vec<ConfigProblem>,
}

impl Problems {
    /// Problems from here on are under `table`, e.g. `[halo.main]`.
    pub fn at(&mut self, table: impl Into<String>) -> &mut Self {
        self.table = table.into();
        self
    }

    /// A problem at `key` under the current table (at the table itself when `key` is empty).
    pub fn add(&mut self, key: &str, message: impl Into<String>) {
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
    pub fn url(&mut self, key: &str, value: &str, example: &str) {
        let parsed = reqwest::Url::parse(value.trim());
        let ok = parsed.is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
        if !ok {
            self.add(
                key,
                format!("`{value}` is not an http(s) URL; write {example}"),
            );
        }
    }

    /// A value that must be set and not blank; `why` says what it is for.
    pub fn present(&mut self, key: &str, value: Option<&str>, why: &str) {
        if value.is_none_or(|v| v.trim().is_empty()) {
            self.add(key, format!("is missing; {why}"));
        }
    }

    /// Reads section `T`; a type error is a problem at the section's table.
    pub fn section<T: Section>(&mut self, config: &Config) -> Option<T> {
        match config.section::<T>() {
            Ok(section) => Some(section),
            Err(message) => {
                self.at(format!("[{}]", T::TABLE)).add("", message);
                None
            }
        }
    }

    /// Every problem found, in the order found.
    pub fn into_vec(self) -> Vec<ConfigProblem> {
        self.found
    }
}

impl Config {
    /// Every problem of the core's sections, all at once; empty when they can be used.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut p = Problems::default();
        self.check_core(&mut p);
        p.found
    }

    /// Checks the core's sections into `p`.
    pub fn check_core(&self, p: &mut Problems) {
        if let Some(url) = &self.server.public_url {
            let example = "the address Halo reaches haloflow at, e.g. https://haloflow.example.com";
            p.at("[server]").url("public_url", url, example);
        }
        check_retry(p.at("[retry]"), &self.retry.defaults());
        for (step_type, settings) in &self.retry.by_type {
            check_retry(p.at(format!("[retry.by_type.\"{step_type}\"]")), settings);
        }
        for (name, http) in &self.http {
            check_http(p.at(format!("[http.{name}]")), http);
        }
    }

    /// A problem for each top-level table neither the core nor `claimed` (the tables of the
    /// registered integrations) reads.
    pub fn check_unknown_sections(&self, claimed: &[&str], p: &mut Problems) {
        for name in self.section_names() {
            if !claimed.contains(&name) {
                let known: Vec<&str> = CORE_SECTIONS.iter().chain(claimed).copied().collect();
                p.at(format!("[{name}]")).add(
                    "",
                    format!(
                        "is not a section haloflow reads; remove it, correct its name, or register the integration that reads it (known: {})",
                        known.join(", ")
                    ),
                );
            }
        }
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
