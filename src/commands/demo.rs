//! `haloflow demo`: the whole product on one machine. Starts two Halo emulators (the Halo that
//! sends webhooks and a partner Halo) and the server on SQLite with the example flows, sends the
//! sample webhooks, and shows the finished runs.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use tokio::task::JoinHandle;

use super::{CommandError, render};
use crate::halo::{HaloConfig, HaloConnectionConfig};
use crate::internals::config::Config;
use crate::internals::engine::Engine;
use crate::internals::flow::{TriggerAuth, ValidatedFlow};
use crate::internals::secrets::SecretStore;
use crate::internals::storage::StorageSettings;
use haloflow_emulators::RunningEmulator;
use haloflow_emulators::halo::{HaloEmulator, HaloEmulatorConfig};
use haloflow_emulators::servicenow::{ServiceNowEmulator, ServiceNowEmulatorConfig};

/// Options of `haloflow demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoOptions {
    #[arg(long, default_value = "flows")]
    pub flows: PathBuf,
    #[arg(long, default_value = "examples")]
    pub examples: PathBuf,
    #[arg(long = "data", value_name = "DATA", default_value = "data")]
    pub data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Exit after showing the runs.
    #[arg(long)]
    pub once: bool,
}

/// Connections the example flows use, each backed by its own emulator.
const DEMO_CONNECTIONS: &[&str] = &["halo", "partner_halo"];

/// The sample each example flow gets (with the recipients its URL names); any other flow
/// gets the first one.
const SAMPLES: &[(&str, &str, &[&str])] = &[
    (
        "escalate-to-partner",
        "halo-new-ticket.json",
        &["epearson", "Antares Team"],
    ),
    (
        "new-ticket-routing",
        "halo-new-ticket-unassigned.json",
        &["triage on-call"],
    ),
    ("log-to-supplier", "halo-supplier-ticket.json", &["ops"]),
    ("sync-note-to-servicenow", "halo-new-action.json", &["ops"]),
];

/// The ServiceNow side: the instance of customer 12 (the sample tickets' client, Basic auth)
/// and of supplier 7 (OAuth), both served by one emulator for the demo.
const DEMO_SERVICENOW: &str = r#"
    [customers.12]
    name = "Acme Ltd (demo)"
    instance_url = "{url}"
    auth = "basic"
    username = "haloflow.demo"
    password_secret_name = "DEMO_SERVICENOW_PASSWORD"
    category = [{ halo = "Hardware", category = "hardware" }]
    impact = [{ halo = 2, servicenow = "2" }]
    urgency = [{ halo = 2, servicenow = "2" }]
    [suppliers.7]
    name = "Firewall Vendor Ltd (demo)"
    instance_url = "{url}"
    auth = "oauth"
    client_id = "haloflow-demo"
    client_secret_name = "DEMO_SERVICENOW_CLIENT_SECRET"
"#;

