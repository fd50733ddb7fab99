//! The `haloflow.toml` configuration file: the core's sections (server settings, HTTP
//! connections, secret values, retries, retention) and, kept as written, the sections of
//! integrations (`[halo.*]`, `[servicenow]`), which each integration reads into its own types
//! ([`Section`]). Connections live here, never in flow files, so one flow can run against a
//! test and a production system unchanged.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

mod check;
mod section;
pub use check::{ConfigProblem, Problems, parse_interval};
pub use section::Section;

/// The whole configuration file.
#[derive(Clone, Default, Deserialize)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    /// Connections of the generic `http.request` step, by name.
    #[serde(default)]
    pub http: BTreeMap<String, HttpConnectionConfig>,
    /// Secret values by name, for secrets not set in the environment. Keep this file private.
    #[serde(default)]
    pub secrets: HashMap<String, String>,
    /// How failed steps are retried (a flow's step can override with `"retry"`).
    #[serde(default)]
    pub retry: RetryConfig,
    /// How long finished runs are kept.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Every other top-level table, as written: the integrations' sections, read with
    /// [`Config::section`]. A table no integration claims is reported as unknown.
    #[serde(skip)]
    sections: BTreeMap<String, toml::Value>,
    /// The text the config was parsed from, so that a section's type errors can say where.
    #[serde(skip)]
    source: Option<Arc<str>>,
}

/// The top-level tables the core reads itself.
pub(crate) const CORE_SECTIONS: [&str; 5] = ["server", "http", "secrets", "retry", "retention"];

/// The per-request timeout of a connection that sets none (seconds).
pub fn default_timeout_secs() -> u64 {
    30
}

/// Shows secret names, never their values.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut secret_names: Vec<&String> = self.secrets.keys().collect();
        secret_names.sort();
        f.debug_struct("Config")
            .field("server", &self.server)
            .field("http", &self.http)
            .field("secrets", &secret_names)
            .field("retry", &self.retry)
            .field("retention", &self.retention)
            .field("sections", &self.sections)
            .finish()
    }
}

/// Retry settings; every field is optional and falls back to the level below it: the step's
/// `"retry"` in the flow, `[retry.by_type."<step type>"]`, `[retry]`, then the built-in policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    /// Attempts in all, the first included (1 means no retries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// The wait before the second attempt; it doubles each time (with jitter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay_ms: Option<u64>,
    /// The longest wait between attempts (a `Retry-After` may ask for longer, up to 5 minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay_ms: Option<u64>,
}

impl RetrySettings {
    /// These settings with unset fields taken from `below`.
    pub fn or(self, below: RetrySettings) -> RetrySettings {
        RetrySettings {
            max_attempts: self.max_attempts.or(below.max_attempts),
            initial_delay_ms: self.initial_delay_ms.or(below.initial_delay_ms),
            max_delay_ms: self.max_delay_ms.or(below.max_delay_ms),
        }
    }
}

/// `[retry]`: defaults for every step, and per step type under `by_type`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    #[serde(default)]
    pub max_attempts: Option<u32>,
    #[serde(default)]
    pub initial_delay_ms: Option<u64>,
    #[serde(default)]
    pub max_delay_ms: Option<u64>,
    #[serde(default)]
    pub by_type: BTreeMap<String, RetrySettings>,
}

impl RetryConfig {
    /// The settings of `[retry]` itself.
    pub fn defaults(&self) -> RetrySettings {
        RetrySettings {
            max_attempts: self.max_attempts,
            initial_delay_ms: self.initial_delay_ms,
            max_delay_ms: self.max_delay_ms,
        }
    }

    /// The settings for one step type (not yet merged with a step's own).
    pub fn for_type(&self, step_type: &str) -> RetrySettings {
        let defaults = self.defaults();
        self.by_type
            .get(step_type)
            .copied()
            .unwrap_or_default()
            .or(defaults)
    }
}

/// `[retention]`: finished runs older than `max_age_days` are deleted in the background.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// 0 keeps everything.
    #[serde(default = "default_max_age_days")]
    pub max_age_days: u64,
    #[serde(default = "default_sweep_interval_secs")]
    pub sweep_interval_secs: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            max_age_days: default_max_age_days(),
            sweep_interval_secs: default_sweep_interval_secs(),
        }
    }
}

