//! Send to ServiceNow, Log to Supplier and note sync against a Halo emulator and ServiceNow
//! emulators (Basic and OAuth), through the engine with a real SQLite file.

use haloflow::trigger::TriggerQuery;
use std::sync::Arc;

use haloflow::engine::Engine;
use haloflow::secrets::SecretStore;
use haloflow::storage::{LinkOrigin, LinkStore, RunDetail, RunStatus, RunStore, SqliteStorage};
use haloflow_emulators::RunningEmulator;
use haloflow_emulators::halo::{HaloEmulator, HaloEmulatorConfig};
use haloflow_emulators::servicenow::{ServiceNowEmulator, ServiceNowEmulatorConfig};
use serde_json::{Value, json};

const HALO_SECRET: &str = "CS-halo-sn-8f2a";
const ACME_PASSWORD: &str = "PW-acme-sn-3c9d";
const GLOBEX_SECRET: &str = "CS-globex-sn-71be";
const VENDOR_SECRET: &str = "CS-vendor-sn-5e0a";
const MUTE_PASSWORD: &str = "PW-mute-sn-44aa";

struct World {
    /// The sys_id of the ServiceNow user whose email the tickets carry.
    jo: String,
    engine: Engine,
    storage: Arc<SqliteStorage>,
    halo: HaloEmulator,
    /// Customer 12, Basic auth, attachments and child tickets on.
    acme: ServiceNowEmulator,
    /// Customer 13, OAuth, no attachments, no child tickets.
    globex: ServiceNowEmulator,
    /// Supplier 7, OAuth.
    vendor: ServiceNowEmulator,
    /// Supplier 9, Basic, but the supplier has no email in Halo.
    mute: ServiceNowEmulator,
    _running: Vec<RunningEmulator>,
    _dir: tempfile::TempDir,
}

/// Every test ends with nothing sent that Halo's published contract would not take as sent,
/// and nothing a ServiceNow instance would have dropped silently.
impl Drop for World {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            crate::common::assert_contract_kept(&[&self.halo]);
            crate::common::assert_nothing_dropped(&[&self.acme, &self.globex, &self.vendor]);
        }
    }
}

fn servicenow(user: &str, password: &str, oauth: Option<(&str, &str)>) -> ServiceNowEmulator {
    ServiceNowEmulator::new(ServiceNowEmulatorConfig {
        username: user.into(),
        password: password.into(),
        oauth_client_id: oauth.map(|o| o.0.to_owned()),
        oauth_client_secret: oauth.map(|o| o.1.to_owned()),
        token_lifetime_secs: 1800,
        oauth_user: format!("{user}.oauth"),
    })
}

const FLOWS: &[(&str, &str, &str)] = &[
    (
        "send",
        "servicenow.send_ticket",
        r#"{"ticket_id": "{{trigger.ticket_id}}"}"#,
    ),
    (
        "send_as_task",
        "servicenow.send_ticket",
        r#"{"ticket_id": "{{trigger.ticket_id}}", "record_type": "sc_task"}"#,
    ),
    (
        "supplier",
        "servicenow.log_to_supplier",
        r#"{"ticket_id": "{{trigger.ticket_id}}"}"#,
    ),
    (
        "note",
        "servicenow.sync_note",
        r#"{"ticket_id": "{{trigger.ticket_id}}", "note": "{{trigger.body.note}}", "private": "{{trigger.body.private}}", "sync": "{{trigger.body.sync}}"}"#,
    ),
];

