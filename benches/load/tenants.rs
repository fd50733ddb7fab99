//! `--tenants N`: fairness between Halo tenants. N Halo connections `t0`..`t{N-1}`, each with
//! its own emulator and its own pacing (`--tenant-pacing`, Halo's 280 per 300 s by default),
//! and one flow each (create a ticket, add an action on it). Tenant 0 is busy: at the start it
//! sends `--tenant-backlog` webhooks at once, far beyond what its pacing lets through; every
//! other tenant sends `--tenant-rate` webhooks per second for `--duration` seconds. After a
//! grace period the runs are read back through the API: per tenant, the runs completed and the
//! time from acceptance to completion (a run's `created_at_ms` to its `finished_at_ms`), the
//! idle tenants against the busy one. Alternate `--max-paced-runs 0` (slot lending off) to see
//! the backlog hold every slot.

use super::*;

/// How long runs may finish after the last webhook before they are read back.
const GRACE: Duration = Duration::from_secs(5);
/// Connections the busy tenant sends its backlog on.
const BACKLOG_CONNECTIONS: usize = 8;

/// One tenant's emulator.
struct Tenant {
    halo: HaloEmulator,
    url: String,
}

pub(super) async fn run(args: &Args) {
    let dir = tempfile::Builder::new()
        .prefix("load-tenants-")
        .tempdir_in(args.work_dir())
        .expect("temp dir");
    let counters = Arc::new(Counters::default());
    let mut tenants = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..args.tenants {
        let (tenant, task) = start_tenant(args, counters.clone()).await;
        tenants.push(tenant);
        tasks.push(task);
    }
    let admin = free_port();
    let (flows, config) = write_inputs(args, &tenants, dir.path(), admin);
    let server = start_node(args, dir.path(), &flows, &config, None, 0);
    print_setup(args);
    let rss_before = status_kb(server.pid, "VmRSS");
    let answers = send_load(args, &tenants, server.addr).await;
    tokio::time::sleep(GRACE).await;
    let paced = metric(server.addr, "haloflow_paced_runs").await;
    let active = metric(server.addr, "haloflow_active_runs").await;
    let rss_after = status_kb(server.pid, "VmRSS");
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().expect("address");
    report(args, admin, server.addr, &answers).await;
    println!(
        "  server: {active} runs in slots, {paced} waiting without one; RSS {:.1} MB before the load, {:.1} MB after ({:.1} KB more per run not finished)",
        mb(rss_before),
        mb(rss_after),
        (rss_after.saturating_sub(rss_before)) as f64 / unfinished(server.addr).await.max(1) as f64,
    );
    println!(
        "  emulators answered {} request(s) with an error status",
        counters.errors.load(Ordering::Relaxed)
    );
    server.stop().await;
    for task in tasks {
        task.abort();
    }
    if args.keep {
        println!("  kept {}", dir.keep().display());
    }
}

async fn start_tenant(
    args: &Args,
    counters: Arc<Counters>,
) -> (Tenant, tokio::task::JoinHandle<()>) {
    let halo = HaloEmulator::new(HaloEmulatorConfig {
        client_id: HALO_CLIENT.into(),
        client_secret: HALO_SECRET.into(),
        tenant: None,
        token_lifetime_secs: 86_400,
    });
    let router = halo.router();
    let (url, task) = serve_counted(router, counters, Instant::now(), args.api_latency()).await;
    (Tenant { halo, url }, task)
}

/// A port free now, for the admin listener (the server prints only the public one).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

fn print_setup(args: &Args) {
    println!("haloflow tenant fairness benchmark");
    println!("  machine: {}", machine());
    println!(
        "  {} tenants paced at {} (requests/seconds) each; tenant 0 sends {} webhooks at once, the others {} per second each for {} s; emulator latency {} ms; [server] {}",
        args.tenants,
        args.tenant_pacing,
        args.tenant_backlog,
        args.tenant_rate,
        args.duration,
        args.api_latency_ms,
        args.slot_settings().trim().replace('\n', ", "),
    );
}

fn flow_id(tenant: usize) -> String {
    format!("tenant-{tenant}")
}

/// The reference flow's Halo steps (create, note), on the tenant's own connection.
fn tenant_flow(tenant: usize) -> Value {
    let mut flow = flow_document();
    flow["id"] = json!(flow_id(tenant));
    flow["name"] = json!(format!("Tenant {tenant}"));
    let steps = flow["steps"].as_array_mut().expect("steps");
    steps.truncate(2);
    for step in steps {
        step["connection"] = json!(format!("t{tenant}"));
    }
    flow
}