fn random_secret() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The emulators behind the demo's connections; each serves while it is held.
struct Emulators {
    halos: Vec<(&'static str, HaloEmulator, RunningEmulator)>,
    servicenow: ServiceNowEmulator,
    _servicenow_running: RunningEmulator,
}

pub async fn demo(options: &DemoOptions, out: &mut dyn Write) -> Result<(), CommandError> {
    let mut config = Config::default();
    config.server.listen = options.listen;
    let mut secrets = SecretStore::from_values(Vec::<(String, String)>::new());
    let halos = start_halos(&mut config, &mut secrets, out).await?;
    let (servicenow, servicenow_running) = start_servicenow(&mut config, &mut secrets, out).await?;
    let emulators = Emulators {
        halos,
        servicenow,
        _servicenow_running: servicenow_running,
    };
    // The webhooks talk about tickets that exist in the sending Halo.
    seed_source_halo(&emulators.halos[0].1, &options.examples)?;
    let engine = build_engine(options, &config, &mut secrets).await?;
    let Served {
        base,
        console,
        server,
    } = start_server(options, &engine).await?;
    writeln!(
        out,
        "haloflow serving on {base}, run history in {}\n",
        (options
            .data_dir
            .join(crate::internals::storage::DATABASE_FILE))
        .display()
    )?;
    let client = reqwest::Client::new();
    let mut curl_lines = Vec::new();
    for loaded in engine.flows() {
        let sample = Sample::of(&loaded.flow, &base, &secrets, &options.examples);
        sample.send(&client, &engine, out).await?;
        curl_lines.push(sample.curl);
    }
    report_emulators(&emulators, out)?;
    // With --once the server stops now: lines to send it would only fail.
    if options.once {
        writeln!(
            out,
            "\nThe server stopped (--once). See the runs with: haloflow runs list --data {}\nRun `haloflow demo` without --once to keep it up and send webhooks yourself.",
            options.data_dir.display()
        )?;
        server.abort();
        return Ok(());
    }
    serve_until_stopped(options, server, &curl_lines, &console, out).await
}

/// One Halo emulator per demo connection, each with the connection's config and secret.
async fn start_halos(
    config: &mut Config,
    secrets: &mut SecretStore,
    out: &mut dyn Write,
) -> Result<Vec<(&'static str, HaloEmulator, RunningEmulator)>, CommandError> {
    let mut halos = Vec::new();
    for name in DEMO_CONNECTIONS {
        let client_id = format!("haloflow-demo-{name}");
        let client_secret = random_secret();
        let emulator = HaloEmulator::new(HaloEmulatorConfig {
            client_id: client_id.clone(),
            client_secret: client_secret.clone(),
            tenant: None,
            token_lifetime_secs: 3600,
        });
        let running = emulator.start().await?;
        let secret_name = format!("DEMO_{}_CLIENT_SECRET", name.to_uppercase());
        secrets.insert(&secret_name, client_secret);
        let connection = HaloConnectionConfig {
            timeout_secs: 10,
            // The emulators have no rate limit to stay under.
            rate_limit_requests: 0,
            ..HaloConnectionConfig::new(running.base_url(), client_id, secret_name)
        };
        config
            .edit_section(|halo: &mut HaloConfig| {
                halo.insert((*name).to_owned(), connection);
            })
            .map_err(|e| CommandError::Failed(format!("the demo's Halo settings: {e}")))?;
        writeln!(out, "Halo emulator `{name}` on {}", running.base_url())?;
        halos.push((*name, emulator, running));
    }
    Ok(halos)
}

/// The ServiceNow emulator behind customer 12 and supplier 7, with a user to find.
async fn start_servicenow(
    config: &mut Config,
    secrets: &mut SecretStore,
    out: &mut dyn Write,
) -> Result<(ServiceNowEmulator, RunningEmulator), CommandError> {
    let password = random_secret();
    let client_secret = random_secret();
    let servicenow = ServiceNowEmulator::new(ServiceNowEmulatorConfig {
        username: "haloflow.demo".into(),
        password: password.clone(),
        oauth_client_id: Some("haloflow-demo".into()),
        oauth_client_secret: Some(client_secret.clone()),
        token_lifetime_secs: 1800,
        oauth_user: "haloflow.oauth".into(),
    });
    let running = servicenow.start().await?;
    servicenow.insert_record(
        "sys_user",
        serde_json::json!({"user_name": "jo.bloggs", "email": "jo.bloggs@acme.example", "active": "true"}),
    );
    secrets.insert("DEMO_SERVICENOW_PASSWORD", password);
    secrets.insert("DEMO_SERVICENOW_CLIENT_SECRET", client_secret);
    let settings = DEMO_SERVICENOW.replace("{url}", &running.base_url());
    let demo_servicenow = toml::from_str(&settings)
        .map_err(|e| CommandError::Failed(format!("the demo's ServiceNow settings: {e}")))?;
    config.set_raw_section("servicenow", demo_servicenow);
    writeln!(
        out,
        "ServiceNow emulator on {} (customer 12 and supplier 7)",
        running.base_url()
    )?;
    Ok((servicenow, running))
}

/// The tickets (and the supplier) the sample webhooks name, in the Halo that sends them.
fn seed_source_halo(source: &HaloEmulator, examples: &Path) -> Result<(), CommandError> {
    source.insert_supplier(serde_json::json!({"id": 7, "name": "Firewall Vendor Ltd", "email_address": "support@vendor.example"}));
    for (_, file, _) in SAMPLES {
        let payload = read_json(&examples.join(file))?;
        if let Some(ticket) = payload.get("ticket") {
            source.insert_ticket(ticket.clone());
        }
    }
    Ok(())
}

/// The engine over the example flows; every trigger secret they name gets a fresh value.
async fn build_engine(
    options: &DemoOptions,
    config: &Config,
    secrets: &mut SecretStore,
) -> Result<Engine, CommandError> {
    let registry = super::integrations().registry();
    let (flows, problems) = crate::internals::flow::FlowValidator::new(&registry)
        .with_config(config)
        .validate_files(&crate::internals::flow::flow_files(&options.flows)?);
    if !problems.is_empty() {
        return Err(crate::internals::engine::EngineError::Flows(problems).into());
    }
    for flow in &flows {
        if let Some(name) = flow.document.trigger.auth.secret_name() {
            secrets.insert(name, random_secret());
        }
    }
    let storage =
        crate::internals::storage::open(&StorageSettings::new(&options.data_dir, None)).await?;
    let mut builder = Engine::builder()
        .config(config.clone())
        .integrations(super::integrations())
        .secrets(secrets.clone())
        .registry(registry)
        .storage(storage);
    for flow in flows {
        builder = builder.flow(flow);
    }
    Ok(builder.build()?)
}

/// Serves the engine on `--listen`: its base URL and the server's task.
/// Where the demo serves: trigger URLs at `base`, and the console (with the API) on the
/// loopback admin listener, open there as `serve` has it without `[server.api]` credentials.
struct Served {
    base: String,
    console: String,
    server: JoinHandle<std::io::Result<()>>,
}

async fn start_server(options: &DemoOptions, engine: &Engine) -> Result<Served, CommandError> {
    let bind = |address: SocketAddr| async move {
        tokio::net::TcpListener::bind(address).await.map_err(|e| {
            CommandError::Failed(format!(
                "cannot listen on {address}: {e}; pick a free address with --listen 127.0.0.1:0"
            ))
        })
    };
    let public = bind(options.listen).await?;
    let admin = bind(admin_address(options.listen)).await?;
    let base = format!("http://{}", public.local_addr()?);
    let console = format!("http://{}/console/", admin.local_addr()?);
    let listeners = crate::server::Listeners {
        public,
        admin: Some(admin),
    };
    let server =
        crate::server::serve_listeners(engine.clone(), listeners, super::shutdown_signal());
    Ok(Served {
        base,
        console,
        server: tokio::spawn(server),
    })
}

/// The admin listener next to `--listen`: loopback, the port after it (8081 for the default
/// 8080), or any free port when `--listen` asks for one.
fn admin_address(listen: SocketAddr) -> SocketAddr {
    let port = match listen.port() {
        0 => 0,
        port => port.checked_add(1).unwrap_or(0),
    };
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A flow's sample webhook: its trigger URL (with recipients and, for a URL key, the key),
/// its credentials, and the shell line that sends it again.
struct Sample {
    flow_id: String,
    url: String,
    path: PathBuf,
    /// The `Authorization` or named header the trigger wants.
    header: Option<(String, String)>,
    curl: String,
}

impl Sample {
    fn of(flow: &ValidatedFlow, base: &str, secrets: &SecretStore, examples: &Path) -> Sample {
        let (file, recipients) = SAMPLES
            .iter()
            .find(|(id, _, _)| *id == flow.id())
            .map(|(_, file, recipients)| (*file, *recipients))
            .unwrap_or(("halo-new-ticket.json", &["ops"]));
        let auth = &flow.document.trigger.auth;
        let key = auth.secret_name().and_then(|n| secrets.get(n));
        let shown_key = match auth {
            TriggerAuth::UrlKey { .. } => key.as_ref().map(|k| k.expose().to_owned()),
            _ => None,
        };
        let url = render::trigger_url(base, flow, shown_key.as_deref());
        let url = render::with_recipients(&url, recipients);
        let path = examples.join(file);
        let mut curl = try_it_line(&url, &path);
        let header = match (auth, &key) {
            (TriggerAuth::Basic { username, .. }, Some(password)) => {
                let pair = format!("{username}:{}", password.expose());
                curl.push_str(&format!(" -u '{pair}'"));
                let token = base64::engine::general_purpose::STANDARD.encode(pair);
                Some(("Authorization".to_owned(), format!("Basic {token}")))
            }
            (TriggerAuth::Header { header, .. }, Some(value)) => {
                curl.push_str(&format!(" -H '{header}: {}'", value.expose()));
                Some((header.clone(), value.expose().to_owned()))
            }
            _ => None,
        };
        Sample {
            flow_id: flow.id().to_owned(),
            url,
            path,
            header,
            curl,
        }
    }

    /// Sends the sample, shows the answer, and waits for and shows the runs it started.
    async fn send(
        &self,
        client: &reqwest::Client,
        engine: &Engine,
        out: &mut dyn Write,
    ) -> Result<(), CommandError> {
        let body = std::fs::read_to_string(&self.path)?;
        let mut request = (client.post(&self.url))
            .header("Content-Type", "application/json")
            .body(body);
        if let Some((name, value)) = &self.header {
            request = request.header(name.as_str(), value.as_str());
        }
        writeln!(out, "Trigger URL of `{}`: {}", self.flow_id, self.url)?;
        writeln!(out, "Sending {} ...", self.path.display())?;
        let response = request
            .send()
            .await
            .map_err(|e| CommandError::Failed(format!("sending the sample webhook failed: {e}")))?;
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        writeln!(out, "Answer: {status} {answer}")?;
        let run_ids = answer["run_ids"].as_array().into_iter().flatten();
        for run_id in run_ids.filter_map(Value::as_str) {
            let detail = tokio::time::timeout(Duration::from_secs(30), engine.wait_for_run(run_id))
                .await
                .map_err(|_| {
                    CommandError::Failed(format!("run {run_id} did not finish within 30 s"))
                })??;
            render::run(&detail, out)?;
        }
        writeln!(out)?;
        Ok(())
    }
}

/// What the emulators hold now, and anything held outside the vendors' published APIs.
fn report_emulators(emulators: &Emulators, out: &mut dyn Write) -> Result<(), CommandError> {
    for (name, emulator, _) in &emulators.halos {
        writeln!(
            out,
            "Halo `{name}` now holds {} ticket(s) and {} action(s).",
            emulator.tickets().len(),
            emulator.actions().len()
        )?;
        // What the emulator holds against Halo's published API: a real Halo would refuse or
        // silently ignore it.
        for warning in emulator.warnings() {
            writeln!(out, "  outside Halo's published API: {warning}")?;
        }
    }
    let servicenow = &emulators.servicenow;
    let records: usize = ["incident", "sc_task", "problem"]
        .iter()
        .map(|t| servicenow.records(t).len())
        .sum();
    writeln!(
        out,
        "ServiceNow now holds {records} record(s) and {} journal entries.",
        servicenow.records("sys_journal_field").len()
    )?;
    Ok(())
}

/// Prints the lines to send the samples again, then serves until Ctrl-C.
async fn serve_until_stopped(
    options: &DemoOptions,
    server: JoinHandle<std::io::Result<()>>,
    curl_lines: &[String],
    console: &str,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    writeln!(
        out,
        "\nTry it yourself (these keys exist only for this demo; each line sends its sample with a\nnew delivery id, so it starts a run; the same line sent twice is answered 200 duplicate):"
    )?;
    for line in curl_lines {
        writeln!(out, "  {line}")?;
    }
    writeln!(
        out,
        "Then: haloflow runs list --data {}",
        options.data_dir.display()
    )?;
    writeln!(
        out,
        "\nConsole: {console}\n  Open it in a browser on this machine: no sign-in here (the admin listener is\n  loopback only). Find a run, see why a step failed, replay it, copy a trigger URL."
    )?;
    writeln!(out, "Serving until Ctrl-C.")?;
    out.flush()?;
    server
        .await
        .map_err(|e| CommandError::Failed(e.to_string()))??;
    Ok(())
}

/// A shell line that sends a sample with a delivery id of its own: the demo already sent the
/// sample's, so re-sending it would only be answered `200 duplicate`. Plain `sed` and `curl`,
/// no `uuidgen`: the fresh id is written into the line.
fn try_it_line(url: &str, sample: &Path) -> String {
    let id = uuid::Uuid::new_v4();
    format!(
        "sed 's/\"id\": *\"[^\"]*\"/\"id\": \"{id}\"/' {} | curl -sS -X POST '{url}' -H 'Content-Type: application/json' --data-binary @-",
        sample.display()
    )
}

fn read_json(path: &Path) -> Result<Value, CommandError> {
    let text = std::fs::read_to_string(path).map_err(|e| CommandError::Input {
        path: path.to_owned(),
        message: format!("cannot read: {e}"),
    })?;
    serde_json::from_str(&text).map_err(|e| CommandError::Input {
        path: path.to_owned(),
        message: format!("not valid JSON: {e}"),
    })
}