impl World {
    async fn new() -> World {
        let halo = HaloEmulator::new(HaloEmulatorConfig {
            client_id: "haloflow".into(),
            client_secret: HALO_SECRET.into(),
            tenant: None,
            token_lifetime_secs: 3600,
        });
        let acme = servicenow("acme.integration", ACME_PASSWORD, None);
        let globex = servicenow(
            "globex.api",
            "unused",
            Some(("globex-client", GLOBEX_SECRET)),
        );
        let vendor = servicenow(
            "vendor.api",
            "unused",
            Some(("vendor-client", VENDOR_SECRET)),
        );
        let mute = servicenow("mute.integration", MUTE_PASSWORD, None);
        let mut running = Vec::new();
        for emulator in [&acme, &globex, &vendor, &mute] {
            running.push(emulator.start().await.unwrap());
        }
        let halo_running = halo.start().await.unwrap();
        let config = format!(
            r#"
[halo.halo]
base_url = "{halo}"
client_id = "haloflow"
client_secret_name = "HALO_SECRET"
rate_limit_requests = 0

[retry]
initial_delay_ms = 10
max_delay_ms = 100

[servicenow]
sync_attachments = false

[servicenow.customers.12]
name = "Acme"
instance_url = "{acme}"
auth = "basic"
username = "acme.integration"
password_secret_name = "ACME_PASSWORD"
default_caller = "user-default"
default_assignment_group = "grp-default"
sync_attachments = true
sync_child_tickets = true
record_types = {{ "3" = "sc_task", "4" = "problem", "5" = "incident_task" }}
status = [{{ halo = 1, servicenow = "1" }}]
category = [{{ halo = "Hardware", category = "hardware", subcategory = "disk" }}]
priority = [{{ halo = 2, servicenow = "2" }}, {{ halo = 1, impact = "1", urgency = "2" }}]
impact = [{{ halo = 2, servicenow = "2", table = "incident" }}, {{ halo = 2, servicenow = "3", table = "task" }}]
urgency = [{{ halo = 2, servicenow = "1" }}]
assignment_group = [{{ halo = "Service Desk", servicenow = "grp-sd" }}]
custom_fields = [{{ halo_field_id = 178, servicenow_field = "u_severity", values = {{ "1" = "sev-high", "2" = "sev-low" }} }}]
services = [{{ halo_service_id = 5, servicenow_service = "svc-email" }}]

[servicenow.customers.13]
instance_url = "{globex}"
auth = "oauth"
client_id = "globex-client"
client_secret_name = "GLOBEX_SECRET"
record_types = {{ "4" = "problem" }}
caller_cache_secs = 0

[servicenow.suppliers.7]
instance_url = "{vendor}"
auth = "oauth"
client_id = "vendor-client"
client_secret_name = "VENDOR_SECRET"

[servicenow.suppliers.9]
instance_url = "{mute}"
auth = "basic"
username = "mute.integration"
password_secret_name = "MUTE_PASSWORD"
"#,
            halo = halo_running.base_url(),
            acme = running[0].base_url(),
            globex = running[1].base_url(),
            vendor = running[2].base_url(),
            mute = running[3].base_url(),
        );
        running.push(halo_running);
        let config = haloflow::bundled::integrations()
            .parse_config(&config)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(SqliteStorage::open_dir(dir.path()).await.unwrap());
        let mut builder = Engine::builder()
            .integrations(haloflow::bundled::integrations())
            .config(config.clone())
            .secrets(SecretStore::from_values([
                ("HALO_SECRET", HALO_SECRET),
                ("ACME_PASSWORD", ACME_PASSWORD),
                ("GLOBEX_SECRET", GLOBEX_SECRET),
                ("VENDOR_SECRET", VENDOR_SECRET),
                ("MUTE_PASSWORD", MUTE_PASSWORD),
            ]))
            .storage(storage.clone());
        let registry = haloflow::bundled::integrations().registry();
        for (id, step_type, inputs) in FLOWS {
            let flow = json!({"id": id, "name": id,
                "trigger": {"type": "halo.incidents", "auth": {"type": "none"}, "flood_control": {"enabled": false}},
                "steps": [{"id": "step", "type": step_type, "inputs": serde_json::from_str::<Value>(inputs).unwrap()}]});
            let validated = haloflow::flow::FlowValidator::new(&registry)
                .with_config(&config)
                .validate_str(&flow.to_string(), None)
                .unwrap_or_else(|p| panic!("{p:#?}"));
            builder = builder.flow(validated);
        }
        let engine = builder.build().unwrap();
        // Acme's own field, on every task table (the custom field mapping writes it).
        acme.add_field("task", "u_severity");
        let jo = acme.insert_record(
            "sys_user",
            json!({"user_name": "jo.bloggs", "email": "jo.bloggs@acme.example", "active": "true"}),
        );
        World {
            jo,
            engine,
            storage,
            halo,
            acme,
            globex,
            vendor,
            mute,
            _running: running,
            _dir: dir,
        }
    }

