//! A step of your own, in an integration of your own: `cargo run --example custom_step`.
//!
//! `chat.post_message` posts to a chat webhook (Slack- or Teams-style incoming webhooks take
//! `{"text": ...}`). Its URL and credentials come from an `[http.<name>]` connection, so no
//! secret is written in a flow. The `Chat` integration registers it, and a route of its own,
//! through the same interface Halo and ServiceNow use ([`Integration`]); flows then use the
//! step, and the validator checks its inputs against its schema. A self-contained
//! demonstration: a local chat receiver, a flow that routes assigned and unassigned tickets to
//! different channels, two webhooks, the messages received, and the integration's route.
//! Exits when done.

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use haloflow::prelude::*;
use serde_json::{Value, json};

/// Posts `text` to `channel` of a chat webhook connection.
#[derive(Debug, Clone, Copy)]
struct ChatMessage;

#[async_trait]
impl Step for ChatMessage {
    fn describe(&self) -> StepDescription {
        StepDescription::new(
            "chat.post_message",
            "Post a message to a chat channel through an incoming-webhook connection.",
        )
            .input_schema(json!({
                "type": "object",
                "required": ["channel", "text"],
                "additionalProperties": false,
                "properties": {
                    "channel": {"type": "string", "pattern": "^[a-z0-9-]+$", "description": "The channel, a path under the connection's URL."},
                    "text": {"type": "string", "minLength": 1, "description": "The message."}
                }
            }))
            .output("status", "The chat service's answer status.")
            .connection_kind(ConnectionKind::HTTP)
    }

    // A chat message cannot be looked up afterwards: after a lost answer, a person checks the
    // channel rather than the step posting it twice.
    fn resend(&self, _inputs: &Value) -> Resend {
        Resend::Never
    }

    async fn execute(&self, ctx: &StepContext, inputs: Value) -> Result<Value, StepError> {
        let connection = ctx
            .http_connection()?
            .ok_or_else(|| StepError::Connection("chat.post_message needs a connection".into()))?;
        // The connection's base URL, credentials (a secret: masked in history and logs) and
        // timeout; an answer outside 2xx becomes a step error the engine retries or not by the
        // error table (429 and 503 with their Retry-After, say).
        let channel = inputs["channel"].as_str().unwrap_or_default();
        let request = connection
            .request(reqwest::Method::POST, channel)
            .json(json!({"text": inputs["text"]}));
        let response = ctx.send(request).await?;
        Ok(json!({"status": response.status}))
    }
}

/// The chat integration: its step, and a route listing the connections it can post through.
/// Halo and ServiceNow register their steps, routes, config sections, connections and jobs
/// the same way; every method it does not need has a default.
struct Chat;

impl Integration for Chat {
    fn name(&self) -> &'static str {
        "chat"
    }

    fn steps(&self) -> Vec<Arc<dyn Step>> {
        vec![Arc::new(ChatMessage)]
    }

    fn routes(&self) -> axum::Router<Engine> {
        axum::Router::new().route(
            "/chat/connections",
            get(|State(engine): State<Engine>| async move {
                let names: Vec<&str> = engine.connections().names(ConnectionKind::HTTP).collect();
                Json(json!({ "connections": names }))
            }),
        )
    }
}

