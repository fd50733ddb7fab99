//! `haloflow serve` as a child process against in-process Halo emulators: for crash, restart
//! and several-node tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use super::{ESCALATE_KEY, HALO_SECRET, PARTNER_SECRET, sample_payload};
use haloflow_emulators::RunningEmulator;
use haloflow_emulators::halo::{HaloEmulator, HaloEmulatorConfig};
use serde_json::Value;

pub struct World {
    pub halo: HaloEmulator,
    pub partner: HaloEmulator,
    pub _emulators: Vec<RunningEmulator>,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
}

impl Drop for World {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            super::assert_contract_kept(&[&self.halo, &self.partner]);
        }
    }
}

/// A running `haloflow serve` child process.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub output: Arc<std::sync::Mutex<String>>,
}

pub async fn emulator(client_id: &str, secret: &str) -> (HaloEmulator, RunningEmulator) {
    let emulator = HaloEmulator::new(HaloEmulatorConfig {
        client_id: client_id.into(),
        client_secret: secret.into(),
        tenant: None,
        token_lifetime_secs: 3600,
    });
    let running = emulator.start().await.unwrap();
    (emulator, running)
}

/// The API token of every World's server; its client sends it with each request.
pub const API_TOKEN: &str = "TOKEN-api-3e9b1c47";

fn api_client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {API_TOKEN}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

impl World {
    pub async fn new() -> World {
        World::with_server_settings("").await
    }

    /// A world whose config's `[server]` table gets `settings` too (e.g. `run_lease_secs = 2`).
    pub async fn with_server_settings(settings: &str) -> World {
        let (halo, halo_running) = emulator("source-client", HALO_SECRET).await;
        let (partner, partner_running) = emulator("partner-client", PARTNER_SECRET).await;
        halo.insert_ticket(sample_payload("halo-new-ticket.json")["ticket"].clone());
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("flows")).unwrap();
        std::fs::copy(
            "flows/escalate-to-partner.json",
            dir.path().join("flows/escalate-to-partner.json"),
        )
        .unwrap();
        let config = format!(
            r#"
[server]
shutdown_timeout_secs = 5
admin_listen = "127.0.0.1:0"
{settings}

[server.api]
token_secret_name = "HALOFLOW_API_TOKEN"

[retry]
initial_delay_ms = 20
max_delay_ms = 200

[halo.halo]
base_url = "{}"
client_id = "source-client"
client_secret_name = "HALO_SECRET"
rate_limit_requests = 0

[halo.partner_halo]
base_url = "{}"
client_id = "partner-client"
client_secret_name = "PARTNER_SECRET"
rate_limit_requests = 0
"#,
            halo_running.base_url(),
            partner_running.base_url(),
            settings = settings
        );
        std::fs::write(dir.path().join("haloflow.toml"), config).unwrap();
        World {
            halo,
            partner,
            _emulators: vec![halo_running, partner_running],
            dir,
            client: api_client(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts `haloflow serve` on a free port and waits until it answers.
    pub async fn serve(&self) -> Server {
        self.serve_with(&[]).await
    }

    /// Starts `haloflow serve` with extra arguments (`--database`, `--node-id`).
    pub async fn serve_with(&self, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_haloflow"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .arg("--flows")
            .arg(self.path("flows"))
            .arg("--data")
            .arg(self.path("data"))
            .arg("--config")
            .arg(self.path("haloflow.toml"))
            .env("HALOFLOW_ESCALATE_KEY", ESCALATE_KEY)
            .env("HALOFLOW_API_TOKEN", API_TOKEN)
            .env("HALO_SECRET", HALO_SECRET)
            .env("PARTNER_SECRET", PARTNER_SECRET)
            .env("HALOFLOW_LOG", "haloflow=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let output = Arc::new(std::sync::Mutex::new(String::new()));
        let (first_line, lines) = tokio::sync::oneshot::channel();
        let sink = output.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            sink.lock().unwrap().push_str(&first);
            let _ = first_line.send(first);
            for line in reader.lines().map_while(Result::ok) {
                let mut all = sink.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        let first = tokio::time::timeout(Duration::from_secs(30), lines)
            .await
            .expect("the server starts")
            .unwrap();
        let addr = first
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in {first:?}"));
        Server {
            child,
            base: format!("http://{addr}"),
            output,
        }
    }

    pub async fn webhook(&self, server: &Server) -> String {
        let (status, answer) = self
            .send(server, &sample_payload("halo-new-ticket.json"))
            .await;
        assert_eq!(status, 202, "{answer}");
        answer["run_ids"][0].as_str().unwrap().to_owned()
    }

    /// Posts a webhook body to the escalation trigger; the answer's status and body.
    pub async fn send(&self, server: &Server, payload: &Value) -> (u16, Value) {
        let response = self
            .client
            .post(format!(
                "{}/triggers/escalate-to-partner?apiKey={ESCALATE_KEY}&recipients=ops",
                server.base
            ))
            .json(payload)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn run(&self, server: &Server, run_id: &str) -> Value {
        self.client
            .get(format!("{}/api/runs/{run_id}", server.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Polls the run history until the run has finished.
    pub async fn finished(&self, server: &Server, run_id: &str) -> Value {
        for _ in 0..300 {
            let run = self.run(server, run_id).await;
            if run["status"] == "succeeded" || run["status"] == "failed" {
                return run;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "run {run_id} did not finish: {}",
            self.run(server, run_id).await
        );
    }

    /// The scenario's end state: the run succeeded, the partner holds exactly one ticket and
    /// one action, the source ticket got its update and one note.
    pub fn assert_exactly_once(&self, run: &Value) {
        assert_eq!(run["status"], "succeeded", "{run:#}");
        let tickets = self.partner.tickets();
        assert_eq!(tickets.len(), 1, "{tickets:#?}");
        assert_eq!(self.partner.actions().len(), 1);
        assert_eq!(self.halo.actions().len(), 1);
        assert_eq!(
            run["steps"][0]["outputs"]["ticket_id"], tickets[0]["id"],
            "the run's outputs name the one ticket"
        );
    }
}

impl Server {
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn wait_exit(mut self) -> (std::process::ExitStatus, String) {
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                return (status, self.output.lock().unwrap().clone());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill().unwrap();
        panic!("the server did not stop: {}", self.output.lock().unwrap());
    }
}

pub fn database(world: &World) -> PathBuf {
    world
        .path("data")
        .join(haloflow::internals::storage::DATABASE_FILE)
}

pub fn exists(path: &Path) -> bool {
    path.exists()
}