    fn ticket(&self, id: i64, fields: Value) -> i64 {
        let mut ticket = json!({"id": id, "summary": format!("Ticket {id}"), "details": "Details",
                                "client_id": 12, "tickettype_id": 1, "user_email": "jo.bloggs@acme.example"});
        for (k, v) in fields.as_object().unwrap() {
            ticket[k] = v.clone();
        }
        self.halo.insert_ticket(ticket)
    }

    async fn run(&self, flow: &str, ticket_id: i64, body: Value) -> RunDetail {
        let mut payload =
            json!({"event": "x", "object_id": ticket_id, "id": uuid::Uuid::new_v4().to_string()});
        for (k, v) in body.as_object().unwrap() {
            payload[k] = v.clone();
        }
        let mut runs = self
            .engine
            .run_to_completion(flow, payload, &TriggerQuery::default())
            .await
            .unwrap()
            .runs;
        runs.remove(0)
    }

    async fn send(&self, flow: &str, ticket_id: i64) -> Value {
        let run = self.run(flow, ticket_id, json!({})).await;
        assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
        run.steps[0].outputs.clone().unwrap()
    }
}

#[tokio::test]
async fn every_mapping_is_applied_and_the_caller_is_matched_by_email() {
    let w = World::new().await;
    let id = w.ticket(
        100,
        json!({"category_1": "Hardware", "priority_id": 2, "impact": 2, "urgency": 2, "team": "Service Desk",
               "status_id": 1, "service_id": 5, "customfields": [{"id": 178, "value": 1}]}),
    );
    let out = w.send("send", id).await;
    assert_eq!(out["table"], "incident");
    assert_eq!(out["caller_matched"], true);
    let record = w
        .acme
        .record("incident", out["sys_id"].as_str().unwrap())
        .unwrap();
    for (field, value) in [
        ("short_description", "Ticket 100"),
        ("description", "Details"),
        ("state", "1"),
        ("category", "hardware"),
        ("subcategory", "disk"),
        ("priority", "2"),
        ("impact", "2"),
        ("urgency", "1"),
        ("assignment_group", "grp-sd"),
        ("u_severity", "sev-high"),
        ("business_service", "svc-email"),
        ("caller_id", w.jo.as_str()),
        ("sys_created_by", "acme.integration"),
    ] {
        assert_eq!(record[field], value, "{field}: {record:#}");
    }
    assert!(
        record["correlation_id"]
            .as_str()
            .unwrap()
            .starts_with("HALO-100-")
    );
    let link = w
        .storage
        .link_for_ticket("halo", 100)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            link.remote.as_str(),
            link.remote_table.as_str(),
            link.created_by
        ),
        ("customers/12", "incident", LinkOrigin::Ticket)
    );
    assert_eq!(link.number.as_deref(), out["number"].as_str());

    // A task (by the ticket type's default): no category, the task-only impact mapping, the
    // default group for an unmapped team, the default caller for an unknown email.
    let id = w.ticket(
        101,
        json!({"tickettype_id": 3, "category_1": "Hardware", "impact": 2, "team": "Nobody",
               "user_email": "stranger@else.example", "customfields": [{"id": 178, "value": 2}]}),
    );
    let out = w.send("send", id).await;
    assert_eq!(out["table"], "sc_task");
    assert_eq!(out["caller_matched"], false);
    let task = w
        .acme
        .record("sc_task", out["sys_id"].as_str().unwrap())
        .unwrap();
    assert!(task.get("category").is_none_or(|c| c == ""), "{task:#}");
    assert_eq!(task["impact"], "3");
    assert_eq!(task["assignment_group"], "grp-default");
    assert_eq!(task["opened_by"], "user-default");
    assert_eq!(task["u_severity"], "sev-low", "the single-select value map");
    assert_eq!(task["state"], "1", "created New");

    // The step input wins over the ticket type's default.
    let id = w.ticket(102, json!({}));
    assert_eq!(w.send("send_as_task", id).await["table"], "sc_task");
    let users = w
        .acme
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/now/table/sys_user")
        .collect::<Vec<_>>();
    assert_eq!(
        users[0].query_param("sysparm_query").as_deref(),
        Some("active=true^email=jo.bloggs@acme.example")
    );
    assert_eq!(
        w.acme.warnings(),
        Vec::<String>::new(),
        "no field the instance would drop"
    );
}