fn write_inputs(args: &Args, tenants: &[Tenant], dir: &Path, admin: u16) -> (PathBuf, PathBuf) {
    let flows = dir.join("flows");
    std::fs::create_dir_all(&flows).expect("flows dir");
    for tenant in 0..tenants.len() {
        let text = serde_json::to_string_pretty(&tenant_flow(tenant)).expect("flow");
        std::fs::write(flows.join(format!("{}.json", flow_id(tenant))), text).expect("flow");
    }
    let (requests, window) = (args.tenant_pacing.split_once('/'))
        .expect("--tenant-pacing is requests/seconds, e.g. 280/300");
    let mut config = format!(
        "# Written by benches/load/tenants.rs.\n[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:{admin}\"\nmetrics_public = true\n{}\n[secrets]\nLOAD_TRIGGER_KEY = \"{TRIGGER_KEY}\"\nHALO_CLIENT_SECRET = \"{HALO_SECRET}\"\n",
        args.slot_settings()
    );
    for (i, tenant) in tenants.iter().enumerate() {
        config.push_str(&format!(
            "\n[halo.t{i}]\nbase_url = \"{}\"\nclient_id = \"{HALO_CLIENT}\"\nclient_secret_name = \"HALO_CLIENT_SECRET\"\ntimeout_secs = 10\nrate_limit_requests = {requests}\nrate_limit_window_secs = {window}\n",
            tenant.url
        ));
    }
    let path = dir.join("haloflow.toml");
    std::fs::write(&path, config).expect("config");
    (flows, path)
}

/// The answers to one tenant's webhooks.
#[derive(Default)]
struct Answers {
    statuses: BTreeMap<u16, u64>,
    io_errors: u64,
}

/// The busy tenant's backlog and the others' steady webhooks, all at once.
async fn send_load(args: &Args, tenants: &[Tenant], addr: SocketAddr) -> Vec<Answers> {
    let mut tasks = Vec::new();
    let per_connection = args.tenant_backlog.div_ceil(BACKLOG_CONNECTIONS);
    for _ in 0..BACKLOG_CONNECTIONS {
        let sends = vec![Duration::ZERO; per_connection];
        tasks.push((
            0,
            tokio::spawn(send(addr, tenants[0].halo.clone(), 0, sends)),
        ));
    }
    let every = Duration::from_secs_f64(1.0 / args.tenant_rate);
    let count = (args.duration as f64 * args.tenant_rate) as usize;
    for (i, tenant) in tenants.iter().enumerate().skip(1) {
        // Spread the tenants' first webhooks over one interval.
        let first = every.mul_f64(i as f64 / tenants.len() as f64);
        let sends = (0..count).map(|k| first + every * k as u32).collect();
        tasks.push((i, tokio::spawn(send(addr, tenant.halo.clone(), i, sends))));
    }
    let mut answers: Vec<Answers> = (0..tenants.len()).map(|_| Answers::default()).collect();
    for (tenant, task) in tasks {
        let got = task.await.expect("load task");
        for (status, n) in got.statuses {
            *answers[tenant].statuses.entry(status).or_default() += n;
        }
        answers[tenant].io_errors += got.io_errors;
    }
    answers
}

/// Sends one webhook of `tenant` at each offset from now (zero offsets: one after another).
async fn send(addr: SocketAddr, halo: HaloEmulator, tenant: usize, at: Vec<Duration>) -> Answers {
    let started = Instant::now();
    let template = ticket_template();
    let mut connection = Connection::new(addr);
    let mut answers = Answers::default();
    for due in at {
        tokio::time::sleep_until((started + due).into()).await;
        let mut ticket = template.clone();
        let ticket_id = halo.insert_ticket(ticket.clone());
        ticket["id"] = json!(ticket_id);
        let body = webhook(&ticket, ticket_id, ticket_id as u64);
        match connection.send(&request(addr, tenant, &body)).await {
            Ok(status) => *answers.statuses.entry(status).or_default() += 1,
            Err(_) => answers.io_errors += 1,
        }
    }
    answers
}

