//! Authoring helpers: `haloflow trigger-url` (what to paste into Halo) and `haloflow new`
//! (a valid flow from a template).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::{CommandError, render};
use crate::internals::flow::{self, FlowValidator, TriggerAuth, ValidatedFlow};
use crate::internals::secrets::SecretStore;

/// Options of `haloflow trigger-url`.
#[derive(Debug, Clone, clap::Args)]
pub struct TriggerUrlOptions {
    /// A flow file, or the id of a flow in --flows.
    pub flow: String,
    #[arg(long, default_value = "flows")]
    pub flows: PathBuf,
    /// The address Halo reaches haloflow at (default: server.public_url of --config).
    #[arg(long)]
    pub base_url: Option<String>,
    /// Names to notify, comma separated (each is URL-encoded).
    #[arg(long, value_delimiter = ',')]
    pub recipients: Vec<String>,
    /// The agent named in the assigned webhook's event rule.
    #[arg(long)]
    pub agent: Option<String>,
    /// Print the URL key itself (read from the environment or the config's `[secrets]`).
    #[arg(
        long,
        help = "Print the URL key itself (read from the environment or the config's [secrets])"
    )]
    pub show_key: bool,
    #[arg(long, env = "HALOFLOW_CONFIG")]
    pub config: Option<PathBuf>,
}

pub(super) fn find_flow(reference: &str, flows: &Path) -> Result<ValidatedFlow, CommandError> {
    let registry = crate::bundled::integrations().registry();
    let validator = FlowValidator::new(&registry);
    let path = Path::new(reference);
    if path.is_file() {
        return validator
            .validate_file(path)
            .map_err(|p| crate::internals::engine::EngineError::Flows(p).into());
    }
    let files = flow::flow_files(flows).map_err(|e| CommandError::Input {
        path: flows.to_owned(),
        message: format!("cannot read: {e}"),
    })?;
    let (found, problems) = validator.validate_files(&files);
    if let Some(flow) = found.into_iter().find(|f| f.id() == reference) {
        return Ok(flow);
    }
    let hint = if problems.is_empty() {
        String::new()
    } else {
        " (some flows have problems: run `haloflow validate`)".to_owned()
    };
    Err(CommandError::Failed(format!(
        "no flow file `{reference}` and no valid flow with that id in {}{hint}",
        flows.display()
    )))
}