/// The email lookups a connection sent to `emulator`.
fn caller_lookups(emulator: &ServiceNowEmulator) -> Vec<String> {
    emulator
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/now/table/sys_user")
        .filter_map(|r| r.query_param("sysparm_query"))
        .filter(|q| q.starts_with("active=true^email="))
        .collect()
}

/// Tickets from one end user look their caller up once per `caller_cache_secs` (300 by
/// default), a user found or not; with 0 every record created looks it up.
#[tokio::test]
async fn the_caller_found_for_an_email_is_remembered_per_connection() {
    let w = World::new().await;
    for id in [120, 121] {
        assert_eq!(
            w.send("send", w.ticket(id, json!({}))).await["caller_matched"],
            true
        );
    }
    for id in [122, 123] {
        let stranger = json!({"user_email": "stranger@else.example"});
        let out = w.send("send", w.ticket(id, stranger)).await;
        assert_eq!(out["caller_matched"], false);
    }
    assert_eq!(
        caller_lookups(&w.acme),
        [
            "active=true^email=jo.bloggs@acme.example",
            "active=true^email=stranger@else.example"
        ]
    );
    for id in [124, 125] {
        w.send("send", w.ticket(id, json!({"client_id": 13}))).await;
    }
    assert_eq!(caller_lookups(&w.globex).len(), 2, "caller_cache_secs = 0");
}

#[tokio::test]
async fn a_task_goes_under_its_parents_incident() {
    let w = World::new().await;
    let parent = w.send("send", w.ticket(110, json!({}))).await;
    let child = w
        .send(
            "send",
            w.ticket(111, json!({"parent_id": 110, "tickettype_id": 3})),
        )
        .await;
    let task = w
        .acme
        .record("sc_task", child["sys_id"].as_str().unwrap())
        .unwrap();
    assert_eq!(task["parent"], parent["sys_id"]);
    // An incident under an incident also gets parent_incident.
    let sub = w
        .send("send", w.ticket(112, json!({"parent_id": 110})))
        .await;
    let incident = w
        .acme
        .record("incident", sub["sys_id"].as_str().unwrap())
        .unwrap();
    assert_eq!(incident["parent_incident"], parent["sys_id"]);
    // An incident task names its incident (§2.5); its priority goes as impact and urgency,
    // and the instance calculates it.
    let out = w
        .send(
            "send",
            w.ticket(
                113,
                json!({"parent_id": 110, "tickettype_id": 5, "priority_id": 1}),
            ),
        )
        .await;
    assert_eq!(out["table"], "incident_task");
    let task = w
        .acme
        .record("incident_task", out["sys_id"].as_str().unwrap())
        .unwrap();
    assert_eq!(task["incident"], parent["sys_id"], "{task:#}");
    assert_eq!(task["parent"], parent["sys_id"]);
    assert_eq!(
        (&task["impact"], &task["urgency"], &task["priority"]),
        (&json!("1"), &json!("2"), &json!("2"))
    );
    let sent = w
        .acme
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.path == "/api/now/table/incident_task")
        .unwrap()
        .json()
        .unwrap();
    assert!(sent.get("priority").is_none(), "{sent:#}");
    assert_eq!(w.acme.warnings(), Vec::<String>::new());
}

