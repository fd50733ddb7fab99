//! The reference-workload load benchmark (issue 7): `cargo bench --bench load [-- OPTIONS]`.
//!
//! In this process: a Halo emulator and a ServiceNow emulator (near-zero latency) and a load
//! generator (a minimal keep-alive HTTP/1.1 client, one task per connection). In a separate
//! process: the release `haloflow serve` on a fresh SQLite data directory, serving one flow:
//! Halo's default webhook (about 1.5 KB) → `halo.create_ticket` → `halo.add_action` on the new
//! ticket → `servicenow.send_ticket` of the webhook's ticket (its client's ServiceNow, Basic).
//!
//! Each repetition: a baseline (a plain axum server, another process, answering 202 with no
//! work) under the same load, then haloflow: warm-up, wait for the backlog to drain, then the
//! measured phase at a fixed number of connections for a fixed duration, then the drain. A run
//! counts as completed when the ServiceNow emulator has created its incident (the last step).
//!
//! haloflow is measured at both durability levels (`server.durability`: `process_crash`, the
//! default, and `power_loss`) unless `--durability` says otherwise.
//! `--pin` puts the server (and the baseline) on CPU 0, this process on CPU 1 (`taskset`).
//! `cargo bench --bench load -- --help` lists every option.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use clap::Parser;
use haloflow_emulators::halo::{HaloEmulator, HaloEmulatorConfig};
use haloflow_emulators::servicenow::{ServiceNowEmulator, ServiceNowEmulatorConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FLOW_ID: &str = "load-reference";
const TRIGGER_KEY: &str = "KEY-load-3f9a1c";
const HALO_CLIENT: &str = "load-client";
const HALO_SECRET: &str = "CS-load-7b2e";
const SN_USER: &str = "halo.integration";
const SN_PASSWORD: &str = "PW-load-5d1c";
/// The Halo client id of every webhook ticket: it picks `[servicenow.customers."12"]`.
const CLIENT_ID: i64 = 12;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "load",
    about = "Load benchmark of the issue 7 reference workload against `haloflow serve`"
)]
struct Args {
    /// Seconds of measured load.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Seconds of warm-up load before it (its backlog drains before the measured phase).
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// Concurrent HTTP connections (closed loop: each sends its next webhook on the answer).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Repetitions (each: baseline, then haloflow; fresh emulators, data dir and server).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Server and baseline on CPU 0, load generator and emulators on CPU 1 (taskset).
    #[arg(long)]
    pin: bool,
    /// `server.durability` values to measure, comma separated, each in every repetition:
    /// `process_crash` (synchronous=NORMAL), `power_loss` (synchronous=FULL), or `default`
    /// (the key left out: the server's default, and the only choice for servers without it).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "process_crash,power_loss"
    )]
    durability: Vec<String>,
    /// Open loop: send this many webhooks per second in all (spread evenly over the
    /// connections) instead of each connection sending its next one on the answer. Latency is
    /// then measured from when a webhook was due, so a server that falls behind is not flattered.
    #[arg(long)]
    rate: Option<f64>,
    /// `server.max_active_runs` for haloflow (default: the server's own default).
    #[arg(long)]
    max_active_runs: Option<usize>,
    /// `server.max_paced_runs` for haloflow (default: the server's own; 0 turns slot lending
    /// off, as before it existed).
    #[arg(long)]
    max_paced_runs: Option<usize>,
    /// Delay every answer of the Halo and ServiceNow emulators by this many milliseconds (a
    /// plain delay before the emulator handles the request, like a distant API).
    #[arg(long, default_value_t = 0)]
    api_latency_ms: u64,
    /// Fairness run instead of the reference workload: this many Halo tenants (one paced
    /// connection and emulator each, one flow each); tenant 0 sends a backlog far beyond its
    /// pacing, the others a steady trickle (see benches/load/tenants.rs).
    #[arg(long, default_value_t = 0)]
    tenants: usize,
    /// `--tenants`: webhooks the busy tenant sends at once at the start.
    #[arg(long, default_value_t = 2000)]
    tenant_backlog: usize,
    /// `--tenants`: webhooks per second each other tenant sends during `--duration`.
    #[arg(long, default_value_t = 1.0)]
    tenant_rate: f64,
    /// `--tenants`: each connection's pacing, `requests/seconds` (Halo's default: 280/300).
    #[arg(long, default_value = "280/300")]
    tenant_pacing: String,
    /// Skip the plain-axum baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Run on PostgreSQL instead of SQLite: a fresh database is created through this admin
    /// URL for each measurement (e.g. postgres://postgres@127.0.0.1:5432/test) and dropped after.
    #[arg(long)]
    database: Option<String>,
    /// Serve with this many `haloflow serve` nodes on the one database (PostgreSQL for more
    /// than one); the connections are spread over them. Figures add the nodes' CPU.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Give up the drain after this many seconds without a completed run.
    #[arg(long, default_value_t = 30)]
    stall_secs: u64,
    /// The haloflow binary (default: the one cargo built with this benchmark).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Where the temporary data directories go (default: cargo's target/tmp, on the same disk
    /// as the project; not a tmpfs, so fsync costs what it costs).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Prefix the server command, e.g. "valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out"
    /// (split on spaces). The CPU and memory figures are then the wrapper's.
    #[arg(long)]
    server_wrap: Option<String>,
    /// A command started when the measured phase starts and stopped with SIGINT when the
    /// backlog has drained; `{pid}` is the server's pid, e.g.
    /// "perf record -F 499 -g -o /tmp/perf.data -p {pid}" (split on spaces).
    #[arg(long)]
    on_measure: Option<String>,
    /// Keep the temporary directories (config, flow, database, server log).
    #[arg(long)]
    keep: bool,
    /// Internal: serve the baseline (a plain axum server answering 202) and print its address.
    #[arg(long, hide = true)]
    baseline_server: bool,
    /// Passed by `cargo bench`; without it (as under `cargo test --benches`) nothing runs.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The load side (generator and emulators) on its own core must keep up with the server.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "load/tenants.rs"]
mod tenants;

