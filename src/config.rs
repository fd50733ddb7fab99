//! The `haloflow.toml` configuration file: server settings, connections to Halo instances and
//! optional secret values. Connections live here, never in flow files, so one flow can run
//! against a test and a production Halo unchanged.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod check;
pub use check::{ConfigProblem, parse_interval};

/// The whole configuration file.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    /// Halo connections by name; steps pick one with `"connection": "<name>"`.
    #[serde(default)]
    pub halo: BTreeMap<String, HaloConnectionConfig>,
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
    /// ServiceNow instances of customers and suppliers.
    #[serde(default)]
    pub servicenow: ServiceNowConfig,
}

/// `[servicenow]`: global switches, and one connection per Halo customer (keyed by the Halo
/// client id) and per supplier (keyed by the Halo supplier id).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceNowConfig {
    /// Send public Halo attachments with the record (a connection can override).
    #[serde(default)]
    pub sync_attachments: bool,
    /// Appended to every note haloflow writes, so the sync back can tell our notes from the
    /// instance's own.
    #[serde(default = "default_note_marker")]
    pub note_marker: String,
    #[serde(default)]
    pub customers: BTreeMap<String, ServiceNowConnectionConfig>,
    #[serde(default)]
    pub suppliers: BTreeMap<String, ServiceNowConnectionConfig>,
}

impl Default for ServiceNowConfig {
    fn default() -> Self {
        ServiceNowConfig {
            sync_attachments: false,
            note_marker: default_note_marker(),
            customers: BTreeMap::new(),
            suppliers: BTreeMap::new(),
        }
    }
}

fn default_note_marker() -> String {
    "Sent from Halo by haloflow".to_owned()
}

/// How a connection authenticates (`../shared/reference/servicenow-api.md` §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceNowAuthKind {
    Basic,
    /// OAuth 2.0 client credentials against `/oauth_token.do`.
    Oauth,
}

/// One customer's or supplier's ServiceNow instance, its mappings and switches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceNowConnectionConfig {
    /// A label for listings (the customer's or supplier's name).
    #[serde(default)]
    pub name: Option<String>,
    /// e.g. `https://acme.service-now.com`.
    pub instance_url: String,
    pub auth: ServiceNowAuthKind,
    /// Basic: the integration user and the secret holding its password.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_secret_name: Option<String>,
    /// OAuth: the application registry's client id and the secret holding its secret.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub client_secret_name: Option<String>,
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// The caller (sys_user sys_id) when the ticket's end user matches no ServiceNow user.
    #[serde(default)]
    pub default_caller: Option<String>,
    /// The group (sys_user_group sys_id) when the ticket's team matches no mapping.
    #[serde(default)]
    pub default_assignment_group: Option<String>,
    /// Overrides `[servicenow] sync_attachments` for this connection.
    #[serde(default)]
    pub sync_attachments: Option<bool>,
    /// Send a problem's child tickets with it.
    #[serde(default)]
    pub sync_child_tickets: bool,
    /// The record types the integrator imports from this instance.
    #[serde(default = "default_imported_types")]
    pub imported_types: Vec<String>,
    /// The record type (table) per Halo ticket type id, e.g. `{ "3" = "sc_task" }`.
    #[serde(default)]
    pub record_types: BTreeMap<String, String>,
    /// Halo status id ↔ ServiceNow state.
    #[serde(default)]
    pub status: Vec<ValueMapping>,
    /// Halo category (category_1) → ServiceNow category and subcategory; incidents only.
    #[serde(default)]
    pub category: Vec<CategoryMapping>,
    /// Halo priority → impact and urgency (the instance calculates priority from them), or
    /// → priority itself (`servicenow`), which the instance may recalculate.
    #[serde(default)]
    pub priority: Vec<PriorityMapping>,
    #[serde(default)]
    pub impact: Vec<ValueMapping>,
    #[serde(default)]
    pub urgency: Vec<ValueMapping>,
    /// Halo team name → assignment group sys_id.
    #[serde(default)]
    pub assignment_group: Vec<ValueMapping>,
    #[serde(default)]
    pub custom_fields: Vec<CustomFieldMapping>,
    /// Halo service id → ServiceNow service, for service requests.
    #[serde(default)]
    pub services: Vec<ServiceMapping>,
    /// The Halo connection tickets synced back from this instance live in.
    #[serde(default = "default_halo_connection")]
    pub halo_connection: String,
    /// The outcome of Halo actions made from ServiceNow notes.
    #[serde(default = "default_note_outcome")]
    pub note_outcome: String,
    /// The instance user haloflow writes as (Basic: `username`; OAuth: the application
    /// registry's OAuth Application User, whose `user_name` ServiceNow stamps on every write
    /// made with the token, reference §6.2); with the note marker it tells haloflow's own
    /// notes from the instance's when syncing back. Required for OAuth with sync back.
    #[serde(default)]
    pub integration_user: Option<String>,
    /// Where sync back reads work notes and comments: `display_values` (the default; the
    /// record's own fields, readable with `itil`) or `sys_journal_field` (needs the
    /// `audit_viewer` role; without it the instance answers no rows).
    #[serde(default)]
    pub journal: JournalSource,
    /// The ServiceNow webhook into haloflow (`POST /servicenow/<customers|suppliers>/<id>/webhook`).
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
    /// The scheduled poll for changes (the integrator).
    #[serde(default)]
    pub integrator: IntegratorConfig,
}