#[tokio::test]
async fn a_problem_brings_its_children_only_when_enabled() {
    let w = World::new().await;
    w.ticket(120, json!({"tickettype_id": 4}));
    w.ticket(121, json!({"parent_id": 120}));
    w.ticket(122, json!({"parent_id": 120}));
    let out = w.send("send", 120).await;
    assert_eq!(out["table"], "problem");
    assert_eq!(out["children"].as_array().unwrap().len(), 2);
    let problem = out["sys_id"].as_str().unwrap();
    let incidents = w.acme.records("incident");
    assert_eq!(incidents.len(), 2);
    assert!(incidents.iter().all(|i| i["problem_id"] == problem));
    for id in [120, 121, 122] {
        assert!(
            w.storage
                .link_for_ticket("halo", id)
                .await
                .unwrap()
                .is_some()
        );
    }
    // Customer 13 does not sync child tickets: one record.
    w.ticket(123, json!({"tickettype_id": 4, "client_id": 13}));
    w.ticket(124, json!({"parent_id": 123, "client_id": 13}));
    let out = w.send("send", 123).await;
    assert_eq!(out["children"], json!([]));
    assert_eq!(w.globex.records("problem").len(), 1);
    assert!(w.globex.records("incident").is_empty());
}

#[tokio::test]
async fn only_public_attachments_go_and_only_where_enabled() {
    let w = World::new().await;
    w.ticket(130, json!({}));
    w.halo
        .insert_attachment(130, "public.txt", true, b"for everyone");
    w.halo
        .insert_attachment(130, "private.txt", false, b"agents only");
    let out = w.send("send", 130).await;
    assert_eq!(out["attachments"], json!(["public.txt"]));
    let uploaded = w.acme.attachments();
    assert_eq!(uploaded.len(), 1);
    assert_eq!(uploaded[0]["file_name"], "public.txt");
    assert_eq!(uploaded[0]["table_sys_id"], out["sys_id"]);
    assert_eq!(uploaded[0]["content_type"], "text/plain");
    assert_eq!(uploaded[0]["size_bytes"], "12");
    // Customer 13 falls back to the global switch, which is off.
    w.ticket(131, json!({"client_id": 13}));
    w.halo
        .insert_attachment(131, "public.txt", true, b"for everyone");
    assert_eq!(w.send("send", 131).await["attachments"], json!([]));
    assert!(w.globex.attachments().is_empty());
}