fn main() {
    let args = Args::parse();
    if args.baseline_server {
        baseline_server();
        return;
    }
    if !args.bench {
        println!("load: not run (start it with `cargo bench --bench load`)");
        return;
    }
    if args.pin {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cpus < 2 {
            eprintln!("--pin needs 2 CPUs, this process may use {cpus}");
            std::process::exit(2);
        }
        // Before the runtime starts, so every thread of this process inherits CPU 1.
        let status = Command::new("taskset")
            .args(["-a", "-p", "-c", "1", &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("taskset failed: --pin needs util-linux's taskset");
            std::process::exit(2);
        }
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(run(args));
}

/// The baseline: a plain axum server that reads the body and answers 202 with a small JSON
/// body, on a multi-thread runtime as `haloflow serve` has.
fn baseline_server() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!(
            "listening on http://{}",
            listener.local_addr().expect("addr")
        );
        let app = Router::new().fallback(|body: axum::body::Bytes| async move {
            let answer = format!(
                "{{\"request_id\":\"baseline\",\"flow_id\":\"{FLOW_ID}\",\"bytes\":{}}}",
                body.len()
            );
            (
                axum::http::StatusCode::ACCEPTED,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                answer,
            )
        });
        axum::serve(listener, app).await.expect("serve");
    });
}

// ---------------------------------------------------------------------------------------------
// The workload: webhook, flow, config.

/// The ticket as Halo holds it and sends it in its default webhook: quotes and newlines in
/// `details`, custom fields.
fn ticket_template() -> Value {
    json!({
        "summary": "Disk space low on \"SRV01\" (C:)",
        "details": "Monitoring says \"C:\" is at 97%.\nPlease free space before the nightly backup.\n\nLast alerts:\n- 06:30 \"disk warning\" 91%\n- 06:35 \"disk critical\" 97%\n\nServer: SRV01 (Windows Server 2022), owner: Jo Bloggs <jo.bloggs@acme.example>",
        "tickettype_id": 1,
        "client_id": CLIENT_ID,
        "client_name": "Acme Ltd",
        "site_id": 20,
        "site_name": "Head Office",
        "user_id": 399,
        "user_name": "Jo Bloggs",
        "user_email": "jo.bloggs@acme.example",
        "agent_id": 3,
        "team": "Service Desk",
        "team_id": 5,
        "status_id": 1,
        "priority_id": 2,
        "impact": 2,
        "urgency": 2,
        "category_1": "Hardware",
        "category_2": "Storage",
        "sla_id": 1,
        "source": "Monitoring",
        "reportedby": "PRTG Network Monitor <prtg@acme.example>",
        "emailcclist": "ops@acme.example; \"Night Shift\" <night@acme.example>",
        "dateoccurred": "2026-09-25T06:35:12Z",
        "deadlinedate": "2026-09-25T10:35:12Z",
        "sla_name": "Gold 4h",
        "userdef1": "Rack B4, U12",
        "customfields": [
            { "id": 178, "name": "CFMonitorRef", "value": "ALERT-42", "display": "ALERT-42" },
            { "id": 179, "name": "CFAssetTag", "value": "SRV01-\"primary\"", "display": "SRV01-\"primary\"" },
            { "id": 180, "name": "CFEnvironment", "value": "Production", "display": "Production" }
        ],
        "hasbeenclosed": false
    })
}

/// Halo's default webhook body for a ticket the emulator holds.
fn webhook(ticket: &Value, ticket_id: i64, seq: u64) -> Vec<u8> {
    let delivery = uuid::Uuid::new_v4().to_string();
    let body = json!({
        "id": delivery,
        "webhook_id": "53232637-9a8e-4f1b-8d3c-2a1b0c9d8e7f",
        "notification_id": 41,
        "escmsg_id": format!("a726ee11-3c5d-4e2f-9a1b-{seq:012x}"),
        "event": "new ticket logged",
        "message": format!("A new ticket has been logged: Ticket ID: {ticket_id:07}."),
        "object_id": ticket_id,
        "agent_id": 3,
        "timestamp": "2026-09-25T06:41:08.7895915Z",
        "ticket": ticket,
    });
    serde_json::to_vec(&body).expect("JSON")
}

fn flow_document() -> Value {
    json!({
        "id": FLOW_ID,
        "name": "Load benchmark: the issue 7 reference workload",
        "trigger": {
            "type": "halo.incidents",
            "auth": { "type": "url_key", "param": "apiKey", "secret_name": "LOAD_TRIGGER_KEY" },
            "flood_control": { "enabled": false }
        },
        "steps": [
            {
                "id": "create",
                "type": "halo.create_ticket",
                "inputs": {
                    "summary": "[Halo #{{trigger.ticket_id}}] {{trigger.ticket.summary}}",
                    "details": "{{trigger.ticket.details}}",
                    "tickettype_id": "{{trigger.ticket.tickettype_id}}",
                    "client_id": "{{trigger.ticket.client_id}}",
                    "site_id": "{{trigger.ticket.site_id}}",
                    "user_id": "{{trigger.ticket.user_id}}",
                    "team": "{{trigger.ticket.team}}",
                    "priority_id": "{{default trigger.ticket.priority_id 4}}",
                    "impact": "{{default trigger.ticket.impact 3}}",
                    "urgency": "{{default trigger.ticket.urgency 3}}",
                    "category_1": "{{default trigger.ticket.category_1 \"General\"}}",
                    "customfields": [
                        { "id": 200, "value": "{{trigger.ticket_id}}" },
                        { "id": 201, "value": "{{trigger.delivery_id}}" }
                    ]
                }
            },
            {
                "id": "note",
                "type": "halo.add_action",
                "inputs": {
                    "ticket_id": "{{steps.create.ticket_id}}",
                    "outcome": "Note",
                    "note": "Created from Halo ticket {{trigger.ticket_id}} ({{trigger.event}}) as {{steps.create.ticket_id}}. Notify: {{join trigger.recipients \", \"}}",
                    "private": true
                }
            },
            {
                "id": "servicenow",
                "type": "servicenow.send_ticket",
                "inputs": { "ticket_id": "{{trigger.ticket_id}}" }
            }
        ]
    })
}

