//! A real server on a port, two Halo emulators, a SQLite file in a temp dir.

pub mod backends;
pub mod cli;
pub mod processes;
pub mod progress;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use haloflow::config::Config;
use haloflow::engine::Engine;
use haloflow::halo::{HaloConfig, HaloConnectionConfig};
use haloflow::internals::flood::FloodClock;
use haloflow::secrets::SecretStore;
use haloflow::storage::{RunDetail, SqliteStorage, Storage};
use haloflow_emulators::RunningEmulator;
use haloflow_emulators::halo::{HaloEmulator, HaloEmulatorConfig};
use serde_json::Value;

/// Distinctive secret values, so tests can search for them anywhere.
pub const ESCALATE_KEY: &str = "KEY-escalate-7f3a9c1e";
pub const ROUTING_PASSWORD: &str = "PW-routing-4b8d2e6f";
pub const TRIAGE_KEY: &str = "KEY-triage-0c5e8a2d";
pub const HALO_SECRET: &str = "CS-halo-91c4e2a8";
pub const PARTNER_SECRET: &str = "CS-partner-5d7f3b19";
/// The API's credentials, for tests that configure `[server.api]` with the secret names
/// `HALOFLOW_API_TOKEN`, or `HALOFLOW_API_PASSWORD` for Basic.
pub const API_TOKEN: &str = "TOKEN-api-8a2f6d13";
pub const API_PASSWORD: &str = "PW-api-4c7e9b25";
/// The console's session secret, for tests that set `session_secret_name` to
/// `HALOFLOW_SESSION_SECRET`.
pub const SESSION_SECRET: &str = "SS-console-e1d3a7f2";

pub fn all_secrets() -> [&'static str; 5] {
    [
        ESCALATE_KEY,
        ROUTING_PASSWORD,
        TRIAGE_KEY,
        HALO_SECRET,
        PARTNER_SECRET,
    ]
}

pub struct Harness {
    /// The public listener: trigger URLs, webhooks, health.
    pub base: String,
    /// The loopback admin listener: the API and /metrics (no credentials are configured).
    pub api: String,
    pub engine: Engine,
    pub halo: HaloEmulator,
    pub partner: HaloEmulator,
    pub data_dir: PathBuf,
    pub client: reqwest::Client,
    _emulators: Vec<RunningEmulator>,
    _dir: tempfile::TempDir,
}

pub type WrapStorage = Box<dyn FnOnce(Arc<SqliteStorage>) -> Arc<dyn Storage>>;

pub struct Options {
    pub flows: PathBuf,
    pub max_body_bytes: usize,
    /// The flood-control clock; a manual one lets tests move time.
    pub clock: FloodClock,
    /// Reuse a data directory (to restart on the same database).
    pub data_dir: Option<PathBuf>,
    /// Changes to the configuration before the engine is built.
    pub configure: fn(&mut Config),
    /// Wraps the SQLite storage (to make it fail or wait).
    pub wrap_storage: Option<WrapStorage>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            flows: PathBuf::from("flows"),
            max_body_bytes: 1024 * 1024,
            clock: FloodClock::default(),
            data_dir: None,
            configure: |_| {},
            wrap_storage: None,
        }
    }
}

async fn emulator(client_id: &str, secret: &str) -> (HaloEmulator, RunningEmulator) {
    let emulator = HaloEmulator::new(HaloEmulatorConfig {
        client_id: client_id.into(),
        client_secret: secret.into(),
        tenant: None,
        token_lifetime_secs: 3600,
    });
    let running = emulator.start().await.expect("emulator starts");
    (emulator, running)
}

fn connection(
    running: &RunningEmulator,
    client_id: &str,
    secret_name: &str,
) -> HaloConnectionConfig {
    HaloConnectionConfig {
        timeout_secs: 5,
        rate_limit_requests: 0,
        ..HaloConnectionConfig::new(running.base_url(), client_id, secret_name)
    }
}