#[tokio::test]
async fn sending_again_to_another_record_overwrites_the_link() {
    let w = World::new().await;
    w.ticket(140, json!({}));
    let first = w.send("send", 140).await;
    let second = w.send("send_as_task", 140).await;
    assert_ne!(first["sys_id"], second["sys_id"]);
    let link = w
        .storage
        .link_for_ticket("halo", 140)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(link.remote_id, second["sys_id"].as_str().unwrap());
    assert_eq!(link.remote_table, "sc_task");
    assert!(
        w.storage
            .link_for_record("customers/12", first["sys_id"].as_str().unwrap())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn log_to_supplier_sends_skips_or_refuses() {
    let w = World::new().await;
    w.halo.insert_supplier(
        json!({"id": 7, "name": "Vendor", "email_address": "desk@vendor.example"}),
    );
    w.halo
        .insert_supplier(json!({"id": 8, "name": "Plain", "email_address": "plain@example"}));
    w.halo
        .insert_supplier(json!({"id": 9, "name": "Mute", "email_address": ""}));
    w.ticket(150, json!({"supplier_id": 7}));
    let out = w.send("supplier", 150).await;
    assert_eq!(out["skipped"], false);
    assert_eq!(w.vendor.records("incident").len(), 1);
    let link = w
        .storage
        .link_for_ticket("halo", 150)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(link.remote, "suppliers/7");

    w.ticket(151, json!({"supplier_id": 8}));
    let out = w.send("supplier", 151).await;
    assert_eq!(out["skipped"], true);
    assert!(
        out["reason"]
            .as_str()
            .unwrap()
            .contains("no ServiceNow connection")
    );

    w.ticket(152, json!({"supplier_id": 9}));
    let run = w.run("supplier", 152, json!({})).await;
    assert_eq!(run.summary.status, RunStatus::Failed);
    assert!(run.summary.error.unwrap().contains("no email address"));
    assert!(w.mute.records("incident").is_empty());
    assert_eq!(w.vendor.warnings(), Vec::<String>::new(), "nothing dropped");
}

#[tokio::test]
async fn a_private_note_is_a_work_note_and_a_public_one_a_comment() {
    let w = World::new().await;
    w.ticket(160, json!({}));
    let sent = w.send("send", 160).await;
    let sys_id = sent["sys_id"].as_str().unwrap();
    let run = w
        .run(
            "note",
            160,
            json!({"note": "Checked the disk", "private": true, "sync": true}),
        )
        .await;
    assert_eq!(
        run.steps[0].outputs.as_ref().unwrap()["field"],
        "work_notes"
    );
    w.run(
        "note",
        160,
        json!({"note": "We are on it", "private": false, "sync": true}),
    )
    .await;
    let journal = w.acme.journal(sys_id);
    assert_eq!(journal.len(), 2, "{journal:#?}");
    assert_eq!(journal[0]["element"], "work_notes");
    assert!(
        journal[0]["value"]
            .as_str()
            .unwrap()
            .starts_with("Checked the disk\n\n[Sent from Halo by haloflow ")
    );
    assert_eq!(journal[1]["element"], "comments");
    // Only the note: no other field of the record changed.
    let patches: Vec<Value> = w
        .acme
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| r.json().unwrap())
        .collect();
    assert!(
        patches.iter().all(|p| p.as_object().unwrap().len() == 1),
        "{patches:#?}"
    );

    // Without "Sync to ServiceNow", a customer's record gets nothing.
    let run = w
        .run(
            "note",
            160,
            json!({"note": "internal", "private": true, "sync": false}),
        )
        .await;
    assert_eq!(run.steps[0].outputs.as_ref().unwrap()["skipped"], true);
    assert_eq!(w.acme.journal(sys_id).len(), 2);

    // A supplier's record gets the update without the flag (the seed's "Email Supplier").
    w.halo.insert_supplier(
        json!({"id": 7, "name": "Vendor", "email_address": "desk@vendor.example"}),
    );
    w.ticket(161, json!({"supplier_id": 7}));
    let sent = w.send("supplier", 161).await;
    w.run(
        "note",
        161,
        json!({"note": "Any news?", "private": false, "sync": false}),
    )
    .await;
    assert_eq!(w.vendor.journal(sent["sys_id"].as_str().unwrap()).len(), 1);

    // A note that came from ServiceNow is not sent back.
    let run = w
        .run("note", 160, json!({"note": "[ServiceNow INC0010001 comment by abel]\nhi", "private": false, "sync": true}))
        .await;
    assert_eq!(run.steps[0].outputs.as_ref().unwrap()["skipped"], true);
    assert_eq!(w.acme.journal(sys_id).len(), 2);

    // No link: a clear error.
    w.ticket(162, json!({}));
    let run = w
        .run(
            "note",
            162,
            json!({"note": "x", "private": true, "sync": true}),
        )
        .await;
    assert_eq!(run.summary.status, RunStatus::Failed);
    assert!(
        run.summary
            .error
            .unwrap()
            .contains("not linked to a ServiceNow record")
    );
    assert_eq!(w.acme.warnings(), Vec::<String>::new(), "nothing dropped");
    assert_eq!(w.vendor.warnings(), Vec::<String>::new(), "nothing dropped");
}

#[tokio::test]
async fn a_lost_answer_still_leaves_exactly_one_record_and_one_note() {
    let w = World::new().await;
    let reset = haloflow_emulators::Fault::ResetAfterProcessing;
    w.acme
        .inject("POST", "/api/now/table/incident", reset.clone(), 1);
    w.ticket(170, json!({}));
    let run = w.run("send", 170, json!({})).await;
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!(w.acme.records("incident").len(), 1);
    let outcomes: Vec<_> = run.steps[0].attempt_log.iter().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes,
        [
            haloflow::storage::AttemptOutcome::Failed,
            haloflow::storage::AttemptOutcome::Adopted
        ]
    );
    let sys_id = run.steps[0].outputs.as_ref().unwrap()["sys_id"]
        .as_str()
        .unwrap()
        .to_owned();
    w.acme.inject("PATCH", "/api/now/table/incident", reset, 1);
    let run = w
        .run(
            "note",
            170,
            json!({"note": "once", "private": true, "sync": true}),
        )
        .await;
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!(w.acme.journal(&sys_id).len(), 1);
}

