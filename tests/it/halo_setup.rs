//! `haloflow halo setup` and `haloflow halo check` against the Halo emulator (issue 21): the
//! webhooks and their events created, left alone when in step, drift reported with the fix,
//! removed without touching the tenant's own, and every request within Halo's schema.

use std::path::PathBuf;

use haloflow_emulators::RunningEmulator;
use haloflow_emulators::halo::HaloEmulator;
use serde_json::{Value, json};

use crate::common::cli::{haloflow, text};
use crate::common::processes::emulator;
use crate::common::{ESCALATE_KEY, ROUTING_PASSWORD, assert_contract_kept};

const ROUTING: &str = "new-ticket-routing";
const ROUTING_URL: &str =
    "https://haloflow.example.com/triggers/new-ticket-routing?recipients=bgull,cassiopeia";

/// A Halo emulator and a config file whose `[halo.halo]` is it.
struct Tenant {
    halo: HaloEmulator,
    config: PathBuf,
    _running: RunningEmulator,
    _dir: tempfile::TempDir,
}

impl Tenant {
    async fn new() -> Tenant {
        let (halo, running) = emulator("id", "secret").await;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("haloflow.toml");
        let toml = format!(
            "[server]\npublic_url = \"https://haloflow.example.com\"\n\n[halo.halo]\nbase_url = \"{}\"\nclient_id = \"id\"\nclient_secret_name = \"HALO_SETUP_CLIENT_SECRET\"\nrate_limit_requests = 0\n",
            running.base_url()
        );
        std::fs::write(&config, toml).unwrap();
        Tenant {
            halo,
            config,
            _running: running,
            _dir: dir,
        }
    }

    /// Runs `haloflow halo <args> --config <ours>`: exit code and output.
    async fn halo(&self, args: &[&str]) -> (i32, String) {
        self.halo_with_password(args, ROUTING_PASSWORD).await
    }

    /// As [`Tenant::halo`], with the routing flow's Basic password `password`.
    async fn halo_with_password(&self, args: &[&str], password: &str) -> (i32, String) {
        let mut command = haloflow(&["halo"]);
        command
            .args(args)
            .args(["--config", self.config.to_str().unwrap()])
            .env("HALO_SETUP_CLIENT_SECRET", "secret")
            .env("HALOFLOW_ROUTING_PASSWORD", password)
            .env("HALOFLOW_ESCALATE_KEY", ESCALATE_KEY);
        let output = tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap();
        (output.status.code().unwrap_or(-1), text(&output))
    }

    async fn setup(&self) -> String {
        let (code, out) = self
            .halo(&["setup", ROUTING, "--recipients", "bgull,cassiopeia"])
            .await;
        assert_eq!(code, 0, "{out}");
        out
    }

    async fn check(&self) -> (i32, String) {
        self.halo(&["check", ROUTING, "--recipients", "bgull,cassiopeia"])
            .await
    }

    /// The write requests (`POST`, `DELETE`) Halo has received under `/api`.
    fn writes(&self) -> Vec<String> {
        self.halo
            .requests()
            .into_iter()
            .filter(|r| r.path.starts_with("/api/") && r.method != "GET")
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }

    fn webhook(&self, route: &str) -> Value {
        self.halo
            .webhooks()
            .into_iter()
            .find(|w| w["note"].as_str().unwrap_or_default().contains(route))
            .unwrap_or_else(|| panic!("no {route} webhook in {:?}", self.halo.webhooks()))
    }
}

impl Drop for Tenant {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            assert_contract_kept(&[&self.halo]);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn setup_creates_both_webhooks_with_their_events_and_a_second_run_changes_nothing() {
    let tenant = Tenant::new().await;
    let out = tenant.setup().await;
    assert!(!out.contains(ROUTING_PASSWORD), "{out}");

    let webhooks = tenant.halo.webhooks();
    assert_eq!(webhooks.len(), 2, "{webhooks:?}");
    for (route, rule) in [("route=assigned", 1), ("route=unassigned", 0)] {
        let webhook = tenant.webhook(route);
        assert_eq!(webhook["url"], ROUTING_URL);
        assert_eq!(webhook["authentication_type"], 1);
        assert_eq!(webhook["basic_username"], "halo");
        assert_eq!(webhook["basic_password"], ROUTING_PASSWORD);
        assert_eq!(webhook["content_type"], "application/json");
        assert_eq!(webhook["custom_payload"], false);
        assert_eq!(webhook["active"], true);
        assert!(
            webhook["name"]
                .as_str()
                .unwrap()
                .starts_with("haloflow - new-ticket-routing")
        );
        let events: Vec<Value> = (tenant.halo.notifications().into_iter())
            .filter(|e| e["webhook_id"] == webhook["id"])
            .collect();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0]["eventno"], 3);
        assert_eq!(events[0]["delivery_method"], 6);
        assert_eq!(events[0]["type"], -2);
        let condition = &events[0]["conditions"][0];
        assert_eq!(
            (
                &condition["fieldname"],
                &condition["type"],
                &condition["value_int"]
            ),
            (&json!("agent_id"), &json!(rule), &json!(0))
        );
    }

    let writes = tenant.writes().len();
    let (code, again) = tenant
        .halo(&["setup", ROUTING, "--recipients", "bgull,cassiopeia"])
        .await;
    assert_eq!(code, 0, "{again}");
    assert!(again.contains("nothing to do"), "{again}");
    assert_eq!(tenant.writes().len(), writes, "{:?}", tenant.writes());
    let (code, checked) = tenant.check().await;
    assert_eq!(code, 0, "{checked}");
    assert!(checked.contains("is in step"), "{checked}");

    // Without --recipients, the webhooks' own are kept: nothing to report, nothing to send.
    let (code, checked) = tenant.halo(&["check", ROUTING]).await;
    assert_eq!(code, 0, "{checked}");
    let (code, again) = tenant.halo(&["setup", ROUTING]).await;
    assert_eq!(code, 0, "{again}");
    assert_eq!(tenant.writes().len(), writes, "{:?}", tenant.writes());
    assert_eq!(tenant.webhook("route=assigned")["url"], ROUTING_URL);
}

