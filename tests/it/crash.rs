//! Crashes and restarts of a real `haloflow serve` process: SIGKILL at the worst moments and
//! SIGTERM with work in flight. Nothing accepted is lost, nothing is created twice.

use std::process::Command;
use std::time::Duration;

use crate::common::processes::{World, database, exists};
use crate::common::{ESCALATE_KEY, HALO_SECRET, PARTNER_SECRET};
use haloflow_emulators::{Fault, Hold};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_accept_and_the_first_request() {
    let world = World::new().await;
    let hold = Hold::new();
    world.partner.inject(
        "POST",
        "/auth/token",
        Fault::HoldBeforeProcessing(hold.clone()),
        1,
    );
    let server = world.serve().await;
    let run_id = world.webhook(&server).await;
    hold.arrived().await;
    server.kill();
    assert!(exists(&database(&world)));
    assert!(
        world.partner.tickets().is_empty(),
        "nothing was created yet"
    );

    let server = world.serve().await;
    let run = world.finished(&server, &run_id).await;
    world.assert_exactly_once(&run);
    assert!(
        server
            .output
            .lock()
            .unwrap()
            .contains("resumed 1 unfinished run")
    );
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_two_steps() {
    let world = World::new().await;
    let hold = Hold::new();
    world.partner.inject(
        "POST",
        "/api/Actions",
        Fault::HoldBeforeProcessing(hold.clone()),
        1,
    );
    let server = world.serve().await;
    let run_id = world.webhook(&server).await;
    hold.arrived().await;
    let before = world.run(&server, &run_id).await;
    assert_eq!(before["steps"][0]["status"], "succeeded", "{before:#}");
    server.kill();

    let server = world.serve().await;
    let run = world.finished(&server, &run_id).await;
    world.assert_exactly_once(&run);
    assert_eq!(
        run["steps"][0]["attempts"], 1,
        "the finished create was not run again"
    );
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_a_create_and_its_record() {
    let world = World::new().await;
    let hold = Hold::new();
    world.partner.inject(
        "POST",
        "/api/Tickets",
        Fault::HoldAfterProcessing(hold.clone()),
        1,
    );
    let server = world.serve().await;
    let run_id = world.webhook(&server).await;
    hold.arrived().await;
    assert_eq!(world.partner.tickets().len(), 1, "Halo made the ticket");
    let before = world.run(&server, &run_id).await;
    assert_eq!(before["steps"][0]["status"], "running");
    server.kill();

    let server = world.serve().await;
    let run = world.finished(&server, &run_id).await;
    world.assert_exactly_once(&run);
    let attempts = run["steps"][0]["attempt_log"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{attempts:#?}");
    assert_eq!(attempts[0]["number"], 2, "attempt 1 died with the process");
    assert_eq!(attempts[0]["outcome"], "adopted");
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_work_in_flight_loses_nothing() {
    let world = World::new().await;
    let hold = Hold::new();
    world.partner.inject(
        "POST",
        "/api/Tickets",
        Fault::HoldBeforeProcessing(hold.clone()),
        1,
    );
    let server = world.serve().await;
    let run_id = world.webhook(&server).await;
    hold.arrived().await;
    server.terminate();
    // The step in flight may finish within the shutdown timeout; no later step starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    hold.release();
    let (status, output) = tokio::task::spawn_blocking(move || server.wait_exit())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}: {output}");
    assert!(output.contains("haloflow stopped"), "{output}");
    assert_eq!(world.partner.tickets().len(), 1);
    assert!(
        world.partner.actions().is_empty(),
        "no step started after SIGTERM"
    );

    let server = world.serve().await;
    let run = world.finished(&server, &run_id).await;
    world.assert_exactly_once(&run);
    assert_eq!(run["steps"][0]["attempts"], 1);
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_replay_on_the_command_line() {
    let world = World::new().await;
    // The token is fresh (the first call on this connection), so the 400 is final.
    world.halo.fail_next("POST", "/api/Tickets", 400, 1, None);
    let server = world.serve().await;
    let run_id = world.webhook(&server).await;
    let failed = world.finished(&server, &run_id).await;
    assert_eq!(failed["failed_step"], "link_back");
    server.kill();

    let mut replay = Command::new(env!("CARGO_BIN_EXE_haloflow"));
    replay
        .args(["runs", "replay", &run_id, "--json", "--flows"])
        .arg(world.path("flows"))
        .arg("--data")
        .arg(world.path("data"))
        .arg("--config")
        .arg(world.path("haloflow.toml"))
        .env("HALOFLOW_ESCALATE_KEY", ESCALATE_KEY)
        .env("HALO_SECRET", HALO_SECRET)
        .env("PARTNER_SECRET", PARTNER_SECRET);
    // The emulators answer on this runtime while the command runs.
    let output = tokio::task::spawn_blocking(move || replay.output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let replay: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(replay["status"], "succeeded");
    assert_eq!(replay["replay_of"], json!(run_id));
    assert_eq!(replay["steps"][0]["reused_from"], json!(run_id));
    world.assert_exactly_once(&replay);
}

/// Runs queued for a free slot live in the database: a crash while they wait loses none, and
/// the restarted server runs every one, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_runs_queued_for_a_slot_loses_none() {
    let world = World::with_server_settings("max_active_runs = 1").await;
    let hold = Hold::new();
    world.partner.inject(
        "POST",
        "/api/Tickets",
        Fault::HoldBeforeProcessing(hold.clone()),
        1,
    );
    let server = world.serve().await;
    let mut run_ids = vec![world.webhook(&server).await];
    hold.arrived().await;
    for ticket_id in 7001..=7005 {
        let mut payload = crate::common::sample_payload("halo-new-ticket.json");
        payload["object_id"] = json!(ticket_id);
        let mut ticket = payload["ticket"].clone();
        ticket["id"] = json!(ticket_id);
        world.halo.insert_ticket(ticket);
        let (status, answer) = world.send(&server, &payload).await;
        assert_eq!(status, 202, "{answer}");
        run_ids.push(answer["run_ids"][0].as_str().unwrap().to_owned());
    }
    for run_id in &run_ids[1..] {
        assert_eq!(world.run(&server, run_id).await["status"], "queued");
    }
    server.kill();

    let server = world.serve().await;
    for run_id in &run_ids {
        let run = world.finished(&server, run_id).await;
        assert_eq!(run["status"], "succeeded", "{run:#}");
    }
    assert_eq!(
        world.partner.tickets().len(),
        run_ids.len(),
        "one ticket per run"
    );
    assert_eq!(world.partner.actions().len(), run_ids.len());
    server.kill();
}