#[tokio::test]
async fn a_link_write_that_fails_once_is_retried_and_the_record_adopted() {
    let w = World::new().await;
    // The database refuses the link while the step is on its first attempt: a passing hiccup.
    let db = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        w._dir
            .path()
            .join(haloflow::internals::storage::DATABASE_FILE)
            .display()
    ))
    .await
    .unwrap();
    sqlx::query(
        "CREATE TRIGGER hiccup BEFORE INSERT ON links
         WHEN (SELECT max(attempts) FROM step_runs) < 2
         BEGIN SELECT RAISE(ABORT, 'database is locked'); END",
    )
    .execute(&db)
    .await
    .unwrap();
    w.ticket(175, json!({}));
    let run = w.run("send", 175, json!({})).await;
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    let attempts = &run.steps[0].attempt_log;
    assert_eq!(attempts[0].error_code.as_deref(), Some("storage_error"));
    assert_eq!(
        attempts[1].outcome,
        haloflow::storage::AttemptOutcome::Adopted
    );
    assert_eq!(w.acme.records("incident").len(), 1, "not created twice");
    let link = w.storage.link_for_ticket("halo", 175).await.unwrap();
    assert!(link.is_some());
}

#[tokio::test]
async fn oauth_tokens_are_cached_and_an_expired_one_is_refreshed_once() {
    let w = World::new().await;
    w.ticket(180, json!({"client_id": 13}));
    w.ticket(181, json!({"client_id": 13}));
    w.send("send", 180).await;
    assert_eq!(w.globex.tokens_issued(), 1);
    w.globex.revoke_tokens();
    w.send("send", 181).await;
    assert_eq!(w.globex.tokens_issued(), 2, "one refresh after the 401");
    assert_eq!(w.globex.records("incident").len(), 2);
    let bearer = w
        .globex
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/api/now/table/incident"))
        .all(|r| r.headers["authorization"].starts_with("Bearer "));
    assert!(bearer);
    let history =
        serde_json::to_string(&w.storage.list_runs(&Default::default()).await.unwrap()).unwrap();
    for secret in [GLOBEX_SECRET, ACME_PASSWORD, HALO_SECRET] {
        assert!(!history.contains(secret));
    }
}