fn default_max_age_days() -> u64 {
    30
}

fn default_sweep_interval_secs() -> u64 {
    3600
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
    /// On SIGTERM or Ctrl-C, how long steps already sending may take to finish; the rest of
    /// their runs resume on the next start.
    #[serde(default = "default_shutdown_timeout_secs")]
    pub shutdown_timeout_secs: u64,
    /// This node's name in run claims; nodes sharing a database need distinct names, and a
    /// node restarted under the same name takes its own runs back at once. Default: the
    /// HOSTNAME environment variable, else `haloflow`.
    #[serde(default)]
    pub node_id: Option<String>,
    /// How long a node's claim on a run holds without renewal; another node takes the run over
    /// after it expires. Renewed before every step attempt, so keep it above the longest
    /// request timeout.
    #[serde(default = "default_run_lease_secs")]
    pub run_lease_secs: u64,
    /// The database: `sqlite://<file>` or `postgres://user@host/db`. Default: SQLite in the
    /// data directory. `--database` and `HALOFLOW_DATABASE_URL` override it.
    #[serde(default)]
    pub database_url: Option<String>,
    /// The most runs executing at once in this process. It bounds execution, not acceptance:
    /// runs accepted beyond it are stored `queued` and wait in the database (not in memory)
    /// until a run ends and frees a slot, here or on another node sharing the database.
    #[serde(default = "default_max_active_runs")]
    pub max_active_runs: usize,
    /// The most runs waiting at once without their execution slot, on a wait only time ends
    /// (an API's pacing): such a run lends its slot to other runs and takes one again when
    /// its wait ends (at once, even above `max_active_runs`: new runs then wait until the
    /// count is under it), so one tenant's backlog never holds every slot. Beyond this bound
    /// a run waits in its slot. 0 turns lending off.
    #[serde(default = "default_max_paced_runs")]
    pub max_paced_runs: usize,
    /// SQLite: what an accepted request survives, `process_crash` (default) or `power_loss`
    /// (every commit synced to disk; slower).
    #[serde(default)]
    pub durability: Durability,
    /// Where the API (and `/metrics`) is served for this machine only. Without `[server.api]`
    /// credentials the API is served here alone and this must be a loopback address; with
    /// them it is served here and on `listen`.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
    /// Serve `/metrics` without credentials on both listeners (e.g. for a scraper).
    #[serde(default)]
    pub metrics_public: bool,
    /// Credentials the API takes; see [`ApiAuthConfig`].
    #[serde(default)]
    pub api: ApiAuthConfig,
    /// A client must send a request's line and headers within this many seconds of connecting
    /// (or of the previous answer on a kept-alive connection), else the connection is closed.
    #[serde(default = "default_header_timeout_secs")]
    pub header_timeout_secs: u64,
    /// A connection on which nothing arrives for this many seconds is closed (a stalled body,
    /// an idle keep-alive connection).
    #[serde(default = "default_idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    /// Connections served at once per listener; more wait in the kernel's accept queue.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Largest request line plus headers, in bytes: a longer URL is answered 414, longer
    /// headers 431 (JSON).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Rejected requests logged (and stored, as a summary) per second per flow; the rest are
    /// only counted, and the next line says how many were left out.
    #[serde(default = "default_rejections_logged_per_sec")]
    pub rejections_logged_per_sec: u32,
}

/// `[server.api]`: the API's credentials, by secret name. A bearer token
/// (`token_secret_name`), Basic credentials (`basic_username` + `password_secret_name`), or
/// both.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiAuthConfig {
    #[serde(default)]
    pub token_secret_name: Option<String>,
    #[serde(default)]
    pub basic_username: Option<String>,
    #[serde(default)]
    pub password_secret_name: Option<String>,
    /// A secret (random, shared by every node) that console sessions are signed with instead
    /// of a key derived from the credentials above; rotating it signs everyone out.
    #[serde(default)]
    pub session_secret_name: Option<String>,
}