fn default_note_outcome() -> String {
    "Note".to_owned()
}

fn default_halo_connection() -> String {
    "halo".to_owned()
}

/// Where a connection reads journal entries (reference §4.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalSource {
    /// `sysparm_display_value=all` on `work_notes` and `comments` (Option B).
    #[default]
    DisplayValues,
    /// `sys_journal_field` rows (Option A; the `audit_viewer` role).
    SysJournalField,
}

impl JournalSource {
    /// What `connections check` reports.
    pub fn describe(self) -> &'static str {
        match self {
            JournalSource::DisplayValues => {
                "notes are read from the display values of work_notes and comments (no audit_viewer needed)"
            }
            JournalSource::SysJournalField => {
                "notes are read from sys_journal_field (needs the audit_viewer role)"
            }
        }
    }
}

/// How ServiceNow's webhook authenticates and what its body looks like; what a new record
/// becomes in Halo.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// A shared secret sent in `header` (or as the Basic password with `basic_username`).
    #[serde(default)]
    pub secret_name: Option<String>,
    #[serde(default = "default_webhook_header")]
    pub header: String,
    #[serde(default)]
    pub basic_username: Option<String>,
    /// Also require an HMAC-SHA256 of the raw body, base64, in `hmac_header` (as
    /// GlideCertificateEncryption.generateMac produces it; the key is the secret's bytes).
    #[serde(default)]
    pub hmac_secret_name: Option<String>,
    #[serde(default = "default_hmac_header")]
    pub hmac_header: String,
    /// Where the body carries the record: `table` + `sys_id`, or `number`.
    #[serde(default = "default_table_field")]
    pub table_field: String,
    #[serde(default = "default_sys_id_field")]
    pub sys_id_field: String,
    #[serde(default = "default_number_field")]
    pub number_field: String,
    /// New tickets from this customer's records (suppliers never create tickets).
    #[serde(default)]
    pub ticket_type_id: Option<i64>,
    #[serde(default)]
    pub user_id: Option<i64>,
    /// The user's site: Halo requires a site whenever a user is set.
    #[serde(default)]
    pub site_id: Option<i64>,
    /// The team new tickets go to (Halo's "Webhook Team").
    #[serde(default)]
    pub team: Option<String>,
}

fn default_webhook_header() -> String {
    "X-Haloflow-Secret".to_owned()
}

fn default_hmac_header() -> String {
    "X-Haloflow-Signature".to_owned()
}

fn default_table_field() -> String {
    "table".to_owned()
}

fn default_sys_id_field() -> String {
    "sys_id".to_owned()
}

fn default_number_field() -> String {
    "number".to_owned()
}

/// `[servicenow.customers."12".integrator]`: a scan of the imported types on a schedule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegratorConfig {
    #[serde(default)]
    pub enabled: bool,
    /// How often: `15m`, `6h`, `1d` (daily by default, as Halo's integrator).
    #[serde(default = "default_every")]
    pub every: String,
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// Per table, an encoded query a record without a link must match to become a Halo
    /// ticket (linked records always sync). The instance ignores a misspelt field in it
    /// instead of failing (reference §1.2).
    #[serde(default)]
    pub filter: BTreeMap<String, String>,
    /// False (the default): only records created since the integrator started become
    /// tickets. True: older ones too, when a `filter` selects them.
    #[serde(default)]
    pub create_existing: bool,
    /// A record whose sync fails in this many scans is recorded and skipped until it changes,
    /// so it does not stop every scan.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

impl Default for IntegratorConfig {
    fn default() -> Self {
        IntegratorConfig {
            enabled: false,
            every: default_every(),
            page_size: default_page_size(),
            filter: BTreeMap::new(),
            create_existing: false,
            max_attempts: default_max_attempts(),
        }
    }
}

fn default_max_attempts() -> u32 {
    5
}

fn default_every() -> String {
    "1d".to_owned()
}

fn default_page_size() -> u32 {
    100
}

impl IntegratorConfig {
    /// Problems with the creation filter, as (key, message): `^NQ` would escape the record the
    /// filter is tested on, and creating old records needs a filter for every imported table.
    fn filter_problems(&self, tables: &[String]) -> Vec<(String, String)> {
        let mut found: Vec<(String, String)> = (self.filter.iter())
            .filter(|(_, q)| q.contains("^NQ"))
            .map(|(table, _)| {
                (
                    format!("integrator.filter.{table}"),
                    "^NQ is not supported; write one clause (^ and ^OR)".to_owned(),
                )
            })
            .collect();
        if self.create_existing
            && let Some(table) = tables.iter().find(|t| !self.filter.contains_key(*t))
        {
            found.push((
                format!("integrator.filter.{table}"),
                format!("is missing; integrator.create_existing = true needs it: without one every unlinked {table} in the instance would become a Halo ticket"),
            ));
        }
        found
    }

