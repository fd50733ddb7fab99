//! Sync back from ServiceNow: the webhook into haloflow and the integrator, against a Halo
//! emulator and ServiceNow emulators, through the real router and a real SQLite file.

use std::sync::Arc;

use base64::Engine as _;
use haloflow::engine::Engine;
use haloflow::secrets::SecretStore;
use haloflow::servicenow::sync::NamedRecord;
use haloflow::servicenow::{ServiceNowConnections, ServiceNowEngine};
use haloflow::storage::{
    LeaseStore, LinkOrigin, LinkStore, NewRequest, NewRun, RequestFilter, RunStatus, RunStore,
    SqliteStorage, SyncStore,
};
use haloflow::trigger::{TriggerEvent, TriggerType, Webhook};
use haloflow_emulators::RunningEmulator;
use haloflow_emulators::halo::{HaloEmulator, HaloEmulatorConfig};
use haloflow_emulators::servicenow::{ServiceNowEmulator, ServiceNowEmulatorConfig};
use haloflow_emulators::{Fault, Hold};
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};

const HALO_SECRET: &str = "CS-halo-sb-11aa";
const ACME_PASSWORD: &str = "PW-acme-sb-22bb";
const VENDOR_PASSWORD: &str = "PW-vendor-sb-33cc";
const HOOK_SECRET: &str = "HOOK-acme-44dd";
const HMAC_KEY: &str = "HMAC-acme-55ee";
const VENDOR_HOOK: &str = "HOOK-vendor-66ff";
const GLOBEX_SECRET: &str = "CS-globex-sb-77aa";

struct World {
    base: String,
    /// The loopback admin listener (the API).
    api: String,
    engine: Engine,
    storage: Arc<SqliteStorage>,
    halo: HaloEmulator,
    acme: ServiceNowEmulator,
    vendor: ServiceNowEmulator,
    /// Customer 13, OAuth: its writes are stamped with the OAuth application user.
    globex: ServiceNowEmulator,
    client: reqwest::Client,
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

fn servicenow(user: &str, password: &str) -> ServiceNowEmulator {
    ServiceNowEmulator::new(ServiceNowEmulatorConfig {
        username: user.into(),
        password: password.into(),
        oauth_client_id: None,
        oauth_client_secret: None,
        token_lifetime_secs: 1800,
        oauth_user: "oauth.app".into(),
    })
}

/// Retry settings of the webhook's sync step: one attempt (a failure is the run's end).
const ONE_ATTEMPT: &str = "[retry.by_type.\"servicenow.sync_record\"]\nmax_attempts = 1\n";

/// Retry settings of the webhook's sync step: quick retries.
const QUICK_RETRIES: &str =
    "[retry.by_type.\"servicenow.sync_record\"]\ninitial_delay_ms = 20\nmax_delay_ms = 50\n";

impl World {
    async fn new(page_size: u32) -> World {
        World::with_config(page_size, "").await
    }

    /// A world whose config ends with `extra` (TOML tables).
    async fn with_config(page_size: u32, extra: &str) -> World {
        let halo = HaloEmulator::new(HaloEmulatorConfig {
            client_id: "haloflow".into(),
            client_secret: HALO_SECRET.into(),
            tenant: None,
            token_lifetime_secs: 3600,
        });
        let acme = servicenow("acme.integration", ACME_PASSWORD);
        // Acme's own field (the custom field mapping reads it).
        acme.add_field("task", "u_severity");
        let vendor = servicenow("vendor.integration", VENDOR_PASSWORD);
        let globex = ServiceNowEmulator::new(ServiceNowEmulatorConfig {
            username: "globex.admin".into(),
            password: "unused".into(),
            oauth_client_id: Some("globex-client".into()),
            oauth_client_secret: Some(GLOBEX_SECRET.into()),
            token_lifetime_secs: 1800,
            oauth_user: "globex.oauth".into(),
        });
        let running = vec![
            halo.start().await.unwrap(),
            acme.start().await.unwrap(),
            vendor.start().await.unwrap(),
            globex.start().await.unwrap(),
        ];
        let config = format!(
            r#"
[halo.halo]
base_url = "{halo}"
client_id = "haloflow"
client_secret_name = "HALO_SECRET"
rate_limit_requests = 0

[servicenow.customers.12]
instance_url = "{acme}"
auth = "basic"
username = "acme.integration"
password_secret_name = "ACME_PASSWORD"
imported_types = ["incident", "problem"]
status = [{{ halo = 1, servicenow = "1" }}, {{ halo = 2, servicenow = "2" }}, {{ halo = 9, servicenow = "6" }}]
category = [{{ halo = "Hardware", category = "hardware" }}]
impact = [{{ halo = 3, servicenow = "1" }}]
urgency = [{{ halo = 3, servicenow = "1" }}]
assignment_group = [{{ halo = "Service Desk", servicenow = "grp-sd" }}]
custom_fields = [{{ halo_field_id = 178, servicenow_field = "u_severity", values = {{ "1" = "sev-high" }} }}]
integrator = {{ enabled = true, every = "1d", page_size = {page_size}, max_attempts = 2, filter = {{ problem = "short_descriptionSTARTSWITHRoot" }} }}
webhook = {{ secret_name = "HOOK_SECRET", hmac_secret_name = "HMAC_KEY", ticket_type_id = 5, user_id = 77, site_id = 21, team = "Webhook Team" }}

[servicenow.suppliers.7]
instance_url = "{vendor}"
auth = "basic"
username = "vendor.integration"
password_secret_name = "VENDOR_PASSWORD"
journal = "sys_journal_field"
webhook = {{ secret_name = "VENDOR_HOOK", header = "X-Vendor-Key", sys_id_field = "id" }}

[servicenow.suppliers.8]
instance_url = "{vendor}"
auth = "basic"
username = "vendor.integration"
password_secret_name = "VENDOR_PASSWORD"
webhook = {{ secret_name = "VENDOR_HOOK", basic_username = "snhook", sys_id_field = "id" }}

[servicenow.customers.13]
instance_url = "{globex}"
auth = "oauth"
client_id = "globex-client"
client_secret_name = "GLOBEX_SECRET"
integration_user = "globex.oauth"
webhook = {{ secret_name = "HOOK_SECRET", ticket_type_id = 5 }}

{extra}
"#,
            halo = running[0].base_url(),
            acme = running[1].base_url(),
            vendor = running[2].base_url(),
            globex = running[3].base_url(),
        );
        let config = haloflow::bundled::integrations()
            .parse_config(&config)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(SqliteStorage::open_dir(dir.path()).await.unwrap());
        let engine = Engine::builder()
            .integrations(haloflow::bundled::integrations())
            .config(config)
            .secrets(SecretStore::from_values([
                ("HALO_SECRET", HALO_SECRET),
                ("ACME_PASSWORD", ACME_PASSWORD),
                ("VENDOR_PASSWORD", VENDOR_PASSWORD),
                ("HOOK_SECRET", HOOK_SECRET),
                ("HMAC_KEY", HMAC_KEY),
                ("VENDOR_HOOK", VENDOR_HOOK),
                ("GLOBEX_SECRET", GLOBEX_SECRET),
            ]))
            .storage(storage.clone())
            .build()
            .unwrap();
        let (base, api) = crate::common::serve(&engine).await;
        World {
            base,
            api,
            engine,
            storage,
            halo,
            acme,
            vendor,
            globex,
            client: reqwest::Client::new(),
            _running: running,
            _dir: dir,
        }
    }

