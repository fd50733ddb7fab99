//! Secrets (trigger keys, Basic passwords, client secrets, access tokens) never reach logs, the
//! database, run history or command output.

use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::common::{Harness, all_secrets, contains, sample_payload};
use serde_json::json;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// In a process of its own: tracing keeps one interest cache per process, and other tests
/// starting their servers at the same moment can leave a callsite of this one unseen.
#[test]
fn secrets_never_reach_logs_database_or_history() {
    crate::common::in_own_process("secrets::logs_database_and_history_in_a_process_of_its_own");
}

// One thread, so the thread-local log subscriber sees the server, the runs and the clients.
#[tokio::test(flavor = "current_thread")]
#[ignore = "run by secrets_never_reach_logs_database_or_history in a process of its own"]
async fn logs_database_and_history_in_a_process_of_its_own() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let h = Harness::start().await;
    // Successful runs on both flows (URL key and Basic), a failing run, rejected requests.
    let (status, answer) = h
        .post_json(
            &h.escalate_url("epearson"),
            &sample_payload("halo-new-ticket.json"),
        )
        .await;
    assert_eq!(status, 202);
    let escalated = h.wait(answer["run_ids"][0].as_str().unwrap()).await;
    let routed: serde_json::Value = h
        .routing_request("recipients=a")
        .json(&sample_payload("halo-new-ticket.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    h.wait(routed["run_ids"][0].as_str().unwrap()).await;
    // 400 is not retried (but for one fresh token, as Halo may mean an expired one): the run
    // fails and keeps the error text.
    h.halo.fail_next("POST", "/api/Tickets", 400, 2, None);
    let failing: serde_json::Value = h
        .routing_request("recipients=a")
        .json(&sample_payload("halo-new-ticket.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let failed = h.wait(failing["run_ids"][0].as_str().unwrap()).await;
    assert_eq!(failed.summary.status, haloflow::storage::RunStatus::Failed);
    let wrong = format!(
        "{}/triggers/escalate-to-partner?apiKey={}x",
        h.base,
        crate::common::ESCALATE_KEY
    );
    assert_eq!(h.post_json(&wrong, &json!({"event": "x"})).await.0, 401);
    let bad_json = h
        .client
        .post(h.escalate_url("a"))
        .header("Content-Type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_json.status(), 400);

    // The access tokens the emulators issued are secrets too.
    let mut secrets: Vec<String> = all_secrets().iter().map(|s| s.to_string()).collect();
    for emulator in [&h.halo, &h.partner] {
        for request in emulator.requests() {
            if let Some(token) = request
                .headers
                .get("authorization")
                .and_then(|v| v.strip_prefix("Bearer "))
            {
                secrets.push(token.to_owned());
            }
        }
    }
    assert!(secrets.len() > 4, "tokens were used");

    let mut api_text = String::new();
    for path in [
        "/api/runs",
        "/api/requests",
        &format!("/api/runs/{}", escalated.summary.id),
        &format!("/api/runs/{}", failed.summary.id),
    ] {
        api_text.push_str(
            &h.client
                .get(format!("{}{path}", h.api))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
    }
    assert!(api_text.contains("escalate-to-partner"), "the API answered");
    let database = h.database_bytes();
    assert!(
        contains(&database, "Disk space low"),
        "the database holds the runs"
    );
    let logs = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(
        logs.contains("Accepted a trigger request."),
        "logs were captured"
    );
    for secret in &secrets {
        assert!(!contains(&database, secret), "secret found in the database");
        assert!(!logs.contains(secret.as_str()), "secret found in the logs");
        assert!(
            !api_text.contains(secret.as_str()),
            "secret found in the API"
        );
    }
}

#[test]
fn a_dry_run_masks_every_secret() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_haloflow"))
        .args([
            "run",
            "flows/escalate-to-partner.json",
            "--payload",
            "examples/halo-new-ticket.json",
            "--dry-run",
        ])
        .args([
            "--config",
            "examples/haloflow.toml",
            "--query",
            "recipients=a",
        ])
        .env("HALO_CLIENT_SECRET", crate::common::HALO_SECRET)
        .env("PARTNER_HALO_CLIENT_SECRET", crate::common::PARTNER_SECRET)
        .env("HALOFLOW_LOG", "trace")
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("client_secret=***"), "{stdout}");
    assert!(stdout.contains("Authorization: Bearer ***"), "{stdout}");
    for secret in [crate::common::HALO_SECRET, crate::common::PARTNER_SECRET] {
        assert!(!stdout.contains(secret) && !stderr.contains(secret));
    }
}
