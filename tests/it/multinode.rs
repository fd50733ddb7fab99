//! Several `haloflow serve` processes on one PostgreSQL database: every accepted request runs
//! once, a killed node's runs finish on another, flood control and delivery de-duplication
//! hold across nodes. Skipped (with a message) without a PostgreSQL server, unless `CI` is set.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::backends::TestDatabase;
use crate::common::processes::{Server, World};
use crate::common::sample_payload;
use haloflow_emulators::{Fault, Hold};
use serde_json::{Value, json};

/// A short claim, so a killed node's runs move within seconds.
const SETTINGS: &str = "run_lease_secs = 2";

async fn nodes(world: &World, database: &TestDatabase, count: usize) -> Vec<Server> {
    let mut servers = Vec::new();
    for i in 0..count {
        let id = format!("node-{i}");
        servers.push(
            world
                .serve_with(&["--database", &database.url, "--node-id", &id])
                .await,
        );
    }
    servers
}

/// A webhook for ticket `ticket_id`, which is created in the sending Halo first.
fn payload(world: &World, ticket_id: i64) -> Value {
    let mut payload = sample_payload("halo-new-ticket.json");
    payload["object_id"] = json!(ticket_id);
    payload["ticket"]["id"] = json!(ticket_id);
    if world.halo.ticket(ticket_id).is_none() {
        world.halo.insert_ticket(payload["ticket"].clone());
    }
    payload
}

async fn wait_all(world: &World, server: &Server, run_ids: &[String]) {
    for run_id in run_ids {
        let run = world.finished(server, run_id).await;
        assert_eq!(run["status"], "succeeded", "{run:#}");
    }
}

/// One partner ticket per run, each carrying its run's key.
/// Every run finished (as `servers[0]` reads them), each created exactly one ticket; then the
/// nodes stop.
async fn all_done_once(world: &World, servers: Vec<Server>, run_ids: &[String]) {
    wait_all(world, &servers[0], run_ids).await;
    assert_one_ticket_per_run(world, run_ids);
    for server in servers {
        server.kill();
    }
}

