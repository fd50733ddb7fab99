//! Embedding haloflow in your own axum application: `cargo run --example embed`.
//!
//! A self-contained demonstration: a local Halo emulator stands in for your Halo, the engine
//! gets one flow, haloflow's router is mounted under `/automation` next to the application's
//! own `/hello` route, and one Halo webhook goes through it. Prints the run and exits.

use std::sync::Arc;

use axum::routing::get;
use haloflow::prelude::*;
use haloflow_emulators::halo::{HaloEmulator, HaloEmulatorConfig};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Your Halo (here an emulator with one ticket).
    let halo = HaloEmulator::new(HaloEmulatorConfig {
        client_id: "embed-app".into(),
        client_secret: "embed-client-secret".into(),
        tenant: None,
        token_lifetime_secs: 3600,
    });
    let halo_server = halo.start().await?;
    halo.insert_ticket(json!({"id": 4242, "summary": "Disk space low"}));

    let engine = build_engine(&halo_server.base_url()).await?;
    let base = serve_with_host_routes(&engine).await?;

    let client = reqwest::Client::new();
    println!(
        "GET /hello -> {}",
        client
            .get(format!("{base}/hello"))
            .send()
            .await?
            .text()
            .await?
    );
    let webhook = json!({"id": "d1", "event": "new ticket logged", "object_id": 4242, "ticket": {"id": 4242, "agent_id": 0}});
    let answer: Value = client
        .post(format!("{base}/automation/triggers/note-new-tickets?apiKey=embed-key&recipients=ops,Emma%20Pearson"))
        .json(&webhook)
        .send()
        .await?
        .json()
        .await?;
    println!("POST /automation/triggers/note-new-tickets -> {answer}");
    let run_id = answer["run_ids"][0].as_str().ok_or("no run started")?;
    let run = engine.wait_for_run(run_id).await?;
    println!("run {} {:?}", run.summary.id, run.summary.status);
    for action in halo.actions() {
        println!("Halo received the action: {}", action["note"]);
    }
    if run.summary.status != RunStatus::Succeeded {
        return Err(format!("the run did not succeed: {:?}", run.summary.error).into());
    }
    Ok(())
}

/// The engine: the Halo integration alone, connections from config, secrets by name, one flow.
async fn build_engine(halo_url: &str) -> Result<Engine, Box<dyn std::error::Error>> {
    // The engine: the Halo integration alone, connections from config, secrets by name, one
    // flow.
    let integrations = Integrations::new().with(Halo);
    let config = integrations.parse_config(&format!(
        "[halo.halo]\nbase_url = \"{}\"\nclient_id = \"embed-app\"\nclient_secret_name = \"HALO_CLIENT_SECRET\"\n",
        halo_url
    ))?;
    let secrets = SecretStore::from_values([
        ("HALO_CLIENT_SECRET", "embed-client-secret"),
        ("EMBED_TRIGGER_KEY", "embed-key"),
    ]);
    let flow = json!({
        "id": "note-new-tickets",
        "name": "Note new tickets",
        "trigger": {"type": "halo.incidents", "auth": {"type": "url_key", "secret_name": "EMBED_TRIGGER_KEY"}},
        "steps": [{
            "id": "note", "type": "halo.add_action",
            "inputs": {"ticket_id": "{{trigger.ticket_id}}", "outcome": "Note",
                       "note": "Seen by the host application; notify {{join trigger.recipients \", \"}}"}
        }]
    });
    let registry = integrations.registry();
    let flow = FlowValidator::new(&registry)
        .with_config(&config)
        .validate_str(&flow.to_string(), None)
        .map_err(|problems| {
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        })?;
    let engine = Engine::builder()
        .config(config)
        .integrations(integrations)
        .secrets(secrets)
        .registry(registry)
        .flow(flow)
        .storage(Arc::new(SqliteStorage::in_memory().await?))
        .build()?;
    // Before taking requests: flood control rebuilt, unfinished runs continued, takeover and
    // the integrations' jobs running in the background.
    engine.start().await?;
    Ok(engine)
}

/// The host application: its own routes, haloflow under /automation; its base URL.
async fn serve_with_host_routes(engine: &Engine) -> Result<String, Box<dyn std::error::Error>> {
    // The host application: its own routes, haloflow under /automation.
    let app = axum::Router::new()
        .route(
            "/hello",
            get(|| async { "hello from the host application" }),
        )
        .nest("/automation", router(engine.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(base)
}
