//! Crashes and restarts of a real `haloflow serve` process: SIGKILL at the worst moments and
//! SIGTERM with work in flight. Nothing accepted is lost, nothing is created twice.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{ESCALATE_KEY, HALO_SECRET, PARTNER_SECRET, sample_payload};
use haloflow::emulator::halo::{HaloEmulator, HaloEmulatorConfig};
use haloflow::emulator::{Fault, Hold, RunningEmulator};
use serde_json::{Value, json};

struct World {
    halo: HaloEmulator,
    partner: HaloEmulator,
    _emulators: Vec<RunningEmulator>,
    dir: tempfile::TempDir,
    client: reqwest::Client,
}

/// A running `haloflow serve` child process.
struct Server {
    child: Child,
    base: String,
    output: Arc<std::sync::Mutex<String>>,
}

async fn emulator(client_id: &str, secret: &str) -> (HaloEmulator, RunningEmulator) {
    let emulator = HaloEmulator::new(HaloEmulatorConfig {
        client_id: client_id.into(),
        client_secret: secret.into(),
        tenant: None,
        token_lifetime_secs: 3600,
    });
    let running = emulator.start().await.unwrap();
    (emulator, running)
}

impl World {
    async fn new() -> World {
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
            partner_running.base_url()
        );
        std::fs::write(dir.path().join("haloflow.toml"), config).unwrap();
        World {
            halo,
            partner,
            _emulators: vec![halo_running, partner_running],
            dir,
            client: reqwest::Client::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts `haloflow serve` on a free port and waits until it answers.
    async fn serve(&self) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_haloflow"))
            .args(["serve", "--listen", "127.0.0.1:0", "--flows"])
            .arg(self.path("flows"))
            .arg("--data")
            .arg(self.path("data"))
            .arg("--config")
            .arg(self.path("haloflow.toml"))
            .env("HALOFLOW_ESCALATE_KEY", ESCALATE_KEY)
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

    async fn webhook(&self, server: &Server) -> String {
        let response = self
            .client
            .post(format!(
                "{}/triggers/escalate-to-partner?apiKey={ESCALATE_KEY}&recipients=ops",
                server.base
            ))
            .json(&sample_payload("halo-new-ticket.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        let answer: Value = response.json().await.unwrap();
        answer["run_ids"][0].as_str().unwrap().to_owned()
    }

    async fn run(&self, server: &Server, run_id: &str) -> Value {
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
    async fn finished(&self, server: &Server, run_id: &str) -> Value {
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
    fn assert_exactly_once(&self, run: &Value) {
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
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait_exit(mut self) -> (std::process::ExitStatus, String) {
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

fn database(world: &World) -> PathBuf {
    world.path("data").join(haloflow::storage::DATABASE_FILE)
}

fn exists(path: &Path) -> bool {
    path.exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_accept_and_the_first_request() {
    let world = World::new().await;
    let hold = Hold::new();
    world.partner.inject(
        "POST",
        "/auth/token",
        Fault::HoldBeforeProcessing(hold.clone()),
        1,
    );
    let server = world.serve().await;
    let run_id = world.webhook(&server).await;
    hold.arrived().await;
    server.kill();
    assert!(exists(&database(&world)));
    assert!(
        world.partner.tickets().is_empty(),
        "nothing was created yet"
    );

    let server = world.serve().await;
    let run = world.finished(&server, &run_id).await;
    world.assert_exactly_once(&run);
    assert!(
        server
            .output
            .lock()
            .unwrap()
            .contains("resumed 1 unfinished run")
    );
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_two_steps() {
    let world = World::new().await;
    let hold = Hold::new();
    world.partner.inject(
        "POST",
        "/api/Actions",
        Fault::HoldBeforeProcessing(hold.clone()),
        1,
    );
    let server = world.serve().await;
    let run_id = world.webhook(&server).await;
    hold.arrived().await;
    let before = world.run(&server, &run_id).await;
    assert_eq!(before["steps"][0]["status"], "succeeded", "{before:#}");
    server.kill();

    let server = world.serve().await;
    let run = world.finished(&server, &run_id).await;
    world.assert_exactly_once(&run);
    assert_eq!(
        run["steps"][0]["attempts"], 1,
        "the finished create was not run again"
    );
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_a_create_and_its_record() {
    let world = World::new().await;
    let hold = Hold::new();
    world.partner.inject(
        "POST",
        "/api/Tickets",
        Fault::HoldAfterProcessing(hold.clone()),
        1,
    );
    let server = world.serve().await;
    let run_id = world.webhook(&server).await;
    hold.arrived().await;
    assert_eq!(world.partner.tickets().len(), 1, "Halo made the ticket");
    let before = world.run(&server, &run_id).await;
    assert_eq!(before["steps"][0]["status"], "running");
    server.kill();

    let server = world.serve().await;
    let run = world.finished(&server, &run_id).await;
    world.assert_exactly_once(&run);
    let attempts = run["steps"][0]["attempt_log"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{attempts:#?}");
    assert_eq!(attempts[0]["number"], 2, "attempt 1 died with the process");
    assert_eq!(attempts[0]["outcome"], "adopted");
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_work_in_flight_loses_nothing() {
    let world = World::new().await;
    let hold = Hold::new();
    world.partner.inject(
        "POST",
        "/api/Tickets",
        Fault::HoldBeforeProcessing(hold.clone()),
        1,
    );
    let server = world.serve().await;
    let run_id = world.webhook(&server).await;
    hold.arrived().await;
    server.terminate();
    // The step in flight may finish within the shutdown timeout; no later step starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    hold.release();
    let (status, output) = tokio::task::spawn_blocking(move || server.wait_exit())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}: {output}");
    assert!(output.contains("haloflow stopped"), "{output}");
    assert_eq!(world.partner.tickets().len(), 1);
    assert!(
        world.partner.actions().is_empty(),
        "no step started after SIGTERM"
    );

    let server = world.serve().await;
    let run = world.finished(&server, &run_id).await;
    world.assert_exactly_once(&run);
    assert_eq!(run["steps"][0]["attempts"], 1);
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_replay_on_the_command_line() {
    let world = World::new().await;
    world.halo.fail_next("POST", "/api/Tickets", 400, 1, None);
    let server = world.serve().await;
    let run_id = world.webhook(&server).await;
    let failed = world.finished(&server, &run_id).await;
    assert_eq!(failed["failed_step"], "link_back");
    server.kill();

    let mut replay = Command::new(env!("CARGO_BIN_EXE_haloflow"));
    replay
        .args(["runs", "replay", &run_id, "--json", "--flows"])
        .arg(world.path("flows"))
        .arg("--data")
        .arg(world.path("data"))
        .arg("--config")
        .arg(world.path("haloflow.toml"))
        .env("HALOFLOW_ESCALATE_KEY", ESCALATE_KEY)
        .env("HALO_SECRET", HALO_SECRET)
        .env("PARTNER_SECRET", PARTNER_SECRET);
    // The emulators answer on this runtime while the command runs.
    let output = tokio::task::spawn_blocking(move || replay.output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let replay: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(replay["status"], "succeeded");
    assert_eq!(replay["replay_of"], json!(run_id));
    assert_eq!(replay["steps"][0]["reused_from"], json!(run_id));
    world.assert_exactly_once(&replay);
}
