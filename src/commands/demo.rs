//! `haloflow demo`: the whole product on one machine. Starts two Halo emulators (the Halo that
//! sends webhooks and a partner Halo) and the server on SQLite with the example flows, sends the
//! sample webhooks, and shows the finished runs.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;

use super::{CommandError, render};
use crate::config::{Config, HaloConnectionConfig};
use crate::emulator::halo::{HaloEmulator, HaloEmulatorConfig};
use crate::emulator::servicenow::{ServiceNowEmulator, ServiceNowEmulatorConfig};
use crate::engine::Engine;
use crate::flow::TriggerAuth;
use crate::secrets::SecretStore;
use crate::storage::StorageSettings;

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub flows: PathBuf,
    pub examples: PathBuf,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Exit after showing the runs instead of serving until Ctrl-C.
    pub once: bool,
}

/// Connections the example flows use, each backed by its own emulator.
const DEMO_CONNECTIONS: &[&str] = &["halo", "partner_halo"];

fn random_secret() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

pub async fn demo(options: &DemoOptions, out: &mut dyn Write) -> Result<(), CommandError> {
    let mut config = Config::default();
    config.server.listen = options.listen;
    let mut secrets = SecretStore::from_values(Vec::<(String, String)>::new());
    let mut emulators = Vec::new();
    for name in DEMO_CONNECTIONS {
        let client_secret = random_secret();
        let emulator = HaloEmulator::new(HaloEmulatorConfig {
            client_id: format!("haloflow-demo-{name}"),
            client_secret: client_secret.clone(),
            tenant: None,
            token_lifetime_secs: 3600,
        });
        let running = emulator.start().await?;
        let secret_name = format!("DEMO_{}_CLIENT_SECRET", name.to_uppercase());
        secrets.insert(&secret_name, client_secret);
        config.halo.insert(
            (*name).to_owned(),
            HaloConnectionConfig {
                timeout_secs: 10,
                // The emulators have no rate limit to stay under.
                rate_limit_requests: 0,
                ..HaloConnectionConfig::new(
                    running.base_url(),
                    format!("haloflow-demo-{name}"),
                    secret_name,
                )
            },
        );
        writeln!(out, "Halo emulator `{name}` on {}", running.base_url())?;
        emulators.push((name, emulator, running));
    }
    // The ServiceNow side: the instance of customer 12 (the sample tickets' client, Basic
    // auth) and of supplier 7 (OAuth), both served by one emulator for the demo.
    let servicenow_password = random_secret();
    let servicenow_client_secret = random_secret();
    let servicenow = ServiceNowEmulator::new(ServiceNowEmulatorConfig {
        username: "haloflow.demo".into(),
        password: servicenow_password.clone(),
        oauth_client_id: Some("haloflow-demo".into()),
        oauth_client_secret: Some(servicenow_client_secret.clone()),
        token_lifetime_secs: 1800,
        oauth_user: "haloflow.oauth".into(),
    });
    let servicenow_running = servicenow.start().await?;
    servicenow.insert_record(
        "sys_user",
        serde_json::json!({"user_name": "jo.bloggs", "email": "jo.bloggs@acme.example", "active": "true"}),
    );
    secrets.insert("DEMO_SERVICENOW_PASSWORD", servicenow_password);
    secrets.insert("DEMO_SERVICENOW_CLIENT_SECRET", servicenow_client_secret);
    let demo_servicenow = format!(
        r#"
        [customers.12]
        name = "Acme Ltd (demo)"
        instance_url = "{url}"
        auth = "basic"
        username = "haloflow.demo"
        password_secret_name = "DEMO_SERVICENOW_PASSWORD"
        category = [{{ halo = "Hardware", category = "hardware" }}]
        impact = [{{ halo = 2, servicenow = "2" }}]
        urgency = [{{ halo = 2, servicenow = "2" }}]
        [suppliers.7]
        name = "Firewall Vendor Ltd (demo)"
        instance_url = "{url}"
        auth = "oauth"
        client_id = "haloflow-demo"
        client_secret_name = "DEMO_SERVICENOW_CLIENT_SECRET"
        "#,
        url = servicenow_running.base_url()
    );
    config.servicenow = toml::from_str(&demo_servicenow)
        .map_err(|e| CommandError::Failed(format!("the demo's ServiceNow settings: {e}")))?;
    writeln!(
        out,
        "ServiceNow emulator on {} (customer 12 and supplier 7)",
        servicenow_running.base_url()
    )?;
    // The sample each example flow gets; any other flow gets the first one.
    let samples = [
        (
            "escalate-to-partner",
            "halo-new-ticket.json",
            vec!["epearson", "Antares Team"],
        ),
        (
            "new-ticket-routing",
            "halo-new-ticket-unassigned.json",
            vec!["triage on-call"],
        ),
        ("log-to-supplier", "halo-supplier-ticket.json", vec!["ops"]),
        (
            "sync-note-to-servicenow",
            "halo-new-action.json",
            vec!["ops"],
        ),
    ];
    // The webhooks talk about tickets that exist in the sending Halo.
    let source = &emulators[0].1;
    source.insert_supplier(serde_json::json!({"id": 7, "name": "Firewall Vendor Ltd", "email_address": "support@vendor.example"}));
    for (_, file, _) in &samples {
        let payload = read_json(&options.examples.join(file))?;
        if let Some(ticket) = payload.get("ticket") {
            source.insert_ticket(ticket.clone());
        }
    }

    // Every trigger secret the flows name gets a fresh value for this demo.
    let registry = crate::step::StepRegistry::with_builtins();
    let (flows, problems) = crate::flow::FlowValidator::new(&registry)
        .with_config(&config)
        .validate_files(&crate::flow::flow_files(&options.flows)?);
    if !problems.is_empty() {
        return Err(crate::engine::EngineError::Flows(problems).into());
    }
    for flow in &flows {
        if let Some(name) = flow.document.trigger.auth.secret_name() {
            secrets.insert(name, random_secret());
        }
    }
    let storage = crate::storage::open(&StorageSettings::new(&options.data_dir, None)).await?;
    let mut builder = Engine::builder()
        .config(config.clone())
        .secrets(secrets.clone())
        .registry(registry)
        .storage(storage);
    for flow in flows {
        builder = builder.flow(flow);
    }
    let engine = builder.build()?;
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| {
            CommandError::Failed(format!(
                "cannot listen on {}: {e}; pick a free address with --listen 127.0.0.1:0",
                options.listen
            ))
        })?;
    let addr = listener.local_addr()?;
    let base = format!("http://{addr}");
    let server = tokio::spawn(crate::server::serve(
        engine.clone(),
        listener,
        super::shutdown_signal(),
    ));
    writeln!(
        out,
        "haloflow serving on {base}, run history in {}\n",
        options
            .data_dir
            .join(crate::storage::DATABASE_FILE)
            .display()
    )?;

    let client = reqwest::Client::new();
    let mut curl_lines = Vec::new();
    for loaded in engine.flows() {
        let flow_id = loaded.flow.id();
        let (file, recipients) = samples
            .iter()
            .find(|(id, _, _)| *id == flow_id)
            .map(|(_, file, recipients)| (*file, recipients.clone()))
            .unwrap_or(("halo-new-ticket.json", vec!["ops"]));
        let auth = &loaded.flow.document.trigger.auth;
        let key = auth.secret_name().and_then(|n| secrets.get(n));
        let shown_key = match auth {
            TriggerAuth::UrlKey { .. } => key.as_ref().map(|k| k.expose().to_owned()),
            _ => None,
        };
        let url = render::with_recipients(
            &render::trigger_url(&base, &loaded.flow, shown_key.as_deref()),
            &recipients,
        );
        let sample_path = options.examples.join(file);
        let body = std::fs::read_to_string(&sample_path)?;
        let mut request = client
            .post(&url)
            .header("Content-Type", "application/json")
            .body(body);
        let mut curl = try_it_line(&url, &sample_path);
        match (auth, &key) {
            (TriggerAuth::Basic { username, .. }, Some(password)) => {
                let token = base64::engine::general_purpose::STANDARD
                    .encode(format!("{username}:{}", password.expose()));
                request = request.header("Authorization", format!("Basic {token}"));
                curl.push_str(&format!(" -u '{username}:{}'", password.expose()));
            }
            (TriggerAuth::Header { header, .. }, Some(value)) => {
                request = request.header(header.as_str(), value.expose());
                curl.push_str(&format!(" -H '{header}: {}'", value.expose()));
            }
            _ => {}
        }
        writeln!(out, "Trigger URL of `{flow_id}`: {url}")?;
        writeln!(out, "Sending {} ...", sample_path.display())?;
        let response = request
            .send()
            .await
            .map_err(|e| CommandError::Failed(format!("sending the sample webhook failed: {e}")))?;
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        writeln!(out, "Answer: {status} {answer}")?;
        for run_id in answer["run_ids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            let detail = tokio::time::timeout(Duration::from_secs(30), engine.wait_for_run(run_id))
                .await
                .map_err(|_| {
                    CommandError::Failed(format!("run {run_id} did not finish within 30 s"))
                })??;
            render::run(&detail, out)?;
        }
        writeln!(out)?;
        curl_lines.push(curl);
    }
    for (name, emulator, _) in &emulators {
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
    let records: usize = ["incident", "sc_task", "problem"]
        .iter()
        .map(|t| servicenow.records(t).len())
        .sum();
    writeln!(
        out,
        "ServiceNow now holds {records} record(s) and {} journal entries.",
        servicenow.records("sys_journal_field").len()
    )?;
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
    writeln!(
        out,
        "\nTry it yourself (these keys exist only for this demo; each line sends its sample with a\nnew delivery id, so it starts a run; the same line sent twice is answered 200 duplicate):"
    )?;
    for line in &curl_lines {
        writeln!(out, "  {line}")?;
    }
    writeln!(
        out,
        "Then: haloflow runs list --data {}",
        options.data_dir.display()
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
fn try_it_line(url: &str, sample: &std::path::Path) -> String {
    let id = uuid::Uuid::new_v4();
    format!(
        "sed 's/\"id\": *\"[^\"]*\"/\"id\": \"{id}\"/' {} | curl -sS -X POST '{url}' -H 'Content-Type: application/json' --data-binary @-",
        sample.display()
    )
}

fn read_json(path: &std::path::Path) -> Result<Value, CommandError> {
    let text = std::fs::read_to_string(path).map_err(|e| CommandError::Input {
        path: path.to_owned(),
        message: format!("cannot read: {e}"),
    })?;
    serde_json::from_str(&text).map_err(|e| CommandError::Input {
        path: path.to_owned(),
        message: format!("not valid JSON: {e}"),
    })
}