#[tokio::test]
async fn connections_check_reports_each_connection_and_a_short_token_lifespan() {
    let halo = HaloEmulator::new(HaloEmulatorConfig {
        client_id: "haloflow".into(),
        client_secret: HALO_SECRET.into(),
        tenant: None,
        token_lifetime_secs: 3600,
    });
    let halo_running = halo.start().await.unwrap();
    let short = ServiceNowEmulator::new(ServiceNowEmulatorConfig {
        username: "u".into(),
        password: "p".into(),
        oauth_client_id: Some("c".into()),
        oauth_client_secret: Some(GLOBEX_SECRET.into()),
        token_lifetime_secs: 600,
        oauth_user: "oauth.app".into(),
    });
    let short_running = short.start().await.unwrap();
    short.insert_record("incident", json!({"short_description": "a sample"}));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("haloflow.toml");
    std::fs::write(
        &config,
        format!(
            "[halo.halo]\nbase_url = \"{}\"\nclient_id = \"haloflow\"\nclient_secret_name = \"HALO_SECRET\"\n\
             [secrets]\nHALO_SECRET = \"{HALO_SECRET}\"\nSHORT_SECRET = \"{GLOBEX_SECRET}\"\nWRONG = \"nope\"\nRIGHT = \"p\"\n\
             [servicenow.customers.1]\ninstance_url = \"{}\"\nauth = \"oauth\"\nclient_id = \"c\"\nclient_secret_name = \"SHORT_SECRET\"\n\
             [servicenow.customers.2]\ninstance_url = \"{}\"\nauth = \"basic\"\nusername = \"u\"\npassword_secret_name = \"WRONG\"\n\
             [servicenow.customers.3]\ninstance_url = \"{}\"\nauth = \"basic\"\nusername = \"u\"\npassword_secret_name = \"RIGHT\"\njournal = \"sys_journal_field\"\n\
             integrator = {{ filter = {{ incident = \"active=true^asignment_group=x\" }} }}\n",
            halo_running.base_url(),
            short_running.base_url(),
            short_running.base_url(),
            short_running.base_url()
        ),
    )
    .unwrap();
    let mut out = Vec::new();
    let ok = haloflow::commands::connections_check(Some(&config), &mut out)
        .await
        .unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(!ok, "{out}");
    assert!(out.contains("[halo.halo]: ok"), "{out}");
    assert!(
        out.contains("[servicenow.customers.\"1\"]: ok (OAuth token lifespan 600 s)"),
        "{out}"
    );
    assert!(out.contains("at least 1800 s"), "{out}");
    // Each connection names its note path; sys_journal_field without audit_viewer is flagged
    // (the instance hides the rows rather than failing).
    assert!(
        out.contains("notes are read from the display values of work_notes and comments"),
        "{out}"
    );
    assert!(
        out.contains(
            "[servicenow.customers.\"3\"]: ok\n  notes: notes are read from sys_journal_field"
        ),
        "{out}"
    );
    assert!(out.contains("without the audit_viewer role"), "{out}");
    // A misspelt filter field would be ignored by the instance: named before it matters.
    assert!(
        out.contains("integrator.filter.incident: `asignment_group` is not a field of incident"),
        "{out}"
    );
    assert!(!out.contains("`active`"), "{out}");
    assert!(
        out.contains("[servicenow.customers.\"2\"]: failed: GET"),
        "{out}"
    );
    assert!(out.contains("401"), "{out}");
    assert!(
        !out.contains(GLOBEX_SECRET) && !out.contains("nope"),
        "{out}"
    );
}

#[tokio::test]
async fn a_ticket_that_came_from_servicenow_is_not_sent_back_as_a_new_record() {
    let w = World::new().await;
    // Sync back created ticket 130 from an Acme incident, and linked them.
    let sys_id = w.acme.insert_as(
        "abel.tuter",
        "incident",
        json!({"short_description": "From the portal"}),
    );
    let id = w.ticket(130, json!({}));
    w.storage
        .save_link(&haloflow::storage::Link {
            ticket_connection: "halo".into(),
            ticket_id: id,
            remote: "customers/12".into(),
            remote_table: "incident".into(),
            remote_id: sys_id.clone(),
            number: Some("INC0010001".into()),
            created_by: LinkOrigin::Remote,
            created_at_ms: 1,
            updated_at_ms: 1,
        })
        .await
        .unwrap();
    let out = w.send("send", id).await;
    assert_eq!(out["skipped"], true, "{out:#}");
    assert!(
        out["reason"]
            .as_str()
            .unwrap()
            .contains("came from ServiceNow"),
        "{out:#}"
    );
    assert_eq!(out["sys_id"], sys_id.as_str());
    assert_eq!(w.acme.records("incident").len(), 1, "no new record");
    let link = w
        .storage
        .link_for_ticket("halo", id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(link.created_by, LinkOrigin::Remote, "the link is kept");
}

#[tokio::test]
async fn a_problem_pages_through_its_children_and_checks_each_ones_parent() {
    let w = World::new().await;
    // An older Halo that ignores parent_id lists every ticket; a page holds at most 100.
    w.halo.ignore_parent_id_filter();
    w.ticket(200, json!({"tickettype_id": 4}));
    w.ticket(201, json!({"summary": "not a child"}));
    for id in 300..405 {
        w.ticket(id, json!({"parent_id": 200}));
    }
    let out = w.send("send", 200).await;
    assert_eq!(out["children"].as_array().unwrap().len(), 105, "{out:#?}");
    assert_eq!(w.acme.records("incident").len(), 105);
    assert!(
        w.storage
            .link_for_ticket("halo", 201)
            .await
            .unwrap()
            .is_none(),
        "a ticket of another parent is not sent"
    );
}