/// Serves `engine` on two fresh local ports: the public listener and the admin (API) one.
/// Returns their base URLs.
pub async fn serve(engine: &Engine) -> (String, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", admin.local_addr().unwrap());
    let listeners = haloflow::server::Listeners {
        public: listener,
        admin: Some(admin),
    };
    tokio::spawn(haloflow::server::serve_listeners(
        engine.clone(),
        listeners,
        std::future::pending(),
    ));
    (base, api)
}

impl Harness {
    /// `/metrics` of the admin listener as text, with the API token (an open listener, with no
    /// credentials configured, lets every caller in and ignores it).
    pub async fn metrics(&self) -> String {
        let response = self.client.get(format!("{}/metrics", self.api));
        let response = response.bearer_auth(API_TOKEN).send().await.unwrap();
        response.text().await.unwrap()
    }

    pub async fn start() -> Harness {
        Harness::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Harness {
        let (halo, halo_running) = emulator("source-client", HALO_SECRET).await;
        let (partner, partner_running) = emulator("partner-client", PARTNER_SECRET).await;
        for sample in ["halo-new-ticket.json", "halo-new-ticket-unassigned.json"] {
            halo.insert_ticket(sample_payload(sample)["ticket"].clone());
        }
        let mut config = Config::default();
        config.server.max_body_bytes = options.max_body_bytes;
        config
            .edit_section(|halo: &mut HaloConfig| {
                halo.insert(
                    "halo".into(),
                    connection(&halo_running, "source-client", "HALO_SECRET"),
                );
                halo.insert(
                    "partner_halo".into(),
                    connection(&partner_running, "partner-client", "PARTNER_SECRET"),
                );
            })
            .unwrap();
        (options.configure)(&mut config);
        let secrets = SecretStore::from_values([
            ("HALOFLOW_ESCALATE_KEY", ESCALATE_KEY),
            ("HALOFLOW_ROUTING_PASSWORD", ROUTING_PASSWORD),
            ("HALOFLOW_TRIAGE_KEY", TRIAGE_KEY),
            ("HALOFLOW_SERVICENOW_KEY", "KEY-servicenow-2b7e"),
            ("HALOFLOW_SUPPLIER_KEY", "KEY-supplier-9d41"),
            ("HALOFLOW_NOTES_KEY", "KEY-notes-60c3"),
            ("HALO_SECRET", HALO_SECRET),
            ("PARTNER_SECRET", PARTNER_SECRET),
            ("HALOFLOW_API_TOKEN", API_TOKEN),
            ("HALOFLOW_API_PASSWORD", API_PASSWORD),
            ("HALOFLOW_SESSION_SECRET", SESSION_SECRET),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let data_dir = options
            .data_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("data"));
        let sqlite = Arc::new(SqliteStorage::open_dir(&data_dir).await.unwrap());
        let storage: Arc<dyn Storage> = match options.wrap_storage {
            Some(wrap) => wrap(sqlite),
            None => sqlite,
        };
        let engine = Engine::builder()
            .integrations(haloflow::bundled::integrations())
            .config(config)
            .secrets(secrets)
            .flows_from(&options.flows)
            .storage(storage)
            .flood_clock(options.clock.clone())
            .build()
            .unwrap_or_else(|e| panic!("engine builds: {e}"));
        engine.restore_flood_control().await.unwrap();
        let (base, api) = serve(&engine).await;
        Harness {
            base,
            api,
            engine,
            halo,
            partner,
            data_dir,
            client: reqwest::Client::new(),
            _emulators: vec![halo_running, partner_running],
            _dir: dir,
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir
            .join(haloflow::internals::storage::DATABASE_FILE)
    }

    pub fn escalate_url(&self, recipients: &str) -> String {
        format!(
            "{}/triggers/escalate-to-partner?apiKey={ESCALATE_KEY}&recipients={recipients}",
            self.base
        )
    }

    pub fn routing_request(&self, query: &str) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}/triggers/new-ticket-routing?{query}", self.base))
            .basic_auth("halo", Some(ROUTING_PASSWORD))
            .header("Content-Type", "application/json")
    }

    pub async fn post_json(&self, url: &str, body: &Value) -> (u16, Value) {
        let response = self.client.post(url).json(body).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn wait(&self, run_id: &str) -> RunDetail {
        tokio::time::timeout(Duration::from_secs(20), self.engine.wait_for_run(run_id))
            .await
            .expect("the run finishes within 20 s")
            .unwrap()
    }

    /// Every byte of the database files (the main file and the WAL).
    pub fn database_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        for entry in std::fs::read_dir(&self.data_dir).unwrap() {
            bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
        }
        bytes
    }
}

/// A Halo emulator whose API application is `id` / `secret`, tokens valid for an hour.
pub fn halo_emulator() -> HaloEmulator {
    HaloEmulator::new(HaloEmulatorConfig {
        client_id: "id".into(),
        client_secret: "secret".into(),
        tenant: None,
        token_lifetime_secs: 3600,
    })
}

/// The token answer of [`halo_emulator`]'s `/auth/token` at `base` (client credentials).
pub async fn halo_token(client: &reqwest::Client, base: &str) -> Value {
    client
        .post(format!("{base}/auth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "id"),
            ("client_secret", "secret"),
            ("scope", "all"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Fails the test if an emulator saw anything Halo's published contract would not take as
/// sent (a property Halo ignores, an undocumented query parameter) or answered off-schema.
pub fn assert_contract_kept(emulators: &[&HaloEmulator]) {
    let warnings: Vec<String> = emulators.iter().flat_map(|e| e.warnings()).collect();
    assert!(
        warnings.is_empty(),
        "requests or answers outside Halo's published contract:\n{}",
        warnings.join("\n")
    );
}

/// Fails the test if a ServiceNow instance dropped fields haloflow sent (not in the table's
/// dictionary, or not writable by the integration user): a real instance drops them silently.
pub fn assert_nothing_dropped(instances: &[&haloflow_emulators::servicenow::ServiceNowEmulator]) {
    let dropped: Vec<String> = instances.iter().flat_map(|e| e.warnings()).collect();
    assert!(
        dropped.is_empty(),
        "fields a ServiceNow instance drops:\n{}",
        dropped.join("\n")
    );
}

/// Checks the contract when a test ends (unless it already failed).
impl Drop for Harness {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            assert_contract_kept(&[&self.halo, &self.partner]);
        }
    }
}

/// A sample webhook from `examples/`, with a fresh delivery GUID (`id`) as each real delivery
/// has: the same GUID twice is a re-send and starts no second run.
pub fn sample_payload(name: &str) -> Value {
    let path = Path::new("examples").join(name);
    let mut payload: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    if let Some(id) = payload.get_mut("id") {
        *id = Value::String(uuid::Uuid::new_v4().to_string());
    }
    payload
}

/// The `/api/...` requests an emulator received (token requests left out), as (method, path, body).
pub fn api_calls(emulator: &HaloEmulator) -> Vec<(String, String, Value)> {
    emulator
        .requests()
        .into_iter()
        .filter(|r| r.path.to_ascii_lowercase().starts_with("/api/"))
        .map(|r| {
            (
                r.method.clone(),
                r.path.clone(),
                r.json().unwrap_or(Value::Null),
            )
        })
        .collect()
}

pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Runs the `#[ignore]`d test `name` (its full path, e.g. `secrets::x`) alone in a new process
/// of this test binary, and fails with its output when it fails. For a test that needs the
/// process to itself (process-wide state such as tracing's callsite interest).
pub fn in_own_process(name: &str) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let output = std::process::Command::new(exe)
        .args(["--exact", name, "--ignored", "--test-threads=1"])
        .output()
        .expect("the test binary starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{name} in a process of its own: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}