/// `haloflow trigger-url`: the URL with recipients, and the Halo webhook settings step by step
/// (the seed's assigned/unassigned pair).
pub fn trigger_url(options: &TriggerUrlOptions, out: &mut dyn Write) -> Result<(), CommandError> {
    let flow = find_flow(&options.flow, &options.flows)?;
    let config = super::load_config(options.config.as_deref())?;
    let base_url = options
        .base_url
        .clone()
        .or(config.server.public_url.clone())
        .unwrap_or_else(|| format!("http://{}", config.server.listen));
    let auth = &flow.document.trigger.auth;
    let key = match (auth, options.show_key) {
        (TriggerAuth::UrlKey { secret_name, .. }, true) => {
            let secrets = SecretStore::from_environment(config.secrets.clone());
            let key = secrets.get(secret_name).ok_or_else(|| {
                CommandError::Failed(format!("--show-key: the secret {secret_name} is not set"))
            })?;
            Some(key.expose().to_owned())
        }
        _ => None,
    };
    let recipients: Vec<&str> = options
        .recipients
        .iter()
        .map(|r| r.trim())
        .filter(|r| !r.is_empty())
        .collect();
    let url = render::with_recipients(
        &render::trigger_url(&base_url, &flow, key.as_deref()),
        &recipients,
    );
    writeln!(
        out,
        "Trigger URL of flow `{}` ({}):\n\n  {url}\n",
        flow.id(),
        flow.document.name
    )?;
    if let (TriggerAuth::UrlKey { secret_name, .. }, None) = (auth, &key) {
        writeln!(
            out,
            "Replace <{secret_name}> with the value of the secret {secret_name} (or run with --show-key).\n"
        )?;
    }
    let agent = options.agent.as_deref().unwrap_or("<agent name>");
    for line in halo_webhook_steps(flow.id(), &url, &authentication(auth), agent) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// What to choose under the Halo webhook's Authentication for this trigger.
fn authentication(auth: &TriggerAuth) -> String {
    match auth {
        TriggerAuth::UrlKey { param, .. } => {
            format!("No Authentication (the key rides in the URL as `{param}`)")
        }
        TriggerAuth::Basic {
            username,
            password_secret_name,
        } => format!(
            "Basic Authentication: user name `{username}`, password: the value of the secret {password_secret_name}"
        ),
        TriggerAuth::Header {
            header,
            secret_name,
        } => format!(
            "add the request header `{header}` with the value of the secret {secret_name} \
             (if your Halo cannot send custom headers, switch the flow to url_key or basic)"
        ),
        TriggerAuth::None => {
            "No Authentication (anyone who knows the URL can trigger this flow)".to_owned()
        }
    }
}

/// The Halo webhook settings, step by step, for the assigned/unassigned pair.
fn halo_webhook_steps(name: &str, url: &str, authentication: &str, agent: &str) -> [String; 13] {
    [
        "In Halo, create two webhooks: one for tickets with an agent, one for unassigned tickets."
            .to_owned(),
        "  1. Configuration > Integrations > Webhooks, then New (top right).".to_owned(),
        format!(
            "  2. Name: \"haloflow - {name} - Assigned\" (the second one: \"haloflow - {name} - Unassigned\")."
        ),
        format!("  3. Payload URL: {url}"),
        "  4. Webhook type: Standard webhook. Method: POST.".to_owned(),
        format!("  5. Authentication: {authentication}."),
        "  6. Enabled: on. \"Use a custom payload\": off (haloflow reads Halo's default payload)."
            .to_owned(),
        "  7. Events > Add: Event \"New Ticket Logged\", then Add a criterion:".to_owned(),
        format!(
            "       assigned webhook:   Field \"Agent\", Rule Type \"Is equal to\", Value \"{agent}\""
        ),
        "       unassigned webhook: Field \"Agent\", Rule Type \"Is equal to\", Value \"Unassigned\""
            .to_owned(),
        "  8. Save the event, then Save the webhook. Repeat 1-8 for the unassigned webhook."
            .to_owned(),
        "Recipients: add names to the URL as above (`&recipients=` after a URL key, `?recipients=` otherwise);"
            .to_owned(),
        "every name is URL-encoded. The flow reads them as trigger.recipients.".to_owned(),
    ]
}

/// `haloflow schema`: the editor-facing flow schema (schemas/flow.schema.json) for the
/// registered steps.
pub fn schema(out: &mut dyn Write) -> Result<(), CommandError> {
    let schema = flow::editor_schema(&crate::bundled::integrations().registry());
    Ok(super::write_json(&schema, out)?)
}

/// The templates `haloflow new` offers: name and description.
pub const TEMPLATES: &[(&str, &str)] = &[
    (
        "halo-create",
        "a Halo webhook creates a ticket in another Halo and notes the new id on it",
    ),
    (
        "halo-update",
        "a Halo webhook updates the incoming ticket and adds an action to it",
    ),
    (
        "halo-routing",
        "assigned and unassigned tickets routed differently (agent_assigned, recipients)",
    ),
    (
        "halo-to-servicenow",
        "a Halo webhook sends the ticket to its customer's ServiceNow and notes the record number",
    ),
];

/// Options of `haloflow new`.
#[derive(Debug, Clone, clap::Args)]
pub struct NewOptions {
    /// The flow's name; its id and file name are made from it.
    pub name: String,
    /// halo-create, halo-update or halo-routing.
    #[arg(long, default_value = "halo-create")]
    pub template: String,
    #[arg(long, default_value = "flows")]
    pub dir: PathBuf,
}

/// Lower-case letters, digits and dashes: a flow id and file name from a human name.
pub fn slug(name: &str) -> String {
    let mut slug = String::new();
    for c in name.trim().chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    slug.trim_end_matches('-').chars().take(64).collect()
}

fn template(template: &str, id: &str, name: &str) -> Option<Value> {
    let secret = format!("HALOFLOW_{}_KEY", id.to_uppercase().replace('-', "_"));
    let trigger = json!({"type": "halo.incidents", "auth": {"type": "url_key", "param": "apiKey", "secret_name": secret}});
    let steps = match template {
        "halo-create" => json!([
            {"id": "create", "name": "Create the ticket in the other Halo", "type": "halo.create_ticket", "connection": "partner_halo",
             "inputs": {"summary": "[Halo #{{trigger.ticket_id}}] {{trigger.ticket.summary}}", "details": "{{default trigger.ticket.details \"\"}}",
                        "impact": "{{default trigger.ticket.impact 3}}", "urgency": "{{default trigger.ticket.urgency 3}}"}},
            {"id": "note", "name": "Note the source ticket", "type": "halo.add_action", "connection": "partner_halo",
             "inputs": {"ticket_id": "{{steps.create.ticket_id}}", "outcome": "Note", "private": true,
                        "note": "Created from Halo ticket {{trigger.ticket_id}} ({{trigger.event}})."}}
        ]),
        "halo-update" => json!([
            {"id": "update", "name": "Update the incoming ticket", "type": "halo.update_ticket",
             "inputs": {"ticket_id": "{{trigger.ticket_id}}", "status_id": 2}},
            {"id": "note", "name": "Add an action", "type": "halo.add_action",
             "inputs": {"ticket_id": "{{steps.update.ticket_id}}", "outcome": "Note", "private": true,
                        "note": "haloflow saw `{{trigger.event}}`; notified: {{join trigger.recipients \", \"}}"}}
        ]),
        "halo-routing" => json!([
            {"id": "route", "name": "Route by agent", "type": "halo.update_ticket",
             "inputs": {"ticket_id": "{{trigger.ticket_id}}",
                        "team": "{{#if trigger.agent_assigned}}{{default trigger.ticket.team \"Service Desk\"}}{{else}}Triage{{/if}}"}},
            {"id": "announce", "name": "Say who was notified", "type": "halo.add_action",
             "inputs": {"ticket_id": "{{steps.route.ticket_id}}", "outcome": "Note", "private": true,
                        "note": "{{#if trigger.agent_assigned}}Assigned{{else}}Unassigned{{/if}}; notified: {{join trigger.recipients \", \"}}"}}
        ]),
        "halo-to-servicenow" => json!([
            {"id": "send", "name": "Create the record in the customer's ServiceNow", "type": "servicenow.send_ticket",
             "inputs": {"ticket_id": "{{trigger.ticket_id}}"}},
            {"id": "note", "name": "Note the record on the ticket", "type": "halo.add_action",
             "inputs": {"ticket_id": "{{trigger.ticket_id}}", "outcome": "Note", "private": true,
                        "note": "Sent to ServiceNow as {{steps.send.number}} ({{steps.send.table}})."}}
        ]),
        _ => return None,
    };
    Some(json!({
        "$schema": "../schemas/flow.schema.json",
        "id": id,
        "name": name,
        "description": TEMPLATES.iter().find(|(t, _)| *t == template).map(|(_, d)| *d).unwrap_or_default(),
        "trigger": trigger,
        "steps": steps,
    }))
}

/// `haloflow new`: writes `<dir>/<slug>.json` from a template and checks it validates.
pub fn new_flow(options: &NewOptions, out: &mut dyn Write) -> Result<PathBuf, CommandError> {
    let id = slug(&options.name);
    if id.is_empty() {
        return Err(CommandError::Failed(
            "the flow name needs at least one letter or digit".into(),
        ));
    }
    let Some(mut document) = template(&options.template, &id, options.name.trim()) else {
        let known: Vec<String> = TEMPLATES
            .iter()
            .map(|(t, d)| format!("  {t}: {d}"))
            .collect();
        return Err(CommandError::Failed(format!(
            "no template `{}`; templates:\n{}",
            options.template,
            known.join("\n")
        )));
    };
    let schema_hint = point_at_schema(&mut document, &options.dir);
    let path = options.dir.join(format!("{id}.json"));
    if path.exists() {
        return Err(CommandError::Failed(format!(
            "{} exists already; choose another name or delete it",
            path.display()
        )));
    }
    let text = serde_json::to_string_pretty(&document).expect("JSON serializes") + "\n";
    let registry = crate::bundled::integrations().registry();
    FlowValidator::new(&registry)
        .validate_str(&text, Some(&path))
        .map_err(crate::internals::engine::EngineError::Flows)?;
    std::fs::create_dir_all(&options.dir)?;
    std::fs::write(&path, text)?;
    let secret = document["trigger"]["auth"]["secret_name"]
        .as_str()
        .unwrap_or_default();
    let shown = path.display();
    writeln!(out, "wrote {shown} (template {})", options.template)?;
    writeln!(out, "next: set {secret} to a long random key, then")?;
    writeln!(out, "  haloflow validate {shown}")?;
    writeln!(
        out,
        "  haloflow run {shown} --payload examples/halo-new-ticket.json --dry-run --config examples/haloflow.toml",
    )?;
    writeln!(out, "  haloflow trigger-url {id} --recipients <names>")?;
    if let Some(hint) = schema_hint {
        writeln!(out, "{hint}")?;
    }
    Ok(path)
}

/// Editors find the schema relative to the flow file; elsewhere the document names the
/// repository's copy by its absolute path, else the hint returned says how to write one.
fn point_at_schema(document: &mut Value, dir: &Path) -> Option<String> {
    let schema_path = dir.join("../schemas/flow.schema.json");
    if schema_path.is_file() {
        return None;
    }
    match std::fs::canonicalize("schemas/flow.schema.json") {
        Ok(absolute) => {
            document["$schema"] = json!(absolute.display().to_string());
            None
        }
        Err(_) => Some(format!(
            "for completion in editors, write the schema next to the flows: haloflow schema > {}",
            schema_path.display()
        )),
    }
}