impl ApiAuthConfig {
    /// True when any API credentials are configured.
    pub fn is_configured(&self) -> bool {
        self.token_secret_name.is_some() || self.password_secret_name.is_some()
    }
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8081))
}

fn default_header_timeout_secs() -> u64 {
    10
}

fn default_idle_timeout_secs() -> u64 {
    60
}

fn default_max_connections() -> usize {
    1024
}

fn default_max_header_bytes() -> usize {
    32 * 1024
}

fn default_rejections_logged_per_sec() -> u32 {
    5
}

/// A run in flight holds its trigger, its steps' outputs and its connections: about 40 KB on
/// the benchmark workload, so 512 keep the server near 20 MB of run state at most, and still
/// saturate a core with fast APIs (or 500 runs/s at a second per run).
fn default_max_active_runs() -> usize {
    512
}

/// A run waiting without its slot holds its state and a parked task: about 50 KB each on the
/// benchmark workload (benches/RESULTS.md), so 10 000 can hold about 500 MB; lower it where
/// memory is tight.
fn default_max_paced_runs() -> usize {
    10_000
}

fn default_run_lease_secs() -> u64 {
    60
}

impl ServerConfig {
    /// The node name used in run claims; never empty (an empty name means the default).
    pub fn node_id(&self) -> String {
        self.node_id
            .clone()
            .filter(|id| !id.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| "haloflow".to_owned())
    }
}

/// What a commit survives before the webhook is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// A crash or kill of the process (WAL with `synchronous=NORMAL`: the commit is in the
    /// operating system before the answer; only a power loss or kernel crash can undo it).
    #[default]
    ProcessCrash,
    /// A power loss too (`synchronous=FULL`: every commit is synced to the disk; slower).
    PowerLoss,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            max_body_bytes: default_max_body_bytes(),
            public_url: None,
            shutdown_timeout_secs: default_shutdown_timeout_secs(),
            node_id: None,
            run_lease_secs: default_run_lease_secs(),
            database_url: None,
            max_active_runs: default_max_active_runs(),
            max_paced_runs: default_max_paced_runs(),
            durability: Default::default(),
            admin_listen: default_admin_listen(),
            metrics_public: false,
            api: ApiAuthConfig::default(),
            header_timeout_secs: default_header_timeout_secs(),
            idle_timeout_secs: default_idle_timeout_secs(),
            max_connections: default_max_connections(),
            max_header_bytes: default_max_header_bytes(),
            rejections_logged_per_sec: default_rejections_logged_per_sec(),
        }
    }
}

fn default_shutdown_timeout_secs() -> u64 {
    10
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_max_body_bytes() -> usize {
    1024 * 1024
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
    #[error("{path}: {} problem(s):\n{}", .problems.len(), problem_lines(.problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<ConfigProblem>,
    },
    #[error(
        "no config given: {command} needs the connections of a config file; pass --config haloflow.toml or set HALOFLOW_CONFIG"
    )]
    NotGiven { command: &'static str },
}

fn problem_lines(problems: &[ConfigProblem]) -> String {
    let lines: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
    lines.join("\n")
}