fn request(addr: SocketAddr, tenant: usize, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST /triggers/{}?apiKey={TRIGGER_KEY}&recipients=ops HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: Halo-Webhook\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
        flow_id(tenant),
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// A gauge without labels from `/metrics`.
async fn metric(addr: SocketAddr, name: &str) -> u64 {
    let text = http_get(addr, "/metrics").await.unwrap_or_default();
    let prefix = format!("{name} ");
    (text.lines())
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Runs not finished yet, from `/metrics`.
async fn unfinished(addr: SocketAddr) -> u64 {
    let statuses = run_statuses(addr).await.unwrap_or_default();
    ["queued", "running"]
        .iter()
        .filter_map(|s| statuses.get(*s))
        .sum()
}

/// Up to 1 000 runs of a listing (newest first).
async fn runs(admin: SocketAddr, query: &str) -> Vec<Value> {
    let text = http_get(admin, &format!("/api/runs?limit=1000&{query}")).await;
    let page: Value = serde_json::from_str(&text.unwrap_or_default()).unwrap_or(Value::Null);
    page["runs"].as_array().cloned().unwrap_or_default()
}

/// One tenant's runs as read back: completed, and their acceptance-to-completion times (ms).
struct Outcome {
    accepted: u64,
    completed: usize,
    latencies_ms: Vec<i64>,
}

async fn outcome(admin: SocketAddr, tenant: usize, answers: &Answers) -> Outcome {
    let query = format!("flow={}&status=succeeded", flow_id(tenant));
    let done = runs(admin, &query).await;
    let mut latencies_ms: Vec<i64> = (done.iter())
        .filter_map(|r| Some(r["finished_at_ms"].as_i64()? - r["created_at_ms"].as_i64()?))
        .collect();
    latencies_ms.sort_unstable();
    Outcome {
        accepted: answers.statuses.get(&202).copied().unwrap_or(0),
        completed: done.len(),
        latencies_ms,
    }
}

fn percentile(sorted: &[i64], p: f64) -> String {
    if sorted.is_empty() {
        return "-".to_owned();
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    format!("{}", sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Per tenant: accepted, completed, latency; the idle tenants pooled against the busy one.
async fn report(args: &Args, admin: SocketAddr, public: SocketAddr, answers: &[Answers]) {
    let busy_done = metric_runs(public, &flow_id(0), "succeeded").await;
    let busy = outcome(admin, 0, &answers[0]).await;
    let mut idle = Vec::new();
    for (tenant, got) in answers.iter().enumerate().skip(1) {
        idle.push(outcome(admin, tenant, got).await);
    }
    let accepted: u64 = idle.iter().map(|o| o.accepted).sum();
    let completed: usize = idle.iter().map(|o| o.completed).sum();
    let least = idle.iter().map(|o| o.completed).min().unwrap_or(0);
    let mut pooled: Vec<i64> = idle.iter().flat_map(|o| o.latencies_ms.clone()).collect();
    pooled.sort_unstable();
    let other: u64 = (answers.iter())
        .map(|a| {
            a.io_errors
                + a.statuses
                    .iter()
                    .filter(|(s, _)| **s != 202)
                    .map(|(_, n)| n)
                    .sum::<u64>()
        })
        .sum();
    println!(
        "  busy tenant 0: {} accepted, {busy_done} completed; completion ms p50 {} p99 {} max {}",
        busy.accepted,
        percentile(&busy.latencies_ms, 50.0),
        percentile(&busy.latencies_ms, 99.0),
        percentile(&busy.latencies_ms, 100.0),
    );
    println!(
        "  {} idle tenants: {accepted} accepted, {completed} completed (the least served tenant: {least} of {}); completion ms p50 {} p99 {} max {}",
        args.tenants - 1,
        (args.duration as f64 * args.tenant_rate) as u64,
        percentile(&pooled, 50.0),
        percentile(&pooled, 99.0),
        percentile(&pooled, 100.0),
    );
    println!("  webhooks not answered 202: {other}");
}

/// `haloflow_runs{flow,status}` of one flow and status, from `/metrics`.
async fn metric_runs(addr: SocketAddr, flow: &str, status: &str) -> u64 {
    let text = http_get(addr, "/metrics").await.unwrap_or_default();
    let labels = format!("flow=\"{flow}\",status=\"{status}\"");
    (text.lines())
        .filter(|l| l.starts_with("haloflow_runs{") && l.contains(&labels))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}