fn config_text(halo: &str, servicenow: &str, durability: &str, args: &Args) -> String {
    let mut durability = match durability {
        "default" => String::new(),
        level => format!("durability = \"{level}\"\n"),
    };
    durability.push_str(&args.slot_settings());
    format!(
        r#"# Written by benches/load.rs.
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
metrics_public = true
{durability}
[secrets]
LOAD_TRIGGER_KEY = "{TRIGGER_KEY}"
HALO_CLIENT_SECRET = "{HALO_SECRET}"
SN_PASSWORD = "{SN_PASSWORD}"

[halo.halo]
base_url = "{halo}"
client_id = "{HALO_CLIENT}"
client_secret_name = "HALO_CLIENT_SECRET"
timeout_secs = 10
rate_limit_requests = 0

[servicenow.customers."{CLIENT_ID}"]
name = "Acme Ltd"
instance_url = "{servicenow}"
auth = "basic"
username = "{SN_USER}"
password_secret_name = "SN_PASSWORD"
timeout_secs = 10
default_caller = "6816f79cc0a8016401c5a33be04be441"
default_assignment_group = "8a5055c9c61122780043563ef53438e3"
priority = [{{ halo = 1, servicenow = "1" }}, {{ halo = 2, servicenow = "2" }}, {{ halo = 3, servicenow = "3" }}]
impact = [{{ halo = 1, servicenow = "1" }}, {{ halo = 2, servicenow = "2" }}, {{ halo = 3, servicenow = "3" }}]
urgency = [{{ halo = 1, servicenow = "1" }}, {{ halo = 2, servicenow = "2" }}, {{ halo = 3, servicenow = "3" }}]
category = [{{ halo = "Hardware", category = "hardware", subcategory = "disk" }}]
assignment_group = [{{ halo = "Service Desk", servicenow = "d625dccec0a8016700a222a0f7900d06" }}]
custom_fields = [{{ halo_field_id = 178, servicenow_field = "u_monitor_ref" }}]
"#
    )
}

// ---------------------------------------------------------------------------------------------
// Emulators, with counters of what completes at them.

#[derive(Default)]
struct Counters {
    /// ServiceNow incidents created: completed runs (the last step's work).
    incidents: AtomicU64,
    /// Microseconds since `Emulators::epoch` of the last incident created.
    last_incident_us: AtomicU64,
    /// Halo tickets created by the flow (201 to `POST /api/Tickets`).
    halo_creates: AtomicU64,
    /// Answers other than 2xx from either emulator.
    errors: AtomicU64,
}

struct Emulators {
    halo: HaloEmulator,
    servicenow: ServiceNowEmulator,
    halo_url: String,
    servicenow_url: String,
    counters: Arc<Counters>,
    epoch: Instant,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Emulators {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Serves an emulator's `router`, counting what completes at it, each answer `latency` late.
async fn serve_counted(
    router: Router,
    counters: Arc<Counters>,
    epoch: Instant,
    latency: Duration,
) -> (String, tokio::task::JoinHandle<()>) {
    let counted = router.layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let counters = counters.clone();
            async move {
                if !latency.is_zero() {
                    tokio::time::sleep(latency).await;
                }
                let post = request.method() == axum::http::Method::POST;
                let path = request.uri().path().to_ascii_lowercase();
                let response = next.run(request).await;
                let status = response.status().as_u16();
                if !(200..300).contains(&status) {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                } else if post && status == 201 && path.ends_with("/table/incident") {
                    counters.incidents.fetch_add(1, Ordering::Relaxed);
                    counters
                        .last_incident_us
                        .fetch_max(epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
                } else if post && status == 201 && path == "/api/tickets" {
                    counters.halo_creates.fetch_add(1, Ordering::Relaxed);
                }
                response
            }
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, counted).await;
    });
    (url, task)
}

async fn start_emulators(latency: Duration) -> Emulators {
    let halo = HaloEmulator::new(HaloEmulatorConfig {
        client_id: HALO_CLIENT.into(),
        client_secret: HALO_SECRET.into(),
        tenant: None,
        token_lifetime_secs: 86_400,
    });
    let servicenow = ServiceNowEmulator::new(ServiceNowEmulatorConfig {
        username: SN_USER.into(),
        password: SN_PASSWORD.into(),
        oauth_client_id: None,
        oauth_client_secret: None,
        token_lifetime_secs: 86_400,
        oauth_user: "oauth.app".into(),
    });
    // The customer's own field, which the config's custom field mapping writes.
    servicenow.add_field("task", "u_monitor_ref");
    servicenow.insert_record(
        "sys_user",
        json!({"user_name": "jo.bloggs", "email": "jo.bloggs@acme.example", "active": "true"}),
    );
    let counters = Arc::new(Counters::default());
    let epoch = Instant::now();
    let (halo_url, halo_task) =
        serve_counted(halo.router(), counters.clone(), epoch, latency).await;
    let (servicenow_url, sn_task) =
        serve_counted(servicenow.router(), counters.clone(), epoch, latency).await;
    Emulators {
        halo,
        servicenow,
        halo_url,
        servicenow_url,
        counters,
        epoch,
        tasks: vec![halo_task, sn_task],
    }
}

// ---------------------------------------------------------------------------------------------
// Processes: the server under test and the baseline.

struct Server {
    child: Child,
    pid: u32,
    addr: SocketAddr,
}

impl Server {
    fn start(command: Command, pin: bool, wrap: Option<&str>, log: &Path) -> Server {
        let program = command.get_program().to_owned();
        let args: Vec<_> = command.get_args().map(|a| a.to_owned()).collect();
        let mut full: Vec<std::ffi::OsString> = Vec::new();
        if pin {
            full.extend(["taskset".into(), "-c".into(), "0".into()]);
        }
        if let Some(wrap) = wrap {
            full.extend(wrap.split_whitespace().map(Into::into));
        }
        full.push(program);
        full.extend(args);
        let mut real = Command::new(&full[0]);
        real.args(&full[1..]);
        for (key, value) in command.get_envs() {
            if let Some(value) = value {
                real.env(key, value);
            }
        }
        let log_file = std::fs::File::create(log).expect("server log");
        let mut child = real
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {full:?}: {e}"));
        let pid = child.id();
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                panic!("the server did not print its address within 120 s; its log:\n{log}")
            })
            .parse()
            .expect("address");
        Server { child, pid, addr }
    }

    /// SIGTERM, then wait (SIGKILL after 60 s).
    async fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// utime + stime of a process, in milliseconds.
fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of proc(5); `after` starts at field 3.
    (ticks(11) + ticks(12)) * 1000.0 / clock_ticks()
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// A `/proc/<pid>/status` field in kB (VmHWM: peak RSS, VmRSS: now).
fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| {
            rest.trim_start_matches(':')
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// The load generator: a minimal HTTP/1.1 keep-alive client.

struct Connection {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buffer: Vec<u8>,
}

impl Connection {
    fn new(addr: SocketAddr) -> Self {
        Connection {
            addr,
            stream: None,
            buffer: Vec::with_capacity(8192),
        }
    }

    /// Sends one request (head and body written at once) and reads the whole answer; the status.
    async fn send(&mut self, request: &[u8]) -> std::io::Result<u16> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.addr).await?;
            stream.set_nodelay(true)?;
            self.stream = Some(stream);
        }
        let result = self.exchange(request).await;
        if !matches!(result, Ok((_, true))) {
            self.stream = None;
        }
        result.map(|(status, _)| status)
    }

    /// The status and whether the connection stays open.
    async fn exchange(&mut self, request: &[u8]) -> std::io::Result<(u16, bool)> {
        let stream = self.stream.as_mut().expect("connected");
        stream.write_all(request).await?;
        self.buffer.clear();
        let closed = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed");
        let head_end = loop {
            if let Some(i) = find(&self.buffer, b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(closed());
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buffer[..head_end]).to_ascii_lowercase();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| std::io::Error::other("bad status line"))?;
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
        };
        let length: usize = header("content-length:")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| std::io::Error::other("answer without content-length"))?;
        while self.buffer.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(closed());
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
        let keep = header("connection:").is_none_or(|v| v != "close");
        Ok((status, keep))
    }

    fn body(&self) -> &[u8] {
        let start = find(&self.buffer, b"\r\n\r\n").map_or(0, |i| i + 4);
        &self.buffer[start..]
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn post_request(addr: SocketAddr, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST /triggers/{FLOW_ID}?apiKey={TRIGGER_KEY}&recipients=ops,Emma%20Pearson HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: Halo-Webhook\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut connection = Connection::new(addr);
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let status = connection.send(request.as_bytes()).await.ok()?;
    (status == 200).then(|| String::from_utf8_lossy(connection.body()).into_owned())
}

/// `haloflow_runs{flow,status}` from `/metrics`, summed by status.
async fn run_statuses(addr: SocketAddr) -> Option<BTreeMap<String, u64>> {
    let metrics = http_get(addr, "/metrics").await?;
    let mut statuses = BTreeMap::new();
    for line in metrics.lines().filter(|l| l.starts_with("haloflow_runs{")) {
        let status = line.split("status=\"").nth(1)?.split('"').next()?;
        let n: u64 = line.rsplit(' ').next()?.parse().ok()?;
        *statuses.entry(status.to_owned()).or_default() += n;
    }
    Some(statuses)
}

/// Waits (up to `limit`) until the server has no queued or running run: the last writes of
/// runs whose ServiceNow step is done. Returns the runs by status.
async fn settle(addr: SocketAddr, limit: Duration) -> BTreeMap<String, u64> {
    let deadline = Instant::now() + limit;
    loop {
        let statuses = run_statuses(addr).await.unwrap_or_default();
        let open = ["queued", "running"]
            .iter()
            .filter_map(|s| statuses.get(*s))
            .sum::<u64>();
        if open == 0 || Instant::now() > deadline {
            return statuses;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The server's log without colours: how many lines, and each distinct message (with the
/// run id left out) once with its count.
fn log_summary(text: &str) -> Vec<String> {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for line in plain.lines().filter(|l| !l.trim().is_empty()) {
        // Drop the timestamp and the fields after the message (run_id=...).
        let message = line.split_once(' ').map_or(line, |(_, rest)| rest);
        let message = message.split(" run_id=").next().unwrap_or(message);
        *counts.entry(message.trim().to_owned()).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(message, n)| format!("{n}× {message}"))
        .collect()
}

#[derive(Default)]
struct PhaseResult {
    /// Answer latencies in microseconds, sorted.
    latencies_us: Vec<u32>,
    statuses: BTreeMap<u16, u64>,
    io_errors: u64,
    elapsed: Duration,
}

impl PhaseResult {
    fn count(&self, status: u16) -> u64 {
        self.statuses.get(&status).copied().unwrap_or(0)
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.latencies_us.len() as f64).ceil() as usize;
        let i = rank.clamp(1, self.latencies_us.len()) - 1;
        f64::from(self.latencies_us[i]) / 1000.0
    }
}

/// One connection's share of the load: webhooks one after another until the deadline, each
/// when due in an open loop.
struct ConnectionLoad {
    addr: SocketAddr,
    halo: HaloEmulator,
    template: Arc<Value>,
    sequence: Arc<AtomicU64>,
    started: Instant,
    deadline: Instant,
    /// Open loop: the time between this connection's webhooks.
    interval: Option<Duration>,
    /// Open loop: where in the interval this connection's first webhook is due (0 to 1).
    offset: f64,
}

impl ConnectionLoad {
    async fn run(self) -> PhaseResult {
        let mut connection = Connection::new(self.addr);
        let mut result = PhaseResult::default();
        let interval = self.interval;
        let mut due = self.started + interval.map_or(Duration::ZERO, |d| d.mul_f64(self.offset));
        while Instant::now() < self.deadline {
            if interval.is_some() {
                tokio::time::sleep_until(due.into()).await;
                if due >= self.deadline {
                    break;
                }
            }
            let request = self.next_webhook();
            let sent = if interval.is_some() {
                due
            } else {
                Instant::now()
            };
            if let Some(interval) = interval {
                due += interval;
            }
            match connection.send(&request).await {
                Ok(status) => {
                    result
                        .latencies_us
                        .push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                    *result.statuses.entry(status).or_default() += 1;
                }
                Err(_) => {
                    result.io_errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        result
    }

    /// The next webhook: its ticket created in the Halo emulator first, a fresh delivery id.
    fn next_webhook(&self) -> Vec<u8> {
        let seq = self.sequence.fetch_add(1, Ordering::Relaxed);
        let mut ticket = (*self.template).clone();
        let ticket_id = self.halo.insert_ticket(ticket.clone());
        ticket["id"] = json!(ticket_id);
        post_request(self.addr, &webhook(&ticket, ticket_id, seq))
    }
}

/// Drives webhooks at `connections` connections for `duration`: closed loop, or at `rate`
/// webhooks per second in all. Each webhook's ticket is created in the Halo emulator first (a
/// fresh id), and carries a fresh delivery id.
async fn drive(
    addrs: &[SocketAddr],
    emulators: &Emulators,
    connections: usize,
    duration: Duration,
    sequence: Arc<AtomicU64>,
    rate: Option<f64>,
) -> PhaseResult {
    let started = Instant::now();
    let template = Arc::new(ticket_template());
    let mut tasks = Vec::new();
    for i in 0..connections {
        let load = ConnectionLoad {
            addr: addrs[i % addrs.len()],
            halo: emulators.halo.clone(),
            template: template.clone(),
            sequence: sequence.clone(),
            started,
            deadline: started + duration,
            // Open loop: this connection's k-th webhook is due at (k * connections + i) / rate.
            interval: rate.map(|r| Duration::from_secs_f64(connections as f64 / r)),
            offset: i as f64 / connections as f64,
        };
        tasks.push(tokio::spawn(load.run()));
    }
    let mut total = PhaseResult::default();
    for task in tasks {
        let result = task.await.expect("load task");
        total.latencies_us.extend(result.latencies_us);
        for (status, n) in result.statuses {
            *total.statuses.entry(status).or_default() += n;
        }
        total.io_errors += result.io_errors;
    }
    total.elapsed = started.elapsed();
    total.latencies_us.sort_unstable();
    total
}

// ---------------------------------------------------------------------------------------------
// One repetition.

struct Figures {
    /// Webhooks answered 202 and runs completed in the measured phase.
    accepted: u64,
    completed: u64,
    /// Webhooks answered 202 per second during the measured phase.
    accepted_per_s: f64,
    /// Runs completed (ServiceNow incidents) per second, from the start of the measured phase
    /// to the last completion.
    completed_per_s: f64,
    /// Completions per second within the measured phase itself.
    completed_in_window_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    cpu_ms_per_run: f64,
    peak_rss_mb: f64,
    rss_after_warmup_mb: f64,
    rss_end_mb: f64,
    /// RSS during the measured phase: at its start, at its end (after the last webhook), peak.
    rss_load_mb: (f64, f64, f64),
    not_completed: u64,
    drain_s: f64,
    other_statuses: String,
    /// This process (load generator and emulators): CPU ms per run, and its share of one core.
    load_cpu_ms_per_run: f64,
    load_core_share: f64,
    failed_runs: String,
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn other_statuses(result: &PhaseResult) -> String {
    let mut parts: Vec<String> = result
        .statuses
        .iter()
        .filter(|(s, _)| **s != 202)
        .map(|(s, n)| format!("{s}×{n}"))
        .collect();
    if result.io_errors > 0 {
        parts.push(format!("io-errors×{}", result.io_errors));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(" ")
    }
}

async fn run_baseline(args: &Args, emulators: &Emulators, dir: &Path) -> Figures {
    let exe = std::env::current_exe().expect("current exe");
    let mut command = Command::new(exe);
    command.arg("--baseline-server");
    let server = Server::start(command, args.pin, None, &dir.join("baseline.log"));
    let sequence = Arc::new(AtomicU64::new(0));
    drive(
        &[server.addr],
        emulators,
        args.connections,
        Duration::from_secs(args.warmup),
        sequence.clone(),
        args.rate,
    )
    .await;
    let rss_after_warmup = status_kb(server.pid, "VmRSS");
    let cpu0 = cpu_ms(server.pid);
    let self0 = cpu_ms(std::process::id());
    let result = drive(
        &[server.addr],
        emulators,
        args.connections,
        Duration::from_secs(args.duration),
        sequence,
        args.rate,
    )
    .await;
    let cpu = cpu_ms(server.pid) - cpu0;
    let self_cpu = cpu_ms(std::process::id()) - self0;
    let answered = result.count(202);
    let secs = result.elapsed.as_secs_f64();
    let figures = Figures {
        accepted: answered,
        completed: answered,
        accepted_per_s: answered as f64 / secs,
        completed_per_s: answered as f64 / secs,
        completed_in_window_per_s: answered as f64 / secs,
        p50_ms: result.percentile_ms(50.0),
        p99_ms: result.percentile_ms(99.0),
        p999_ms: result.percentile_ms(99.9),
        max_ms: result.percentile_ms(100.0),
        cpu_ms_per_run: cpu / answered.max(1) as f64,
        peak_rss_mb: mb(status_kb(server.pid, "VmHWM")),
        rss_after_warmup_mb: mb(rss_after_warmup),
        rss_end_mb: mb(status_kb(server.pid, "VmRSS")),
        rss_load_mb: (f64::NAN, f64::NAN, f64::NAN),
        not_completed: 0,
        drain_s: 0.0,
        other_statuses: other_statuses(&result),
        load_cpu_ms_per_run: self_cpu / answered.max(1) as f64,
        load_core_share: self_cpu / 1000.0 / secs,
        failed_runs: "-".into(),
    };
    server.stop().await;
    figures
}

/// Waits until `target` runs have completed at the ServiceNow emulator, or until none has
/// completed for `stall` (then the rest count as not completed).
async fn drain(emulators: &Emulators, target: u64, stall: Duration) {
    let mut last = emulators.counters.incidents.load(Ordering::Relaxed);
    let mut last_progress = Instant::now();
    loop {
        let done = emulators.counters.incidents.load(Ordering::Relaxed);
        if done >= target {
            return;
        }
        if done != last {
            last = done;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > stall {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn split_command(text: &str, pid: u32) -> Command {
    let parts: Vec<String> = text
        .split_whitespace()
        .map(|p| p.replace("{pid}", &pid.to_string()))
        .collect();
    let mut command = Command::new(&parts[0]);
    command.args(&parts[1..]);
    command
}

async fn run_haloflow(args: &Args, emulators: &Emulators, dir: &Path, durability: &str) -> Figures {
    let (flows, config) = write_inputs(args, emulators, dir, durability);
    let database = match &args.database {
        Some(admin) => Some(create_database(admin).await),
        None => None,
    };
    let url = database.as_ref().map(|(url, _)| url.as_str());
    let servers: Vec<Server> = (0..args.nodes.max(1))
        .map(|node| start_node(args, dir, &flows, &config, url, node))
        .collect();
    let start = warm_up(args, emulators, &servers).await;
    let end = measure(args, emulators, &servers, &start).await;
    let figures = haloflow_figures(emulators, &servers, &start, end);
    for server in servers {
        server.stop().await;
    }
    if let Some((_, drop)) = database {
        drop.await;
    }
    print_notes(emulators, &dir.join("server-0.log"));
    figures
}

/// Writes the flow and the config file into `dir`; returns the flows directory and the config
/// file.
fn write_inputs(
    args: &Args,
    emulators: &Emulators,
    dir: &Path,
    durability: &str,
) -> (PathBuf, PathBuf) {
    let flows = dir.join("flows");
    std::fs::create_dir_all(&flows).expect("flows dir");
    std::fs::write(
        flows.join(format!("{FLOW_ID}.json")),
        serde_json::to_string_pretty(&flow_document()).expect("flow"),
    )
    .expect("write flow");
    let config = dir.join("haloflow.toml");
    std::fs::write(
        &config,
        config_text(
            &emulators.halo_url,
            &emulators.servicenow_url,
            durability,
            args,
        ),
    )
    .expect("write config");
    (flows, config)
}

/// Starts node `node` of `haloflow serve`, logging to `server-<node>.log` in `dir`.
fn start_node(
    args: &Args,
    dir: &Path,
    flows: &Path,
    config: &Path,
    database: Option<&str>,
    node: usize,
) -> Server {
    let bin = args
        .server_bin
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_haloflow")));
    let mut command = Command::new(&bin);
    command
        .arg("serve")
        .arg("--flows")
        .arg(flows)
        .arg("--data")
        .arg(dir.join(format!("data-{node}")))
        .arg("--config")
        .arg(config)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--node-id")
        .arg(format!("load-{node}"))
        .env("HALOFLOW_LOG", "haloflow=warn");
    if let Some(url) = database {
        command.arg("--database").arg(url);
    }
    let log = dir.join(format!("server-{node}.log"));
    Server::start(command, args.pin, args.server_wrap.as_deref(), &log)
}

/// Where the measured phase starts: what the warm-up and its drain left.
struct Start {
    sequence: Arc<AtomicU64>,
    warmup_accepted: u64,
    /// The runs by status after the warm-up.
    statuses: BTreeMap<String, u64>,
    rss_kb: u64,
    incidents: u64,
    server_cpu_ms: f64,
    self_cpu_ms: f64,
    t0_us: u64,
}

/// What the measured phase and its drain gave.
struct End {
    result: PhaseResult,
    /// The first server's RSS once a second during the measured phase.
    rss_samples: Vec<u64>,
    in_window: u64,
    /// The runs by status after the drain.
    statuses: BTreeMap<String, u64>,
    drain_s: f64,
    server_cpu_ms: f64,
    self_cpu_ms: f64,
}

fn servers_cpu_ms(servers: &[Server]) -> f64 {
    servers.iter().map(|s| cpu_ms(s.pid)).sum::<f64>()
}

/// The warm-up: load, then wait for its backlog to drain and the runs to settle.
async fn warm_up(args: &Args, emulators: &Emulators, servers: &[Server]) -> Start {
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let stall = Duration::from_secs(args.stall_secs);
    let sequence = Arc::new(AtomicU64::new(0));
    let warmup = drive(
        &addrs,
        emulators,
        args.connections,
        Duration::from_secs(args.warmup),
        sequence.clone(),
        args.rate,
    )
    .await;
    drain(emulators, warmup.count(202), stall).await;
    let statuses = settle(servers[0].addr, stall).await;
    Start {
        sequence,
        warmup_accepted: warmup.count(202),
        statuses,
        rss_kb: status_kb(servers[0].pid, "VmRSS"),
        incidents: emulators.counters.incidents.load(Ordering::Relaxed),
        server_cpu_ms: servers_cpu_ms(servers),
        self_cpu_ms: cpu_ms(std::process::id()),
        t0_us: emulators.epoch.elapsed().as_micros() as u64,
    }
}

/// The measured phase, with the `--on-measure` command running and the RSS sampled, then the
/// drain.
async fn measure(args: &Args, emulators: &Emulators, servers: &[Server], start: &Start) -> End {
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let server = &servers[0];
    let stall = Duration::from_secs(args.stall_secs);
    let profiler = args.on_measure.as_deref().map(|text| {
        split_command(text, server.pid)
            .spawn()
            .expect("the --on-measure command starts")
    });
    let (sampler, rss_samples) = sample_rss(server.pid);
    let result = drive(
        &addrs,
        emulators,
        args.connections,
        Duration::from_secs(args.duration),
        start.sequence.clone(),
        args.rate,
    )
    .await;
    sampler.abort();
    let rss_samples = rss_samples.lock().expect("samples").clone();
    let in_window = emulators.counters.incidents.load(Ordering::Relaxed) - start.incidents;
    let drain_started = Instant::now();
    drain(emulators, start.warmup_accepted + result.count(202), stall).await;
    let statuses = settle(server.addr, stall).await;
    let drain_s = drain_started.elapsed().as_secs_f64();
    let server_cpu_ms = servers_cpu_ms(servers) - start.server_cpu_ms;
    let self_cpu_ms = cpu_ms(std::process::id()) - start.self_cpu_ms;
    if let Some(mut profiler) = profiler {
        let _ = Command::new("kill")
            .args(["-INT", &profiler.id().to_string()])
            .status();
        let _ = profiler.wait();
    }
    End {
        result,
        rss_samples,
        in_window,
        statuses,
        drain_s,
        server_cpu_ms,
        self_cpu_ms,
    }
}

/// Samples a process's RSS once a second (is memory flat?) until the task is aborted.
fn sample_rss(pid: u32) -> (tokio::task::JoinHandle<()>, Arc<std::sync::Mutex<Vec<u64>>>) {
    let rss_samples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let samples = rss_samples.clone();
    let sampler = tokio::spawn(async move {
        loop {
            let kb = status_kb(pid, "VmRSS");
            samples.lock().expect("samples").push(kb);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    (sampler, rss_samples)
}

/// haloflow's figures from the measured phase.
fn haloflow_figures(emulators: &Emulators, servers: &[Server], start: &Start, end: End) -> Figures {
    let counters = &emulators.counters;
    let result = &end.result;
    let completed = counters.incidents.load(Ordering::Relaxed) - start.incidents;
    let last_us = counters.last_incident_us.load(Ordering::Relaxed);
    let span_s =
        (last_us.saturating_sub(start.t0_us) as f64 / 1e6).max(result.elapsed.as_secs_f64());
    let accepted = result.count(202);
    let secs = result.elapsed.as_secs_f64();
    let samples = &end.rss_samples;
    Figures {
        accepted,
        completed,
        accepted_per_s: accepted as f64 / secs,
        completed_per_s: completed as f64 / span_s,
        completed_in_window_per_s: end.in_window as f64 / secs,
        p50_ms: result.percentile_ms(50.0),
        p99_ms: result.percentile_ms(99.0),
        p999_ms: result.percentile_ms(99.9),
        max_ms: result.percentile_ms(100.0),
        cpu_ms_per_run: end.server_cpu_ms / completed.max(1) as f64,
        peak_rss_mb: mb(servers
            .iter()
            .map(|s| status_kb(s.pid, "VmHWM"))
            .max()
            .unwrap_or(0)),
        rss_after_warmup_mb: mb(start.rss_kb),
        rss_end_mb: mb(status_kb(servers[0].pid, "VmRSS")),
        rss_load_mb: (
            mb(samples.first().copied().unwrap_or(0)),
            mb(samples.last().copied().unwrap_or(0)),
            mb(samples.iter().copied().max().unwrap_or(0)),
        ),
        not_completed: accepted.saturating_sub(completed),
        drain_s: end.drain_s,
        other_statuses: other_statuses(result),
        load_cpu_ms_per_run: end.self_cpu_ms / completed.max(1) as f64,
        load_core_share: end.self_cpu_ms / 1000.0 / (secs + end.drain_s),
        failed_runs: failed_runs(&start.statuses, &end.statuses),
    }
}

/// The runs of each status that ended during the measured phase and its drain.
fn failed_runs(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> String {
    after
        .iter()
        .map(|(status, n)| {
            let n = n - before.get(status).copied().unwrap_or(0).min(*n);
            format!("{status}={n}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What the emulators and the first server's log say after a measurement.
fn print_notes(emulators: &Emulators, log: &Path) {
    let counters = &emulators.counters;
    let held = emulators.servicenow.records("incident").len() as u64;
    let counted = counters.incidents.load(Ordering::Relaxed);
    if held != counted {
        println!("  note: the ServiceNow emulator holds {held} incidents, {counted} were counted");
    }
    let errors = counters.errors.load(Ordering::Relaxed);
    if errors > 0 {
        println!("  note: the emulators answered {errors} request(s) with an error status");
    }
    let log_text = std::fs::read_to_string(log).unwrap_or_default();
    for line in log_summary(&log_text) {
        println!("  server log: {line}");
    }
}

/// A fresh PostgreSQL database for one measurement: its URL, and a future that drops it.
async fn create_database(
    admin: &str,
) -> (
    String,
    std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>,
) {
    use sqlx::Connection;
    let name = format!(
        "haloflow_load_{}",
        std::process::id() as u64 * 1000 + rand_suffix()
    );
    let mut connection = sqlx::PgConnection::connect(admin)
        .await
        .unwrap_or_else(|e| panic!("--database {admin}: {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut connection)
        .await
        .expect("create the benchmark database");
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(admin);
    let url = format!("{base}/{name}");
    let admin = admin.to_owned();
    let drop = Box::pin(async move {
        if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut c)
            .await;
        }
    });
    (url, drop)
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64 % 1000)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Reporting.

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let online = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_owned()))
        .unwrap_or_default();
    format!(
        "{online} CPU(s), {cpu}, {memory} RAM, Linux {}",
        kernel.trim()
    )
}

fn print_figures(name: &str, f: &Figures) {
    println!("  {name}:");
    println!(
        "    completed runs/s {:>8.1}   (accepted/s {:.1}, completed within the window/s {:.1}, drain {:.1} s; {} accepted, {} completed)",
        f.completed_per_s,
        f.accepted_per_s,
        f.completed_in_window_per_s,
        f.drain_s,
        f.accepted,
        f.completed
    );
    println!(
        "    answer latency   p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
        f.p50_ms, f.p99_ms, f.p999_ms, f.max_ms
    );
    println!(
        "    server CPU       {:.3} ms/run   peak RSS {:.1} MB (RSS after warm-up {:.1} MB, at the end {:.1} MB)",
        f.cpu_ms_per_run, f.peak_rss_mb, f.rss_after_warmup_mb, f.rss_end_mb
    );
    if f.rss_load_mb.0.is_finite() {
        println!(
            "    RSS under load   {:.1} MB at the start, {:.1} MB at the end, {:.1} MB at most (sampled each second)",
            f.rss_load_mb.0, f.rss_load_mb.1, f.rss_load_mb.2
        );
    }
    println!(
        "    not completed    {}   other answers: {}   measured runs by status: {}",
        f.not_completed, f.other_statuses, f.failed_runs
    );
    println!(
        "    load side        {:.3} ms CPU/run, {:.0}% of one core",
        f.load_cpu_ms_per_run,
        f.load_core_share * 100.0
    );
}

fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

impl Args {
    fn api_latency(&self) -> Duration {
        Duration::from_millis(self.api_latency_ms)
    }

    /// The `[server]` lines of the slot options given.
    fn slot_settings(&self) -> String {
        let mut lines = String::new();
        if let Some(n) = self.max_active_runs {
            lines.push_str(&format!("max_active_runs = {n}\n"));
        }
        if let Some(n) = self.max_paced_runs {
            lines.push_str(&format!("max_paced_runs = {n}\n"));
        }
        lines
    }

    /// Where the temporary directories go.
    fn work_dir(&self) -> PathBuf {
        let work =
            (self.work_dir.clone()).unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
        std::fs::create_dir_all(&work).expect("work dir");
        work
    }
}

async fn run(args: Args) {
    if args.tenants > 0 {
        return tenants::run(&args).await;
    }
    let work = args.work_dir();
    print_setup(&args);
    let mut ours: BTreeMap<String, Vec<Figures>> = BTreeMap::new();
    let mut bases = Vec::new();
    for repetition in 1..=args.repeat {
        println!("repetition {repetition}/{}", args.repeat);
        if !args.no_baseline {
            let emulators = start_emulators(args.api_latency()).await;
            let dir = tempfile::Builder::new()
                .prefix("load-baseline-")
                .tempdir_in(&work)
                .expect("temp dir");
            let base = run_baseline(&args, &emulators, dir.path()).await;
            print_figures("baseline (plain axum, 202, no work)", &base);
            bases.push(base);
        }
        for level in &args.durability {
            let emulators = start_emulators(args.api_latency()).await;
            let dir = tempfile::Builder::new()
                .prefix("load-haloflow-")
                .tempdir_in(&work)
                .expect("temp dir");
            let figures = run_haloflow(&args, &emulators, dir.path(), level).await;
            print_figures(&format!("haloflow serve, durability {level}"), &figures);
            if let Some(base) = bases.last() {
                print_ratios(&figures, base);
            }
            if args.keep {
                println!("  kept {}", dir.keep().display());
            }
            ours.entry(level.clone()).or_default().push(figures);
        }
    }
    if args.repeat > 1 {
        print_medians(args.repeat, &bases, &ours);
    }
}

/// The workload, the machine and the durability levels; exits on an unknown level.
fn print_setup(args: &Args) {
    let body_bytes = webhook(&ticket_template(), 1_000_123, 1).len();
    println!("haloflow load benchmark (issue 7 reference workload)");
    println!("  machine: {}", machine());
    println!(
        "  {} connections ({}), {} s warm-up, {} s measured, {} repetition(s), {}; webhook body {} bytes",
        args.connections,
        match args.rate {
            Some(rate) => format!("open loop at {rate} webhooks/s"),
            None => "closed loop".to_owned(),
        },
        args.warmup,
        args.duration,
        args.repeat,
        if args.pin {
            "pinned: server on CPU 0, load generator and emulators on CPU 1"
        } else {
            "unpinned"
        },
        body_bytes
    );
    println!(
        "  emulator latency {} ms per answer; [server] settings: {}",
        args.api_latency_ms,
        match args.slot_settings() {
            lines if lines.is_empty() => "defaults".to_owned(),
            lines => lines.trim().replace('\n', ", "),
        }
    );
    for level in &args.durability {
        if !["default", "process_crash", "power_loss"].contains(&level.as_str()) {
            eprintln!("--durability: `{level}` is not default, process_crash or power_loss");
            std::process::exit(2);
        }
    }
    println!(
        "  durability (server.durability): {}",
        args.durability.join(", ")
    );
}

/// The medians over the repetitions, of the baseline and of each durability level.
fn print_medians(repeat: usize, bases: &[Figures], ours: &BTreeMap<String, Vec<Figures>>) {
    println!("medians over {repeat} repetitions:");
    let base = (!bases.is_empty()).then(|| median_figures(bases));
    if let Some(base) = &base {
        print_figures("baseline (medians)", base);
    }
    for (level, list) in ours {
        let mine = median_figures(list);
        print_figures(
            &format!("haloflow serve, durability {level} (medians; not completed: the sum)"),
            &mine,
        );
        if let Some(base) = &base {
            print_ratios(&mine, base);
        }
    }
}

/// Each figure's median over `list` (counts summed).
fn median_figures(list: &[Figures]) -> Figures {
    let pick = |f: fn(&Figures) -> f64| median(list.iter().map(f).collect());
    Figures {
        accepted: list.iter().map(|f| f.accepted).sum(),
        completed: list.iter().map(|f| f.completed).sum(),
        accepted_per_s: pick(|f| f.accepted_per_s),
        completed_per_s: pick(|f| f.completed_per_s),
        completed_in_window_per_s: pick(|f| f.completed_in_window_per_s),
        p50_ms: pick(|f| f.p50_ms),
        p99_ms: pick(|f| f.p99_ms),
        p999_ms: pick(|f| f.p999_ms),
        max_ms: pick(|f| f.max_ms),
        cpu_ms_per_run: pick(|f| f.cpu_ms_per_run),
        peak_rss_mb: pick(|f| f.peak_rss_mb),
        rss_after_warmup_mb: pick(|f| f.rss_after_warmup_mb),
        rss_end_mb: pick(|f| f.rss_end_mb),
        rss_load_mb: (
            pick(|f| f.rss_load_mb.0),
            pick(|f| f.rss_load_mb.1),
            pick(|f| f.rss_load_mb.2),
        ),
        not_completed: list.iter().map(|f| f.not_completed).sum(),
        drain_s: pick(|f| f.drain_s),
        other_statuses: "-".into(),
        load_cpu_ms_per_run: pick(|f| f.load_cpu_ms_per_run),
        load_core_share: pick(|f| f.load_core_share),
        failed_runs: "-".into(),
    }
}

fn print_ratios(ours: &Figures, base: &Figures) {
    println!(
        "  ratios to the baseline: completed runs/s {:.4} ({:.1}x fewer), p50 {:.1}x, p99 {:.1}x, p99.9 {:.1}x, CPU ms per run {:.1}x, peak RSS {:.1}x",
        ours.completed_per_s / base.completed_per_s,
        base.completed_per_s / ours.completed_per_s,
        ours.p50_ms / base.p50_ms,
        ours.p99_ms / base.p99_ms,
        ours.p999_ms / base.p999_ms,
        ours.cpu_ms_per_run / base.cpu_ms_per_run,
        ours.peak_rss_mb / base.peak_rss_mb,
    );
}