impl Config {
    /// Reads, parses and checks a config file: every problem of the core's sections is
    /// reported at once. The integrations' sections are kept as written; an engine checks them
    /// with its integrations (`Integrations::load_config` reads and checks everything).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_checked(path, Config::problems)
    }

    /// Reads and parses a config file, then checks it with `check`; every problem at once.
    pub fn load_checked(
        path: &Path,
        check: impl FnOnce(&Config) -> Vec<ConfigProblem>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Config::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        let problems = check(&config);
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            });
        }
        Ok(config)
    }

    /// Parses and checks a config's core sections; the error lists every problem, one a line.
    pub fn parse(text: &str) -> Result<Config, String> {
        Config::parse_checked(text, Config::problems)
    }

    /// Parses a config and checks it with `check`; the error lists every problem, one a line.
    pub fn parse_checked(
        text: &str,
        check: impl FnOnce(&Config) -> Vec<ConfigProblem>,
    ) -> Result<Config, String> {
        let config = Config::from_toml(text)?;
        let problems = check(&config);
        if !problems.is_empty() {
            return Err(problem_lines(&problems).trim_start().to_owned());
        }
        Ok(config)
    }

    /// The file's syntax and the core sections' types; the other tables are kept as written.
    fn from_toml(text: &str) -> Result<Config, String> {
        let mut config: Config = toml::from_str(text).map_err(|e| located(text, &e))?;
        let table: toml::Table = toml::from_str(text).map_err(|e| located(text, &e))?;
        config.sections = (table.into_iter())
            .filter(|(name, _)| !CORE_SECTIONS.contains(&name.as_str()))
            .collect();
        config.source = Some(text.into());
        Ok(config)
    }

    /// The names of the connections configured in `table` (`http`, or an integration's table
    /// of connections by name such as `halo`), for flow validation.
    pub fn connection_names(&self, table: &str) -> Vec<&str> {
        if table == "http" {
            return self.http.keys().map(String::as_str).collect();
        }
        let mut value: Option<&toml::Value> = None;
        for (i, part) in table.split('.').enumerate() {
            value = match (i, value) {
                (0, _) => self.sections.get(part),
                (_, Some(toml::Value::Table(t))) => t.get(part),
                _ => None,
            };
        }
        match value {
            Some(toml::Value::Table(t)) => t.keys().map(String::as_str).collect(),
            _ => Vec::new(),
        }
    }

    /// The top-level tables the core does not read (the integrations' sections), by name.
    pub fn section_names(&self) -> impl Iterator<Item = &str> {
        self.sections.keys().map(String::as_str)
    }

    /// An integration's table as written, if the config has it.
    pub fn raw_section(&self, table: &str) -> Option<&toml::Value> {
        self.sections.get(table)
    }

    /// Replaces (or adds) an integration's table.
    pub fn set_raw_section(&mut self, table: &str, value: toml::Value) {
        self.sections.insert(table.to_owned(), value);
    }

    /// An integration's section in its own type (its default when the table is absent). A
    /// type error says where in the file it is, when the config was read from text.
    pub fn section<T: Section>(&self) -> Result<T, String> {
        let Some(raw) = self.sections.get(T::TABLE) else {
            return Ok(T::default());
        };
        raw.clone().try_into().map_err(|e: toml::de::Error| {
            let plain = e.message().trim_end().replace('\n', " ");
            self.source
                .as_deref()
                .and_then(|text| section::from_text::<T>(text).err())
                .unwrap_or(plain)
        })
    }

    /// Changes an integration's section in its own type, e.g. a connection added in code.
    pub fn edit_section<T: Section + serde::Serialize>(
        &mut self,
        edit: impl FnOnce(&mut T),
    ) -> Result<(), String> {
        let mut section: T = self.section()?;
        edit(&mut section);
        let value = toml::Value::try_from(&section).map_err(|e| e.to_string())?;
        self.sections.insert(T::TABLE.to_owned(), value);
        Ok(())
    }
}

/// toml's message and where it is. Its own text quotes the offending line, which may hold a
/// secret: only the message and the place are kept.
fn located(text: &str, e: &toml::de::Error) -> String {
    let place = e
        .span()
        .map(|span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: ")
        })
        .unwrap_or_default();
    format!("{place}{}", e.message().trim_end().replace('\n', " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_of_debug_output_and_parse_errors() {
        let config = Config::parse("[secrets]\nHALO = \"s3cr3t-value\"\n").unwrap();
        let shown = format!("{config:?}");
        assert!(
            shown.contains("HALO") && !shown.contains("s3cr3t-value"),
            "{shown}"
        );
        let err = Config::parse("[secrets]\nHALO = \"s3cr3t-value\" x\n").unwrap_err();
        assert!(!err.contains("s3cr3t"), "{err}");
        assert!(err.starts_with("line 2, column "), "{err}");
    }

    #[test]
    fn rejects_unknown_keys_with_their_name() {
        let err = Config::parse("[server]\nlisten_port = 1\n").unwrap_err();
        assert!(err.contains("listen_port"), "{err}");
    }
}