    /// The interval: a number with `s`, `m`, `h` or `d` (checked by [`Config::problems`]).
    pub fn interval(&self) -> Result<std::time::Duration, String> {
        parse_interval(&self.every).map_err(|e| format!("integrator.every: {e}"))
    }
}

/// The table an imported type is read from (`task` means catalog tasks).
pub fn imported_table(imported: &str) -> &str {
    match imported {
        "task" => "sc_task",
        other => other,
    }
}

fn default_imported_types() -> Vec<String> {
    vec!["incident".to_owned()]
}

/// One value of Halo paired with one of ServiceNow, optionally for one record type only:
/// `table = "incident"`, `"task"` (every table but incident) or an exact table name.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueMapping {
    pub halo: toml::Value,
    pub servicenow: String,
    #[serde(default)]
    pub table: Option<String>,
}

/// A Halo priority as ServiceNow's impact and urgency (reference §2.2: "Map Halo priority to
/// impact plus urgency, not to priority"), or as a priority named explicitly.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriorityMapping {
    pub halo: toml::Value,
    #[serde(default)]
    pub servicenow: Option<String>,
    #[serde(default)]
    pub impact: Option<String>,
    #[serde(default)]
    pub urgency: Option<String>,
    #[serde(default)]
    pub table: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryMapping {
    pub halo: String,
    pub category: String,
    #[serde(default)]
    pub subcategory: Option<String>,
    #[serde(default)]
    pub table: Option<String>,
}

/// A Halo custom field written to a ServiceNow field; `values` maps the options of a
/// single-select field (unmapped values are sent as they are).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomFieldMapping {
    pub halo_field_id: i64,
    pub servicenow_field: String,
    #[serde(default)]
    pub values: BTreeMap<String, String>,
    #[serde(default)]
    pub table: Option<String>,
}

/// A Halo service (the ticket's `service_id`) sent as `business_service`, with fields of its own.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceMapping {
    pub halo_service_id: i64,
    pub servicenow_service: String,
    #[serde(default)]
    pub custom_fields: Vec<CustomFieldMapping>,
}

impl ServiceNowConnectionConfig {
    /// The secret name this connection needs.
    pub fn secret_name(&self) -> Option<&str> {
        match self.auth {
            ServiceNowAuthKind::Basic => self.password_secret_name.as_deref(),
            ServiceNowAuthKind::Oauth => self.client_secret_name.as_deref(),
        }
    }
}

/// Shows secret names, never their values.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut secret_names: Vec<&String> = self.secrets.keys().collect();
        secret_names.sort();
        f.debug_struct("Config")
            .field("server", &self.server)
            .field("halo", &self.halo)
            .field("http", &self.http)
            .field("secrets", &secret_names)
            .field("retry", &self.retry)
            .field("retention", &self.retention)
            .field("servicenow", &self.servicenow)
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
    /// The most runs executing at once in this process; above it the trigger answers 503 with
    /// Retry-After (nothing is stored), so a burst waits in Halo's retries instead of memory.
    #[serde(default = "default_max_active_runs")]
    pub max_active_runs: usize,
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

fn default_run_lease_secs() -> u64 {
    60
}

impl ServerConfig {
    /// The node name used in run claims.
    pub fn node_id(&self) -> String {
        self.node_id
            .clone()
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

/// One Halo instance reached with OAuth client credentials
/// (`../shared/reference/halo-api.md` §1).
#[derive(Debug, Clone, Deserialize)]
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

fn default_timeout_secs() -> u64 {
    30
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
    /// Reads, parses and checks a config file: every problem is reported at once.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Config::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            });
        }
        Ok(config)
    }

    /// Parses and checks a config; the error lists every problem, one a line.
    pub fn parse(text: &str) -> Result<Config, String> {
        let config = Config::from_toml(text)?;
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(problem_lines(&problems).trim_start().to_owned());
        }
        Ok(config)
    }

    /// The file's syntax and types only.
    fn from_toml(text: &str) -> Result<Config, String> {
        // toml's own text quotes the offending line, which may hold a secret: keep only the
        // message and where it is.
        toml::from_str(text).map_err(|e| {
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
        })
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
        let main = &config.halo["main"];
        assert_eq!(main.token_url(), "https://acme.haloitsm.com/auth/token");
        assert_eq!(
            main.api_url("Tickets"),
            "https://acme.haloitsm.com/api/Tickets"
        );
        assert_eq!(main.scope, "all");
        assert_eq!(config.server.max_body_bytes, 1024 * 1024);
    }

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