    /// ServiceNow's webhook for a record of customer 12, signed, followed to its run's end.
    async fn acme_hook(&self, body: Value) -> (u16, Value) {
        let (status, answer) = self.acme_send(body).await;
        self.followed("customers/12", status, answer).await
    }

    /// ServiceNow's webhook for a record of customer 12, signed: the answer itself.
    async fn acme_send(&self, body: Value) -> (u16, Value) {
        let text = body.to_string();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(HMAC_KEY.as_bytes()).unwrap();
        mac.update(text.as_bytes());
        let signature =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        self.send(
            "customers/12",
            text,
            &[
                ("X-Haloflow-Secret", HOOK_SECRET),
                ("X-Haloflow-Signature", &signature),
            ],
        )
        .await
    }

    /// Posts a webhook, followed to its run's end.
    async fn post(&self, connection: &str, body: String, headers: &[(&str, &str)]) -> (u16, Value) {
        let (status, answer) = self.send(connection, body, headers).await;
        self.followed(connection, status, answer).await
    }

    /// Posts a webhook: the answer itself.
    async fn send(&self, connection: &str, body: String, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut request = self
            .client
            .post(format!("{}/servicenow/{connection}/webhook", self.base))
            .header("Content-Type", "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// An accepted webhook (202, naming its run) followed to its run's end; a refused one as
    /// it was answered.
    async fn followed(&self, connection: &str, status: u16, answer: Value) -> (u16, Value) {
        if status != 202 {
            return (status, answer);
        }
        let flow_id = format!("servicenow:{connection}");
        assert_eq!(answer["flow_id"], flow_id, "{answer}");
        self.outcome(&answer).await
    }

    /// The run an accepted webhook's answer names, once it finished.
    async fn run(&self, answer: &Value) -> haloflow::storage::RunDetail {
        let run_ids = answer["run_ids"].as_array().unwrap();
        assert_eq!(run_ids.len(), 1, "one run per webhook: {answer}");
        let run_id = run_ids[0].as_str().unwrap();
        self.engine.wait_for_run(run_id).await.unwrap()
    }

    /// What the run an accepted webhook's answer names did, once it finished, as the webhook
    /// answered when it synced on the request path: 200 with the sync's outcome, or 502 with
    /// the error; with the request's id.
    async fn outcome(&self, answer: &Value) -> (u16, Value) {
        let run = self.run(answer).await;
        let (status, mut outcome) = match run.summary.status {
            RunStatus::Succeeded => (200, run.steps.last().unwrap().outputs.clone().unwrap()),
            _ => (502, json!({"error": run.summary.error})),
        };
        outcome["request_id"] = answer["request_id"].clone();
        (status, outcome)
    }

    /// The sync's outputs of a webhook for incident `sys_id` whose run succeeded on its second
    /// attempt.
    async fn synced_on_second_attempt(&self, sys_id: &str) -> Value {
        let (status, answer) = self
            .acme_send(json!({"table": "incident", "sys_id": sys_id}))
            .await;
        assert_eq!(status, 202, "{answer}");
        let run = self.run(&answer).await;
        assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
        assert_eq!(run.steps[0].attempts, 2, "{run:#?}");
        run.steps[0].outputs.clone().unwrap()
    }

    /// A GET on the admin listener (the API).
    async fn get(&self, path: &str) -> Value {
        let url = format!("{}{path}", self.api);
        let response = self.client.get(url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        response.json().await.unwrap()
    }

    async fn scan(&self) -> haloflow::servicenow::integrator::ScanReport {
        let acme = self
            .engine
            .connections()
            .servicenow(haloflow::servicenow::Side::Customer, "12")
            .unwrap();
        self.engine
            .sync_back()
            .scan(&acme, haloflow::internals::storage::now_ms() - 3_600_000)
            .await
            .unwrap()
    }

    fn incident(&self, fields: Value) -> String {
        let mut record = json!({"short_description": "Printer on fire", "description": "Level 3",
                                "state": "2", "impact": "1", "urgency": "1", "category": "hardware",
                                "assignment_group": "grp-sd", "u_severity": "sev-high"});
        for (k, v) in fields.as_object().unwrap() {
            record[k] = v.clone();
        }
        self.acme.insert_as("abel.tuter", "incident", record)
    }
}

#[tokio::test]
async fn a_new_incident_becomes_one_ticket_with_the_configured_attributes() {
    let w = World::new(100).await;
    let sys_id = w.incident(json!({}));
    let (status, answer) = w
        .acme_hook(json!({"table": "incident", "sys_id": sys_id}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["action"], "created_ticket");
    let tickets = w.halo.tickets();
    assert_eq!(tickets.len(), 1);
    let t = &tickets[0];
    assert_eq!(t["summary"], "Printer on fire");
    assert_eq!(t["details"], "Level 3");
    assert_eq!(t["tickettype_id"], 5);
    assert_eq!(t["user_id"], 77);
    assert_eq!(
        t["site_id"], 21,
        "Halo requires a site whenever a user is set"
    );
    assert_eq!(t["client_id"], 12);
    assert_eq!(
        t["team"], "Webhook Team",
        "the webhook team wins over the mapped group"
    );
    assert_eq!(t["status_id"], 2);
    assert_eq!(t["impact"], 3);
    assert_eq!(t["urgency"], 3);
    assert_eq!(t["category_1"], "Hardware");
    assert_eq!(t["customfields"][0]["value"], "1");
    let link = w
        .storage
        .link_for_record("customers/12", &sys_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(link.created_by, LinkOrigin::Remote);
    assert_eq!(Some(link.ticket_id), t["id"].as_i64());

    // Delivered twice: still one ticket.
    let (status, again) = w
        .acme_hook(json!({"table": "incident", "sys_id": sys_id}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(again["action"], "duplicate");
    assert_eq!(w.halo.tickets().len(), 1);
    // Both are in the history with what they did.
    let requests = w
        .storage
        .list_requests(&RequestFilter::default())
        .await
        .unwrap();
    assert_eq!(requests.len(), 2);
    assert!(
        requests
            .iter()
            .all(|r| r.flow_id == "servicenow:customers/12")
    );
    assert!(
        requests
            .iter()
            .any(|r| r.outcome.as_ref().unwrap()["action"] == "created_ticket")
    );
}

#[tokio::test]
async fn notes_become_actions_once_and_our_own_echo_is_ignored() {
    let w = World::new(100).await;
    let sys_id = w.incident(json!({}));
    w.acme_hook(json!({"table": "incident", "sys_id": sys_id}))
        .await;
    let ticket_id = w.halo.tickets()[0]["id"].as_i64().unwrap();
    w.acme.update_as(
        "abel.tuter",
        "incident",
        &sys_id,
        json!({"work_notes": "Checked the cabling"}),
    );
    w.acme.update_as(
        "abel.tuter",
        "incident",
        &sys_id,
        json!({"comments": "We are on our way"}),
    );
    // haloflow's own note (its marker, by its integration user) comes back in the journal.
    w.acme.update_as(
        "acme.integration",
        "incident",
        &sys_id,
        json!({"work_notes": "From Halo\n\n[Sent from Halo by haloflow 0123456789abcdef]"}),
    );
    // The same text by a person is not an echo.
    w.acme.update_as(
        "beth.anglin",
        "incident",
        &sys_id,
        json!({"comments": "Pasted: [Sent from Halo by haloflow 0123456789abcdef]"}),
    );
    let (_, answer) = w
        .acme_hook(json!({"number": "x", "table": "incident", "sys_id": sys_id}))
        .await;
    assert_eq!(answer["notes"], 3, "{answer}");
    let actions = w.halo.actions();
    assert_eq!(actions.len(), 3, "{actions:#?}");
    assert!(actions.iter().all(|a| a["ticket_id"] == ticket_id));
    // Entries of one second come in no particular order: find each by its text.
    let find = |text: &str| {
        actions
            .iter()
            .find(|a| a["note"].as_str().unwrap().ends_with(text))
            .unwrap_or_else(|| panic!("no action ending {text:?}: {actions:#?}"))
    };
    let work_note = find("work note by abel.tuter]\nChecked the cabling");
    assert_eq!(work_note["hiddenfromuser"], true, "a work note is private");
    let comment = find("comment by abel.tuter]\nWe are on our way");
    assert_eq!(comment["hiddenfromuser"], false, "a comment is public");
    find("comment by beth.anglin]\nPasted: [Sent from Halo by haloflow 0123456789abcdef]");
    // Once: the integrator and a re-sent webhook add nothing.
    w.scan().await;
    let (_, again) = w
        .acme_hook(json!({"table": "incident", "sys_id": sys_id}))
        .await;
    assert_eq!(again["action"], "duplicate");
    assert_eq!(w.halo.actions().len(), 3);
}

#[tokio::test]
async fn supplier_webhooks_never_create_tickets_and_bad_signatures_are_refused() {
    let w = World::new(100).await;
    let sys_id = w.vendor.insert_as(
        "vendor.agent",
        "incident",
        json!({"short_description": "x"}),
    );
    let (status, answer) = w
        .post(
            "suppliers/7",
            json!({"table": "incident", "id": sys_id}).to_string(),
            &[("X-Vendor-Key", VENDOR_HOOK)],
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["action"], "ignored");
    assert!(
        answer["reason"]
            .as_str()
            .unwrap()
            .contains("only update tickets already linked")
    );
    assert!(w.halo.tickets().is_empty());
    let (status, _) = w
        .post(
            "suppliers/7",
            json!({"table": "incident", "id": sys_id}).to_string(),
            &[("X-Vendor-Key", "wrong")],
        )
        .await;
    assert_eq!(status, 401);

    // Customer 12: the right secret but a signature over another body.
    let body = json!({"table": "incident", "sys_id": "abc"}).to_string();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(HMAC_KEY.as_bytes()).unwrap();
    mac.update(b"{\"table\":\"incident\",\"sys_id\":\"other\"}");
    let wrong = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let (status, error) = w
        .post(
            "customers/12",
            body,
            &[
                ("X-Haloflow-Secret", HOOK_SECRET),
                ("X-Haloflow-Signature", &wrong),
            ],
        )
        .await;
    assert_eq!(status, 401, "{error}");
    assert_eq!(error["error"]["code"], "invalid_auth");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the webhook was not accepted"),
        "the reason is logged, not told: {error}"
    );
    assert!(
        w.acme.requests().is_empty(),
        "nothing was read for a refused webhook"
    );
    let (status, _) = w.acme_hook(json!({"table": "incident"})).await;
    assert_eq!(status, 400, "a body that names no record");
    // Values go into an encoded query: anything but a sys_id is refused, not queried.
    let (status, error) = w
        .acme_hook(json!({"table": "incident", "sys_id": "x^ORactive=true"}))
        .await;
    assert_eq!(status, 400, "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("`sys_id`")
    );
    assert!(w.acme.requests().is_empty());
}

#[tokio::test]
async fn the_integrator_creates_what_missed_webhooks_should_have_and_then_nothing() {
    let w = World::new(100).await;
    let seen = w.incident(json!({"short_description": "Seen by a webhook"}));
    w.acme_hook(json!({"table": "incident", "sys_id": seen}))
        .await;
    let missed = w.incident(json!({"short_description": "Webhook lost"}));
    w.acme.update_as(
        "abel.tuter",
        "incident",
        &missed,
        json!({"work_notes": "Lost note"}),
    );
    let problem = w.acme.insert_as(
        "abel.tuter",
        "problem",
        json!({"short_description": "Root cause"}),
    );
    // Not an imported type: left alone.
    w.acme.insert_as(
        "abel.tuter",
        "change_request",
        json!({"short_description": "Change"}),
    );

    let report = w.scan().await;
    assert_eq!(report.created, 2, "{report:#?}");
    assert!(report.errors.is_empty(), "{report:#?}");
    let summaries: Vec<String> = w
        .halo
        .tickets()
        .iter()
        .map(|t| t["summary"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        summaries,
        ["Seen by a webhook", "Webhook lost", "Root cause"]
    );
    assert_eq!(w.halo.actions().len(), 1, "the lost note too");
    assert!(
        w.storage
            .link_for_record("customers/12", &problem)
            .await
            .unwrap()
            .is_some()
    );

    // A second scan, and webhooks after it, change nothing.
    let again = w.scan().await;
    assert_eq!(
        (again.created, again.updated, again.notes),
        (0, 0, 0),
        "{again:#?}"
    );
    w.acme_hook(json!({"table": "incident", "sys_id": missed}))
        .await;
    assert_eq!(w.halo.tickets().len(), 3);
    assert_eq!(w.halo.actions().len(), 1);
    let scans: Value = w
        .client
        .get(format!("{}/api/integrator", w.api))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(scans["scans"][0]["connection"], "customers/12");
    let metrics = w
        .client
        .get(format!("{}/metrics", w.api))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "haloflow_integrator_last_scan_timestamp_seconds{connection=\"customers/12\"}"
        )
    );
}

#[tokio::test]
async fn links_are_listed_newest_first_page_by_page_behind_the_api_guard() {
    let w = World::new(100).await;
    for (ticket, remote, at) in [
        (1, "customers/12", 10),
        (2, "suppliers/7", 20),
        (3, "customers/12", 30),
    ] {
        w.storage
            .save_link(&haloflow::storage::Link {
                ticket_connection: "halo".into(),
                ticket_id: ticket,
                remote: remote.into(),
                remote_table: "incident".into(),
                remote_id: format!("rec-{ticket}"),
                number: None,
                created_by: LinkOrigin::Ticket,
                created_at_ms: at,
                updated_at_ms: at,
            })
            .await
            .unwrap();
    }
    let get = |base: &str, query: &[(&str, &str)]| {
        let request = (w.client.get(format!("{base}/api/servicenow/links"))).query(query);
        async move {
            let response = request.send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let tickets = |page: &Value| -> Vec<i64> {
        let links = page["links"].as_array().unwrap().iter();
        links.map(|l| l["ticket_id"].as_i64().unwrap()).collect()
    };
    let (status, first) = get(&w.api, &[("limit", "2")]).await;
    assert_eq!((status, tickets(&first)), (200, vec![3, 2]), "{first}");
    assert_eq!(first["links"][0]["remote_id"], "rec-3");
    assert_eq!(first["links"][0]["created_by"], "ticket");
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = get(&w.api, &[("limit", "2"), ("before", cursor)]).await;
    assert_eq!(tickets(&second), vec![1], "{second}");
    assert!(second["next_cursor"].is_null(), "the last page: {second}");
    let (_, supplier) = get(&w.api, &[("remote", "suppliers/7")]).await;
    assert_eq!(tickets(&supplier), vec![2], "{supplier}");
    let (_, ticket) = get(&w.api, &[("ticket", "3")]).await;
    assert_eq!(tickets(&ticket), vec![3], "{ticket}");
    for bad in [("ticket", "three"), ("before", "banana"), ("limit", "0")] {
        let (status, error) = get(&w.api, &[bad]).await;
        assert_eq!(status, 400, "{bad:?}: {error}");
        assert_eq!(error["error"]["code"], "invalid_query");
    }
    // Without [server.api] credentials the API is only on the admin listener.
    let public = w.client.get(format!("{}/api/servicenow/links", w.base));
    assert_eq!(public.send().await.unwrap().status().as_u16(), 404);
}

#[tokio::test]
async fn field_changes_come_back_only_for_links_halo_created() {
    let w = World::new(100).await;
    // A ticket Halo sent: linked with created_by = halo.
    let from_halo = w
        .halo
        .insert_ticket(json!({"summary": "From Halo", "status_id": 1, "client_id": 12}));
    let record = w.incident(json!({"state": "1", "correlation_id": "HALO-x"}));
    w.storage
        .save_link(&haloflow::storage::Link {
            ticket_connection: "halo".into(),
            ticket_id: from_halo,
            remote: "customers/12".into(),
            remote_table: "incident".into(),
            remote_id: record.clone(),
            number: None,
            created_by: LinkOrigin::Ticket,
            created_at_ms: 1,
            updated_at_ms: 1,
        })
        .await
        .unwrap();
    // A ticket ServiceNow created (through the webhook).
    let from_sn = w.incident(json!({"state": "1"}));
    w.acme_hook(json!({"table": "incident", "sys_id": from_sn}))
        .await;
    let sn_ticket = w
        .storage
        .link_for_record("customers/12", &from_sn)
        .await
        .unwrap()
        .unwrap()
        .ticket_id;

    w.acme
        .update_as("abel.tuter", "incident", &record, json!({"state": "6"}));
    w.acme
        .update_as("abel.tuter", "incident", &from_sn, json!({"state": "6"}));
    let report = w.scan().await;
    assert_eq!(report.updated, 1, "{report:#?}");
    assert_eq!(
        w.halo.ticket(from_halo).unwrap()["status_id"],
        9,
        "Resolved maps back to 9"
    );
    assert_eq!(
        w.halo.ticket(sn_ticket).unwrap()["status_id"],
        1,
        "not synced back"
    );
}

#[tokio::test]
async fn same_second_updates_across_pages_lose_none() {
    // Pages of two: five records created within a second or two share their stamps.
    let w = World::new(2).await;
    let ids: Vec<String> = (0..5)
        .map(|i| w.incident(json!({"short_description": format!("Burst {i}")})))
        .collect();
    let report = w.scan().await;
    assert_eq!(report.created, 5, "{report:#?}");
    assert_eq!(w.halo.tickets().len(), 5);
    for id in &ids {
        assert!(
            w.storage
                .link_for_record("customers/12", id)
                .await
                .unwrap()
                .is_some()
        );
    }
    // The watermark kept its second: a record updated in it later is still found.
    let late = w.incident(json!({"short_description": "Late"}));
    let report = w.scan().await;
    assert_eq!(report.created, 1, "{report:#?}");
    assert!(
        w.storage
            .link_for_record("customers/12", &late)
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn a_failed_scan_resumes_without_duplicates_and_runs_on_one_node_at_a_time() {
    let w = World::new(2).await;
    for i in 0..4 {
        w.incident(json!({"short_description": format!("Record {i}")}));
    }
    // Halo refuses the first ticket: the scan stops there, the watermark before it.
    w.halo.fail_next("POST", "/api/Tickets", 400, 1, None);
    let acme = w
        .engine
        .connections()
        .servicenow(haloflow::servicenow::Side::Customer, "12")
        .unwrap();
    let first = w.scan().await;
    assert_eq!(first.created, 0, "{first:#?}");
    assert_eq!(first.errors.len(), 1, "{first:#?}");
    let second = w.scan().await;
    assert_eq!(second.created, 4, "{second:#?}");
    assert!(second.errors.is_empty());
    assert_eq!(w.halo.tickets().len(), 4, "no duplicates after the repeat");

    // Another node holds the integrator lease: this one does not scan.
    let now = haloflow::internals::storage::now_ms();
    assert!(
        w.storage
            .try_lease("integrator:customers/12", "other-node", now + 60_000, now)
            .await
            .unwrap()
    );
    let skipped = w
        .engine
        .run_integrator(&acme, std::time::Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(skipped.is_none());
}

#[tokio::test]
async fn a_ticket_whose_answer_was_lost_is_adopted_not_created_twice() {
    // One attempt: the run ends with the lost answer, as the request path's 502 did.
    let w = World::with_config(100, ONE_ATTEMPT).await;
    let sys_id = w.incident(json!({}));
    w.halo.inject(
        "POST",
        "/api/Tickets",
        haloflow_emulators::Fault::ResetAfterProcessing,
        1,
    );
    let (status, answer) = w
        .acme_hook(json!({"table": "incident", "sys_id": sys_id}))
        .await;
    assert_eq!(status, 502, "{answer}");
    assert_eq!(
        w.halo.tickets().len(),
        1,
        "Halo made it; the answer was lost"
    );
    // ServiceNow sends it again (or the integrator finds it): the ticket is adopted.
    let (status, answer) = w
        .acme_hook(json!({"table": "incident", "sys_id": sys_id}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["action"], "created_ticket");
    assert_eq!(w.halo.tickets().len(), 1);
    let link = w
        .storage
        .link_for_record("customers/12", &sys_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(Some(link.ticket_id), w.halo.tickets()[0]["id"].as_i64());
}

#[tokio::test]
async fn a_note_in_the_webhook_body_syncs_once_without_audit_viewer() {
    let w = World::new(100).await;
    // The integration user has itil only, and lives two hours east of UTC.
    w.acme.set_time_zone_offset(120);
    w.acme.insert_record(
        "sys_user",
        json!({"user_name": "abel.tuter", "name": "Abel Tuter"}),
    );
    let sys_id = w.incident(json!({}));
    w.acme_hook(json!({"table": "incident", "sys_id": sys_id}))
        .await;
    w.acme.update_as(
        "abel.tuter",
        "incident",
        &sys_id,
        json!({"work_notes": "Replaced the toner\n\nTested twice"}),
    );
    // The business rule on sys_journal_field posts the row (Halo's ServiceNowAction shape).
    let mut row = w.acme.journal(&sys_id).pop().unwrap();
    row["sys_tags"] = json!("");
    let (status, answer) = w.acme_hook(row).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["notes"], 1, "{answer}");
    let actions = w.halo.actions();
    assert_eq!(actions.len(), 1, "{actions:#?}");
    assert!(
        actions[0]["note"]
            .as_str()
            .unwrap()
            .ends_with("work note by abel.tuter]\nReplaced the toner\n\nTested twice"),
        "{actions:#?}"
    );
    // The scan reads the same note from the display values (in the user's time zone, by
    // the user's full name): it is the same note, not a new one.
    let report = w.scan().await;
    assert!(report.errors.is_empty(), "{report:#?}");
    assert_eq!(w.halo.actions().len(), 1, "{:#?}", w.halo.actions());
    // A later note comes back by the display values alone.
    w.acme.update_as(
        "abel.tuter",
        "incident",
        &sys_id,
        json!({"comments": "Fixed for good"}),
    );
    w.scan().await;
    let actions = w.halo.actions();
    assert_eq!(actions.len(), 2);
    assert!(
        actions[1]["note"]
            .as_str()
            .unwrap()
            .ends_with("comment by Abel Tuter]\nFixed for good")
    );
    assert!(
        w.acme
            .requests()
            .iter()
            .all(|r| r.path != "/api/now/table/sys_journal_field"),
        "sys_journal_field is not read without the role"
    );
}

#[tokio::test]
async fn our_own_notes_written_with_an_oauth_token_are_not_synced_back() {
    let w = World::new(100).await;
    // The application registry's OAuth Application User, as the instance shows it.
    w.globex.insert_record(
        "sys_user",
        json!({"user_name": "globex.oauth", "name": "Globex Integration"}),
    );
    let sys_id = w.globex.insert_as(
        "abel.tuter",
        "incident",
        json!({"short_description": "VPN down"}),
    );
    let hook = |body: Value| {
        w.post(
            "customers/13",
            body.to_string(),
            &[("X-Haloflow-Secret", HOOK_SECRET)],
        )
    };
    let (status, answer) = hook(json!({"table": "incident", "sys_id": sys_id})).await;
    assert_eq!(answer["action"], "created_ticket", "{status} {answer}");
    // haloflow writes a note through the API with its token (as servicenow.sync_note does).
    let globex = w
        .engine
        .connections()
        .servicenow(haloflow::servicenow::Side::Customer, "13")
        .unwrap();
    let http = haloflow::outbound::Outbound::live(w.client.clone());
    globex
        .patch(
            &http,
            "incident",
            &sys_id,
            json!({"work_notes": "From Halo\n\n[Sent from Halo by haloflow 0123456789abcdef]"}),
        )
        .await
        .unwrap();
    let journal = w.globex.journal(&sys_id);
    assert_eq!(journal[0]["sys_created_by"], "globex.oauth");
    let (_, answer) = hook(json!({"table": "incident", "sys_id": sys_id})).await;
    assert_eq!(answer["notes"], 0, "our own note is an echo: {answer}");
    assert!(w.halo.actions().is_empty(), "{:#?}", w.halo.actions());
}

#[test]
fn oauth_sync_back_needs_the_oauth_application_user() {
    let config = |extra: &str| {
        haloflow::bundled::integrations().parse_config(&format!(
            "[servicenow.customers.13]\ninstance_url = \"https://globex.service-now.com\"\nauth = \"oauth\"\nclient_id = \"c\"\nclient_secret_name = \"S\"\nwebhook = {{ secret_name = \"H\" }}\n{extra}"
        ))
    };
    let error = config("").unwrap_err();
    assert!(
        error.starts_with("[servicenow.customers.\"13\"]") && error.contains("integration_user"),
        "{error}"
    );
    assert!(config("integration_user = \"globex.oauth\"\n").is_ok());
}

#[tokio::test]
async fn a_record_that_keeps_failing_is_recorded_and_skipped() {
    let w = World::new(100).await;
    for i in 0..3 {
        w.incident(json!({"short_description": format!("Record {i}")}));
    }
    // Halo refuses the first record scanned twice: max_attempts = 2. Three 400s: the second
    // scan's token is cached, and a 400 to a cached token gets one fresh token first.
    w.halo.fail_next("POST", "/api/Tickets", 400, 3, None);
    let first = w.scan().await;
    assert_eq!((first.created, first.errors.len()), (0, 1), "{first:#?}");
    assert!(first.errors[0].contains("attempt 1 of 2"), "{first:#?}");
    let second = w.scan().await;
    assert_eq!(second.created, 2, "the scan goes on past it: {second:#?}");
    assert_eq!(second.skipped.len(), 1, "{second:#?}");
    let failures = w.storage.sync_failures("customers/12").await.unwrap();
    assert_eq!(failures.len(), 1);
    let stuck = failures[0].record_id.clone();
    assert_eq!(failures[0].attempts, 2);
    assert!(second.skipped[0].contains(&stuck), "{second:#?}");
    assert!(
        w.storage
            .link_for_record("customers/12", &stuck)
            .await
            .unwrap()
            .is_none()
    );
    // When it changes, the next scan tries it again, and a success clears it.
    w.acme
        .update_as("abel.tuter", "incident", &stuck, json!({"state": "1"}));
    let third = w.scan().await;
    assert_eq!(third.created, 1, "{third:#?}");
    assert!(
        w.storage
            .sync_failures("customers/12")
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn the_integrator_creates_tickets_only_for_records_the_connection_selects() {
    let w = World::new(100).await;
    let acme = w
        .engine
        .connections()
        .servicenow(haloflow::servicenow::Side::Customer, "12")
        .unwrap();
    // In the instance before the integrator starts: never a ticket by default.
    let old = w.incident(json!({"short_description": "Years old"}));
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let every = std::time::Duration::from_secs(3600);
    let report = w
        .engine
        .run_integrator(&acme, every)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((report.created, report.ignored), (0, 1), "{report:#?}");
    assert!(
        report.outcomes[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("before the integrator started"),
        "{report:#?}"
    );
    // Created since: a ticket, when the table's filter selects it.
    let new = w.incident(json!({"short_description": "New"}));
    w.acme.insert_as(
        "abel.tuter",
        "problem",
        json!({"short_description": "Unrelated problem"}),
    );
    let root = w.acme.insert_as(
        "abel.tuter",
        "problem",
        json!({"short_description": "Root cause"}),
    );
    let report = w
        .engine
        .run_integrator(&acme, every)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.created, 2, "{report:#?}");
    for (sys_id, linked) in [(&old, false), (&new, true), (&root, true)] {
        assert_eq!(
            w.storage
                .link_for_record("customers/12", sys_id)
                .await
                .unwrap()
                .is_some(),
            linked,
            "{report:#?}"
        );
    }
    assert!(
        report
            .outcomes
            .iter()
            .any(|o| o.reason.as_deref() == Some("not selected by integrator.filter.problem")),
        "{report:#?}"
    );
}

#[test]
fn creating_existing_records_needs_a_filter_for_every_imported_table() {
    let config = |integrator: &str| {
        haloflow::bundled::integrations().parse_config(&format!(
            "[servicenow.customers.12]\ninstance_url = \"https://acme.service-now.com\"\nauth = \"basic\"\nusername = \"u\"\npassword_secret_name = \"P\"\nimported_types = [\"incident\", \"task\"]\nintegrator = {{ enabled = true, {integrator} }}\n"
        ))
    };
    let error =
        config("create_existing = true, filter = { incident = \"active=true\" }").unwrap_err();
    assert!(
        error.contains(
            "[servicenow.customers.\"12\"].integrator.filter.sc_task: is missing; integrator.create_existing = true needs it"
        ),
        "{error}"
    );
    assert!(
        config("create_existing = true, filter = { incident = \"active=true\", sc_task = \"active=true\" }")
            .is_ok()
    );
    let error = config("filter = { incident = \"active=true^NQactive=false\" }").unwrap_err();
    assert!(error.contains("^NQ"), "{error}");
}

#[tokio::test]
async fn the_sys_journal_field_path_needs_audit_viewer() {
    let w = World::new(100).await;
    // A ticket Halo logged to the supplier: linked to the vendor's record.
    let ticket = w
        .halo
        .insert_ticket(json!({"summary": "Firewall", "status_id": 1, "client_id": 12}));
    let record = w.vendor.insert_as(
        "vendor.agent",
        "incident",
        json!({"short_description": "Firewall"}),
    );
    w.storage
        .save_link(&haloflow::storage::Link {
            ticket_connection: "halo".into(),
            ticket_id: ticket,
            remote: "suppliers/7".into(),
            remote_table: "incident".into(),
            remote_id: record.clone(),
            number: None,
            created_by: LinkOrigin::Ticket,
            created_at_ms: 1,
            updated_at_ms: 1,
        })
        .await
        .unwrap();
    let hook = || {
        w.post(
            "suppliers/7",
            json!({"table": "incident", "id": record}).to_string(),
            &[("X-Vendor-Key", VENDOR_HOOK)],
        )
    };
    w.vendor.update_as(
        "vendor.agent",
        "incident",
        &record,
        json!({"work_notes": "Rule added"}),
    );
    // Without the role the instance hides every row: nothing to sync, and no error.
    let (status, answer) = hook().await;
    assert_eq!((status, &answer["notes"]), (200, &json!(0)), "{answer}");
    w.vendor.grant_role("vendor.integration", "audit_viewer");
    w.vendor.update_as(
        "vendor.agent",
        "incident",
        &record,
        json!({"comments": "Done"}),
    );
    let (_, answer) = hook().await;
    assert_eq!(answer["notes"], 2, "{answer}");
    let notes: Vec<String> = w
        .halo
        .actions()
        .iter()
        .map(|a| a["note"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.ends_with("work note by vendor.agent]\nRule added")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.ends_with("comment by vendor.agent]\nDone")),
        "{notes:?}"
    );
}

/// Issue 17: an unknown id answers exactly as a known connection with wrong credentials (so
/// the answers do not list the customers and suppliers); the Basic scheme is matched in any
/// case; every rejection is counted in /metrics.
#[tokio::test]
async fn unknown_ids_answer_as_wrong_credentials_do_and_basic_is_case_insensitive() {
    let w = World::new(100).await;
    let body =
        json!({"table": "incident", "sys_id": "0123456789abcdef0123456789abcdef"}).to_string();
    let wrong = [("X-Haloflow-Secret", "wrong"), ("X-Vendor-Key", "wrong")];
    let known = w.post("customers/12", body.clone(), &wrong).await;
    let known_supplier = w.post("suppliers/7", body.clone(), &wrong).await;
    let unknown = w.post("customers/999", body.clone(), &wrong).await;
    let unknown_supplier = w.post("suppliers/999", body.clone(), &wrong).await;
    assert_eq!(known.0, 401, "{}", known.1);
    assert_eq!(known, unknown);
    assert_eq!(known, known_supplier);
    assert_eq!(known, unknown_supplier);

    let pair = base64::engine::general_purpose::STANDARD.encode(format!("snhook:{VENDOR_HOOK}"));
    let hook = json!({"table": "incident", "id": "0123456789abcdef0123456789abcdef"}).to_string();
    for scheme in ["Basic", "BASIC", "basic"] {
        let credentials = format!("{scheme} {pair}");
        let (status, answer) = w
            .post(
                "suppliers/8",
                hook.clone(),
                &[("Authorization", &credentials)],
            )
            .await;
        assert_eq!(status, 200, "{scheme}: {answer}");
    }
    let (status, _) = w
        .post(
            "suppliers/8",
            hook,
            &[("Authorization", "BASIC d3Jvbmc6d3Jvbmc=")],
        )
        .await;
    assert_eq!(status, 401);

    let metrics = w
        .client
        .get(format!("{}/metrics", w.api))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "haloflow_rejected_requests_total{flow=\"servicenow:customers/12\",reason=\"invalid_auth\"} 1",
        "haloflow_rejected_requests_total{flow=\"unknown\",reason=\"invalid_auth\"} 2",
        "haloflow_rejected_requests_total{flow=\"servicenow:suppliers/8\",reason=\"invalid_auth\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

/// Issue 18: the webhook takes the trigger's path. Stored with its run and answered 202 before
/// anything is read or written; the run is in the history like any other and can be replayed.
#[tokio::test]
async fn a_webhook_is_answered_before_it_syncs_and_its_run_is_in_the_history() {
    let w = World::new(100).await;
    let sys_id = w.incident(json!({}));
    let hold = Hold::new();
    w.halo.inject(
        "POST",
        "/api/Tickets",
        Fault::HoldBeforeProcessing(hold.clone()),
        1,
    );
    let (status, answer) = w
        .acme_send(json!({"table": "incident", "sys_id": sys_id}))
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["flow_id"], "servicenow:customers/12");
    assert_eq!(answer["suppressed"], false);
    hold.arrived().await;
    assert!(w.halo.tickets().is_empty(), "answered before the sync");
    let run_id = answer["run_ids"][0].as_str().unwrap().to_owned();
    let running = w.get(&format!("/api/runs/{run_id}")).await;
    assert_eq!(running["status"], "running", "{running:#}");
    hold.release();
    let (status, outcome) = w.outcome(&answer).await;
    assert_eq!(
        (status, &outcome["action"]),
        (200, &json!("created_ticket"))
    );
    assert_eq!(w.halo.tickets().len(), 1);

    // In the history like any run: its step, its exchanges, and no secret.
    let runs = w.get("/api/runs?flow=servicenow:customers/12").await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1, "{runs:#}");
    let run = w.get(&format!("/api/runs/{run_id}")).await;
    let step = &run["steps"][0];
    assert_eq!(step["step_type"], "servicenow.sync_record", "{run:#}");
    assert_eq!(step["outputs"]["action"], "created_ticket");
    let urls: Vec<&str> = (step["exchanges"].as_array().unwrap().iter())
        .map(|e| e["url"].as_str().unwrap())
        .collect();
    assert!(
        urls.iter().any(|u| u.contains("/api/now/table/incident")),
        "{urls:?}"
    );
    assert!(urls.iter().any(|u| u.ends_with("/api/Tickets")), "{urls:?}");
    let text = run.to_string();
    for secret in [HOOK_SECRET, HMAC_KEY, ACME_PASSWORD, HALO_SECRET] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    // The request is listed with what its run did.
    let requests = w
        .storage
        .list_requests(&RequestFilter::default())
        .await
        .unwrap();
    assert_eq!(requests[0].run_ids, vec![run_id.clone()]);
    let listed = requests[0].outcome.as_ref().unwrap();
    assert_eq!(listed["action"], "created_ticket");

    // Replayed, the record is synced again and acted on once.
    let replay = w
        .engine
        .replay(&run_id, haloflow::engine::ReplayFrom::Trigger)
        .await
        .unwrap();
    let replayed = w.engine.wait_for_run(&replay).await.unwrap();
    assert_eq!(replayed.summary.status, RunStatus::Succeeded);
    let outputs = replayed.steps[0].outputs.as_ref().unwrap();
    assert_eq!(outputs["action"], "duplicate", "{outputs}");
    assert_eq!(w.halo.tickets().len(), 1);

    // The flow is the webhook's own: no trigger URL reaches it.
    let response = w
        .client
        .post(format!("{}/triggers/servicenow:customers%2F12", w.base))
        .header("Content-Type", "application/json")
        .body(json!({"table": "incident", "sys_id": sys_id}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

/// Issue 18: a passing Halo error, or an answer lost after Halo made the ticket, is retried by
/// the run with backoff instead of answered 502.
#[tokio::test]
async fn passing_errors_and_lost_answers_are_retried_by_the_run() {
    let w = World::with_config(100, QUICK_RETRIES).await;
    let refused = w.incident(json!({"short_description": "Halo busy"}));
    w.halo.fail_next("POST", "/api/Tickets", 503, 1, None);
    let outputs = w.synced_on_second_attempt(&refused).await;
    assert_eq!(outputs["action"], "created_ticket");
    assert_eq!(w.halo.tickets().len(), 1);

    // Halo made the ticket and the answer was lost: the next attempt adopts it.
    let lost = w.incident(json!({"short_description": "Answer lost"}));
    w.halo
        .inject("POST", "/api/Tickets", Fault::ResetAfterProcessing, 1);
    let outputs = w.synced_on_second_attempt(&lost).await;
    assert_eq!(outputs["action"], "created_ticket");
    assert_eq!(w.halo.tickets().len(), 2, "one ticket each");
    assert_eq!(outputs["ticket_id"], w.halo.tickets()[1]["id"]);
}

/// Issue 18: a webhook accepted by a node that died before syncing it is synced by the node
/// that takes its run over.
#[tokio::test]
async fn a_webhook_whose_node_died_is_synced_by_the_next() {
    let w = World::new(100).await;
    let sys_id = w.incident(json!({}));
    let named = NamedRecord {
        table: Some("incident".into()),
        sys_id: Some(sys_id.clone()),
        ..NamedRecord::default()
    };
    let query = haloflow::trigger::TriggerQuery::default();
    let trigger = Webhook.outputs(TriggerEvent {
        request_id: "req-dead",
        received_at: "now",
        query: &query,
        event: named.to_event(),
    });
    let flow_id = "servicenow:customers/12";
    let request = NewRequest {
        id: "req-dead".into(),
        flow_id: flow_id.into(),
        received_at_ms: 1,
        http_status: 202,
        error: None,
        query: None,
        body: Some(json!({"table": "incident", "sys_id": sys_id}).to_string()),
        event_count: 1,
        outcome: None,
    };
    let run = NewRun {
        id: "run-dead".into(),
        flow_id: flow_id.into(),
        event_index: 0,
        trigger,
        created_at_ms: 1,
        correlation_key: None,
        delivery_id: None,
        owner: Some("dead-node".into()),
        lease_until_ms: Some(1),
    };
    w.storage
        .accept_request(&request, &[run], &[])
        .await
        .unwrap();
    assert_eq!(w.engine.resume_unfinished_runs().await.unwrap(), 1);
    let run = w.engine.wait_for_run("run-dead").await.unwrap();
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!(w.halo.tickets().len(), 1);
    let requests = w
        .storage
        .list_requests(&RequestFilter::default())
        .await
        .unwrap();
    let listed = requests[0].outcome.as_ref().unwrap();
    assert_eq!(listed["action"], "created_ticket");
}
