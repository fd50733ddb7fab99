//! `[servicenow]`: the ServiceNow instances of Halo customers and suppliers, their mappings,
//! webhooks and integrators.

use std::collections::BTreeMap;

use serde::Deserialize;

use haloflow_core::config::{Config, Problems, Section, default_timeout_secs, parse_interval};

/// Every problem of the `[servicenow]` section, each at its key path.
pub(super) fn check(config: &Config, problems: &mut Problems) {
    let Some(servicenow) = problems.section::<ServiceNowConfig>(config) else {
        return;
    };
    for (side, connections) in [
        ("customers", &servicenow.customers),
        ("suppliers", &servicenow.suppliers),
    ] {
        for (id, connection) in connections {
            check_connection(
                problems.at(format!("[servicenow.{side}.\"{id}\"]")),
                connection,
            );
        }
    }
}

/// Problems of one customer's or supplier's connection.
fn check_connection(problems: &mut Problems, sn: &ServiceNowConnectionConfig) {
    problems.url(
        "instance_url",
        &sn.instance_url,
        "https://<instance>.service-now.com",
    );
    check_auth(problems, sn);
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
    check_sync_back(problems, sn);
}

/// The credentials the connection's kind of authentication needs.
fn check_auth(problems: &mut Problems, sn: &ServiceNowConnectionConfig) {
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
}

/// The integration user sync back needs with OAuth, and the webhook's user site and secret.
fn check_sync_back(problems: &mut Problems, sn: &ServiceNowConnectionConfig) {
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

impl Section for ServiceNowConfig {
    const TABLE: &'static str = "servicenow";
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
    /// How long the ServiceNow user found for an end user's email (or that none was found)
    /// is remembered, in seconds; 0 looks the user up for every record created.
    #[serde(default = "default_caller_cache_secs")]
    pub caller_cache_secs: u64,
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

    /// The interval: a number with `s`, `m`, `h` or `d` (checked with the section).
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

fn default_caller_cache_secs() -> u64 {
    300
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