type Inbox = Arc<Mutex<Vec<(String, Value)>>>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let inbox: Inbox = Arc::default();
    let chat_url = start_chat_service(inbox.clone()).await?;

    // The integrations this program runs: its own, and Halo for the `halo.incidents` trigger
    // type its flow reacts to (no Halo connection is configured: no step calls Halo), not
    // ServiceNow. The registry holds the core's built-in steps and trigger type (`webhook`)
    // and the integrations'.
    let integrations = Integrations::new().with(Chat).with(Halo);
    let registry = integrations.registry();
    let config = integrations.parse_config(&format!(
        "[http.chat]\nbase_url = \"{chat_url}\"\nheader_name = \"X-Chat-Token\"\nheader_secret_name = \"CHAT_TOKEN\"\n"
    ))?;

    show_a_rejected_flow(&registry, &config);

    let engine = chat_engine(integrations, registry, config).await?;

    for (ticket, agent) in [(4242, 3), (4243, 0)] {
        let payload = json!({"event": "new ticket logged", "object_id": ticket, "ticket": {"id": ticket, "agent_id": agent, "summary": "Printer jam"}});
        for run in engine
            .run_to_completion("chat-new-tickets", payload, &TriggerQuery::default())
            .await?
            .runs
        {
            println!("run {} {:?}", run.summary.id, run.summary.status);
            if run.summary.status != RunStatus::Succeeded {
                return Err(format!("the run did not succeed: {:?}", run.summary.error).into());
            }
        }
    }
    for (channel, body) in inbox.lock().unwrap().iter() {
        println!("#{channel} received: {}", body["text"]);
    }

    // The integration's route is served with the core's.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, router(engine)).await });
    let answer = reqwest::get(format!("{base}/chat/connections"))
        .await?
        .text()
        .await?;
    println!("GET /chat/connections -> {answer}");
    Ok(())
}

/// A stand-in chat service that keeps what it receives in `inbox`; its hooks' base URL.
async fn start_chat_service(inbox: Inbox) -> Result<String, Box<dyn std::error::Error>> {
    // A stand-in chat service that keeps what it receives.
    let chat = axum::Router::new()
        .route(
            "/hooks/{channel}",
            post(
                |State(inbox): State<Inbox>,
                 Path(channel): Path<String>,
                 Json(body): Json<Value>| async move {
                    inbox.lock().unwrap().push((channel, body));
                    "ok"
                },
            ),
        )
        .with_state(inbox);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let chat_url = format!("http://{}/hooks", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, chat).await });
    Ok(chat_url)
}

/// The validator checks the custom step's inputs like any other.
fn show_a_rejected_flow(registry: &StepRegistry, config: &Config) {
    let misspelt = json!({
        "id": "bad", "name": "bad", "trigger": {"type": "halo.incidents", "auth": {"type": "none"}},
        "steps": [{"id": "say", "type": "chat.post_message", "connection": "chat", "inputs": {"channel": "ops", "txt": "hi"}}]
    });
    let problems = FlowValidator::new(registry)
        .with_config(config)
        .validate_str(&misspelt.to_string(), None)
        .unwrap_err();
    for problem in &problems {
        println!("rejected as expected: {problem}");
    }
}

/// The engine running one flow whose paths post to the chat.
async fn chat_engine(
    integrations: Integrations,
    registry: StepRegistry,
    config: Config,
) -> Result<Engine, Box<dyn std::error::Error>> {
    let flow = json!({
        "id": "chat-new-tickets",
        "name": "Tell the right channel about new tickets",
        "trigger": {"type": "halo.incidents", "auth": {"type": "none"}},
        "steps": [{
            "id": "assigned", "type": "core.condition",
            "inputs": {"conditions": [{"left": "{{trigger.agent_assigned}}", "op": "equals", "right": true}]},
            "paths": {
                "true": [{"id": "tell_agent", "type": "chat.post_message", "connection": "chat",
                          "inputs": {"channel": "agents", "text": "Ticket {{trigger.ticket_id}} is yours, agent {{trigger.ticket.agent_id}}"}}],
                "false": [{"id": "tell_triage", "type": "chat.post_message", "connection": "chat",
                           "inputs": {"channel": "triage", "text": "Unassigned ticket {{trigger.ticket_id}}: {{trigger.ticket.summary}}"}}]
            }
        }]
    });
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
    Ok(Engine::builder()
        .config(config)
        .integrations(integrations)
        .secrets(SecretStore::from_values([("CHAT_TOKEN", "chat-token")]))
        .registry(registry)
        .flow(flow)
        .storage(Arc::new(SqliteStorage::in_memory().await?))
        .build()?)
}