#[tokio::test(flavor = "multi_thread")]
async fn check_reports_a_broken_webhook_with_the_fix_and_setup_repairs_it() {
    let tenant = Tenant::new().await;
    tenant.setup().await;
    let assigned = tenant.webhook("route=assigned");
    let unassigned = tenant.webhook("route=unassigned");
    let id = |w: &Value| w["id"].as_str().unwrap().to_owned();
    tenant
        .halo
        .change_webhook(&id(&assigned), json!({"active": false}));
    tenant.halo.change_webhook(
        &id(&unassigned),
        json!({"url": "https://old.example.com/triggers/new-ticket-routing?recipients=bgull"}),
    );

    let (code, out) = tenant.check().await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("haloflow - new-ticket-routing - Assigned: disabled"),
        "{out}"
    );
    assert!(
        out.contains("URL: points at https://old.example.com"),
        "{out}"
    );
    assert!(
        out.contains("recipients: bgull instead of bgull,cassiopeia"),
        "{out}"
    );
    // The fix is the setup that repairs it: with the recipients the check was given (without
    // them setup keeps each webhook's own recipients and would change nothing).
    assert!(
        out.contains(
            "Fix: run `haloflow halo setup new-ticket-routing --recipients bgull,cassiopeia`"
        ),
        "{out}"
    );

    tenant.setup().await;
    assert_eq!(tenant.webhook("route=assigned")["active"], true);
    assert_eq!(tenant.webhook("route=unassigned")["url"], ROUTING_URL);
    let (code, out) = tenant.check().await;
    assert_eq!(code, 0, "{out}");

    // A new Basic password: Halo does not read it back, the marker's fingerprint tells.
    let args = ["check", ROUTING, "--recipients", "bgull,cassiopeia"];
    let (code, out) = tenant.halo_with_password(&args, "PW-rotated").await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("key: the Basic password is not the flow's current one"),
        "{out}"
    );
    assert!(!out.contains("PW-rotated"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_halo_is_a_problem_named_with_the_flow_and_connection() {
    let tenant = Tenant::new().await;
    tenant.halo.revoke_tokens();
    tenant.halo.fail_next("POST", "/auth/token", 503, 10, None);
    let (code, out) = tenant.check().await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("flow `new-ticket-routing`, Halo connection [halo.halo]"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn remove_deletes_what_setup_made_and_leaves_the_tenants_own_webhook() {
    let tenant = Tenant::new().await;
    let own = json!({"name": "Our PSA sync", "url": "https://psa.example.com/hook", "type": 0,
                     "note": "made by hand", "active": true});
    let own_id = tenant.halo.insert_webhook(own);
    tenant.setup().await;
    assert_eq!(tenant.halo.webhooks().len(), 3);

    let (code, out) = tenant
        .halo(&[
            "setup",
            ROUTING,
            "--remove",
            "--recipients",
            "bgull,cassiopeia",
        ])
        .await;
    assert_eq!(code, 0, "{out}");
    let left = tenant.halo.webhooks();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["id"], own_id);
    assert_eq!(left[0]["url"], "https://psa.example.com/hook");
    assert!(tenant.halo.notifications().is_empty());
    let deletes = tenant
        .writes()
        .into_iter()
        .filter(|w| w.starts_with("DELETE"));
    assert!(deletes.into_iter().all(|w| !w.contains(&own_id)));
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_prints_the_requests_with_secrets_masked_and_sends_no_write() {
    let tenant = Tenant::new().await;
    for flow in [ROUTING, "escalate-to-partner"] {
        let (code, out) = tenant
            .halo(&["setup", flow, "--dry-run", "--recipients", "epearson"])
            .await;
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("POST /api/Webhook [{"), "{out}");
        assert!(out.contains("POST /api/Notification [{"), "{out}");
        assert!(
            !out.contains(ROUTING_PASSWORD) && !out.contains(ESCALATE_KEY),
            "{out}"
        );
        assert!(out.contains("***"), "{out}");
    }
    assert!(tenant.writes().is_empty(), "{:?}", tenant.writes());
    assert!(tenant.halo.webhooks().is_empty());

    let (code, out) = tenant.halo(&["check", "escalate-to-partner"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("missing"), "{out}");
    assert!(!out.contains(ESCALATE_KEY), "{out}");
}