fn assert_one_ticket_per_run(world: &World, run_ids: &[String]) {
    let keys: Vec<String> = world
        .partner
        .tickets()
        .iter()
        .map(|t| t["third_party_id_string"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys.len(), run_ids.len(), "{keys:#?}");
    let expected: HashSet<String> = run_ids
        .iter()
        .map(|id| format!("haloflow:{id}:create"))
        .collect();
    assert_eq!(keys.into_iter().collect::<HashSet<_>>(), expected);
    assert_eq!(world.halo.actions().len(), run_ids.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_run_a_burst_exactly_once() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let world = World::with_server_settings(SETTINGS).await;
    let servers = nodes(&world, &database, 3).await;
    let mut sends = Vec::new();
    for i in 0..30 {
        let body = payload(&world, 5000 + i);
        let url = trigger_url(&servers[i as usize % servers.len()]);
        let client = world.client.clone();
        // All at once: the nodes accept and run concurrently.
        sends.push(tokio::spawn(async move {
            let response = client.post(url).json(&body).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }));
    }
    let mut answers = Vec::new();
    for send in sends {
        answers.push(send.await.unwrap());
    }
    let run_ids: Vec<String> = answers
        .iter()
        .map(|(status, a)| {
            assert_eq!(*status, 202, "{a}");
            a["run_ids"][0].as_str().unwrap().to_owned()
        })
        .collect();
    all_done_once(&world, servers, &run_ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_runs_finish_on_another_without_duplicates() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let world = World::with_server_settings(SETTINGS).await;
    let mut servers = nodes(&world, &database, 2).await;
    // Node 0's first five creates reach Halo and wait there; node 0 dies meanwhile.
    let hold = Hold::new();
    world.partner.inject(
        "POST",
        "/api/Tickets",
        Fault::HoldBeforeProcessing(hold.clone()),
        5,
    );
    let mut run_ids = Vec::new();
    for i in 0..5 {
        let (status, answer) = world.send(&servers[0], &payload(&world, 6000 + i)).await;
        assert_eq!(status, 202, "{answer}");
        run_ids.push(answer["run_ids"][0].as_str().unwrap().to_owned());
    }
    hold.arrived().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let survivor = servers.pop().unwrap();
    servers.pop().unwrap().kill();
    // Halo finishes the creates it was given; their answers are lost with node 0.
    hold.release();
    for i in 0..5 {
        let (status, answer) = world.send(&survivor, &payload(&world, 6100 + i)).await;
        assert_eq!(status, 202, "{answer}");
        run_ids.push(answer["run_ids"][0].as_str().unwrap().to_owned());
    }
    // Node 1 takes node 0's runs over once their claims expire, and adopts the tickets.
    wait_all(&world, &survivor, &run_ids).await;
    assert_one_ticket_per_run(&world, &run_ids);
    let adopted = {
        let metrics = world
            .client
            .get(format!("{}/metrics", survivor.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metrics
            .lines()
            .find(|l| {
                l.starts_with("haloflow_step_adopted_total{step_type=\"halo.create_ticket\"}")
            })
            .map(|l| l.rsplit(' ').next().unwrap().to_owned())
    };
    assert_eq!(
        adopted.as_deref(),
        Some("5"),
        "the survivor adopted all five"
    );
    survivor.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_control_counts_across_nodes() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let world = World::with_server_settings(SETTINGS).await;
    let servers = nodes(&world, &database, 3).await;
    let mut runs = Vec::new();
    let mut suppressed = Vec::new();
    for i in 0..6 {
        // The same ticket and event, new deliveries, each to the next node.
        let (status, answer) = world.send(&servers[i % 3], &payload(&world, 7000)).await;
        assert_eq!(status, 202, "{answer}");
        if answer["suppressed"] == true {
            suppressed.push(answer);
        } else {
            runs.push(answer["run_ids"][0].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(runs.len(), 4);
    assert_eq!(suppressed.len(), 2);
    let parent = suppressed[0]["parent_request_id"].clone();
    assert_eq!(suppressed[1]["parent_request_id"], parent);
    assert_eq!(suppressed[1]["suppressed_count"], 2);
    wait_all(&world, &servers[0], &runs).await;
    for server in servers {
        server.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_delivery_to_two_nodes_runs_once() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let world = World::with_server_settings(SETTINGS).await;
    let servers = nodes(&world, &database, 2).await;
    let body = payload(&world, 8000);
    let (a, b) = tokio::join!(
        world.send(&servers[0], &body),
        world.send(&servers[1], &body)
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [200, 202], "{a:?} {b:?}");
    let (accepted, duplicate) = if a.0 == 202 { (a.1, b.1) } else { (b.1, a.1) };
    assert_eq!(duplicate["first_request_id"], accepted["request_id"]);
    let run_id = accepted["run_ids"][0].as_str().unwrap().to_owned();
    wait_all(&world, &servers[1], std::slice::from_ref(&run_id)).await;
    assert_one_ticket_per_run(&world, &[run_id]);
    for server in servers {
        server.kill();
    }
}

fn trigger_url(server: &Server) -> String {
    format!(
        "{}/triggers/escalate-to-partner?apiKey={}&recipients=ops",
        server.base,
        crate::common::ESCALATE_KEY
    )
}

/// On a node with one slot (`max_active_runs = 1`): a run from ticket `first_ticket` that holds
/// it (its Halo create is held), then `count` more runs that queue. Returns the hold, the
/// holding run's id and the queued runs' ids.
async fn fill_the_slot_and_queue(
    world: &World,
    server: &Server,
    first_ticket: i64,
    count: i64,
) -> (std::sync::Arc<Hold>, String, Vec<String>) {
    let hold = Hold::new();
    let fault = Fault::HoldBeforeProcessing(hold.clone());
    world.partner.inject("POST", "/api/Tickets", fault, 1);
    let (status, first) = world.send(server, &payload(world, first_ticket)).await;
    assert_eq!(status, 202, "{first}");
    hold.arrived().await;
    let mut queued = Vec::new();
    for i in 1..=count {
        let (status, answer) = world.send(server, &payload(world, first_ticket + i)).await;
        assert_eq!(status, 202, "{answer}");
        queued.push(answer["run_ids"][0].as_str().unwrap().to_owned());
    }
    (
        hold,
        first["run_ids"][0].as_str().unwrap().to_owned(),
        queued,
    )
}

/// Runs queued on a node without a free slot are not tied to it: another node with room takes
/// them (each once), while the first node's only run still waits on Halo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_nodes_queued_runs_run_on_a_node_with_room() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    // The default claim (60 s): node 0's held run is never taken over.
    let world = World::with_server_settings("max_active_runs = 1").await;
    let mut servers = nodes(&world, &database, 1).await;
    let (hold, first, queued) = fill_the_slot_and_queue(&world, &servers[0], 6500, 4).await;
    // A second node starts, finds the queued runs and runs them while node 0's one slot is
    // still held.
    let args = ["--database", &database.url, "--node-id", "node-1"];
    servers.push(world.serve_with(&args).await);
    wait_all(&world, &servers[1], &queued).await;
    hold.release();
    let mut run_ids = vec![first];
    run_ids.extend(queued);
    all_done_once(&world, servers, &run_ids).await;
}

/// A node with room hears at once that runs wait on a full node (a PostgreSQL notification)
/// and starts them, long before its next look for unfinished runs (every 30 s with the default
/// claim; `finished` gives up after about 15 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_queued_on_a_full_node_start_at_once_on_a_running_node_with_room() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let world = World::with_server_settings("max_active_runs = 1").await;
    let servers = nodes(&world, &database, 2).await;
    let (hold, first, queued) = fill_the_slot_and_queue(&world, &servers[0], 6600, 3).await;
    wait_all(&world, &servers[1], &queued).await;
    hold.release();
    let mut run_ids = vec![first];
    run_ids.extend(queued);
    all_done_once(&world, servers, &run_ids).await;
}
