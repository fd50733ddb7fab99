//! The command line: `demo`, `run` (live and dry), `runs list|show`, `requests list`, `serve`.

use std::process::Command;

use haloflow_emulators::halo::{HaloEmulator, HaloEmulatorConfig};

use crate::common::cli::{haloflow, text};

#[test]
fn the_demo_sends_a_sample_to_every_flow_and_shows_the_runs() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap();
    let output = haloflow(&[
        "demo",
        "--once",
        "--listen",
        "127.0.0.1:0",
        "--data",
        data_dir,
    ])
    .output()
    .unwrap();
    let out = text(&output);
    assert!(output.status.success(), "{out}");
    let flows = haloflow::internals::flow::flow_files(std::path::Path::new("flows"))
        .unwrap()
        .len();
    assert_eq!(
        out.matches("SUCCEEDED").count(),
        flows,
        "one finished run per flow: {out}"
    );
    assert!(!out.contains("outside Halo's published API"), "{out}");
    assert!(
        out.contains("Trigger URL of `escalate-to-partner`: http://127.0.0.1:"),
        "{out}"
    );
    assert!(out.contains("&recipients=epearson,Antares%20Team"), "{out}");
    assert!(
        out.contains("Escalated from Halo ticket 4242 (new ticket logged) as ticket 1000"),
        "{out}"
    );
    assert!(
        !out.contains("curl "),
        "no lines to send to a server that has stopped: {out}"
    );
    assert!(
        out.contains("ServiceNow emulator on http://127.0.0.1:"),
        "{out}"
    );
    // The runs are in the history the other commands read.
    let list = haloflow(&["runs", "list", "--data", data_dir])
        .output()
        .unwrap();
    assert_eq!(
        text(&list).matches("succeeded").count(),
        flows,
        "{}",
        text(&list)
    );
}

#[tokio::test]
async fn run_records_the_run_and_runs_show_reads_it_back() {
    let halo = HaloEmulator::new(HaloEmulatorConfig {
        client_id: "cli".into(),
        client_secret: "cli-secret".into(),
        tenant: Some("acme".into()),
        token_lifetime_secs: 3600,
    });
    let running = halo.start().await.unwrap();
    halo.insert_ticket(serde_json::json!({"id": 4243, "summary": "Printer"}));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("haloflow.toml");
    std::fs::write(
        &config,
        format!(
            "[halo.halo]\nbase_url = \"{}\"\ntenant = \"acme\"\nclient_id = \"cli\"\nclient_secret_name = \"CLI_HALO_SECRET\"\n",
            running.base_url()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let (config, data) = (
        config.to_str().unwrap().to_owned(),
        data.to_str().unwrap().to_owned(),
    );
    let run = tokio::task::spawn_blocking({
        let (config, data) = (config.clone(), data.clone());
        move || {
            haloflow(&[
                "run",
                "flows/new-ticket-routing.json",
                "--payload",
                "examples/halo-new-ticket-unassigned.json",
            ])
            .args([
                "--query",
                "recipients=bgull,cassiopeia&team=Desk",
                "--config",
                &config,
                "--data",
                &data,
            ])
            .env("CLI_HALO_SECRET", "cli-secret")
            .output()
            .unwrap()
        }
    })
    .await
    .unwrap();
    let out = text(&run);
    assert!(run.status.success(), "{out}");
    assert!(out.contains("flow new-ticket-routing  SUCCEEDED"), "{out}");
    assert_eq!(halo.ticket(4243).unwrap()["team"], "Desk");
    assert!(halo.warnings().is_empty(), "{:#?}", halo.warnings());
    let token = halo
        .requests()
        .into_iter()
        .find(|r| r.path == "/auth/token")
        .unwrap();
    assert_eq!(
        token.query.as_deref(),
        Some("tenant=acme"),
        "the tenant rides in the query"
    );

    let run_id = out.split_whitespace().nth(1).unwrap().to_owned();
    let show = haloflow(&["runs", "show", &run_id, "--data", &data])
        .output()
        .unwrap();
    let shown = text(&show);
    assert!(show.status.success(), "{shown}");
    for expected in [
        "1. route (halo.update_ticket)  succeeded",
        "2. announce (halo.add_action)  succeeded",
        "notified: bgull, cassiopeia",
        "-> 201",
    ] {
        assert!(shown.contains(expected), "missing {expected:?} in {shown}");
    }
    let json = haloflow(&["runs", "show", &run_id, "--data", &data, "--json"])
        .output()
        .unwrap();
    let detail: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        detail["steps"][1]["inputs"]["note"],
        "Unassigned: sent to Desk for triage; notified: bgull, cassiopeia"
    );
    let failed = haloflow(&["runs", "list", "--data", &data, "--status", "failed"])
        .output()
        .unwrap();
    assert_eq!(text(&failed).trim(), "no runs");
    let requests = haloflow(&["requests", "list", "--data", &data])
        .output()
        .unwrap();
    assert!(
        text(&requests).contains("new-ticket-routing  202 runs: "),
        "{}",
        text(&requests)
    );
    let missing = haloflow(&["runs", "show", "nope", "--data", &data])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing).contains("no run with id `nope`"));
}

#[test]
fn a_run_without_its_secret_says_which_to_set() {
    let data = tempfile::tempdir().unwrap();
    let output = haloflow(&[
        "run",
        "flows/new-ticket-routing.json",
        "--payload",
        "examples/halo-new-ticket.json",
    ])
    .args([
        "--config",
        "examples/haloflow.toml",
        "--data",
        data.path().to_str().unwrap(),
    ])
    .env_remove("HALO_CLIENT_SECRET")
    .env_remove("PARTNER_HALO_CLIENT_SECRET")
    .output()
    .unwrap();
    let out = text(&output);
    assert_eq!(output.status.code(), Some(2), "{out}");
    assert!(out.contains("[halo.halo]: secret `HALO_CLIENT_SECRET` is not set. Set the environment variable HALO_CLIENT_SECRET"), "{out}");
}

#[test]
fn serve_refuses_flows_whose_trigger_secret_is_missing() {
    let data = tempfile::tempdir().unwrap();
    let output = haloflow(&[
        "serve",
        "--flows",
        "flows",
        "--listen",
        "127.0.0.1:0",
        "--data",
        data.path().to_str().unwrap(),
    ])
    .args(["--config", "examples/haloflow.toml"])
    .env_remove("HALO_CLIENT_SECRET")
    .env("PARTNER_HALO_CLIENT_SECRET", "set")
    .env_remove("HALOFLOW_ESCALATE_KEY")
    .env_remove("HALOFLOW_ROUTING_PASSWORD")
    .output()
    .unwrap();
    let out = text(&output);
    assert_eq!(output.status.code(), Some(2), "{out}");
    assert!(out.contains("/trigger/auth: [missing_secret] the trigger's secret `HALOFLOW_ESCALATE_KEY` is not set"), "{out}");
    assert!(
        out.contains("HALOFLOW_ROUTING_PASSWORD"),
        "all problems are listed: {out}"
    );
    assert!(
        out.contains("[halo.halo]: secret `HALO_CLIENT_SECRET` is not set"),
        "connection secrets too: {out}"
    );
    assert!(!out.contains("PARTNER_HALO_CLIENT_SECRET"), "{out}");
}

#[test]
fn the_demos_printed_lines_start_runs_with_fresh_delivery_ids() {
    use std::io::BufRead;
    let data = tempfile::tempdir().unwrap();
    let mut child = haloflow(&["demo", "--listen", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.starts_with("Serving until Ctrl-C") {
            break;
        }
        lines.push(line);
    }
    let sends: Vec<&str> = lines
        .iter()
        .map(|l| l.trim())
        .filter(|l| l.contains("| curl "))
        .collect();
    let send = |line: &str| {
        let output = Command::new("sh").args(["-c", line]).output().unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let console = lines
        .iter()
        .find_map(|l| l.strip_prefix("Console: "))
        .map(str::to_owned);
    let result = std::panic::catch_unwind(|| {
        assert!(!sends.is_empty(), "{lines:#?}");
        // The printed console opens without signing in, on this machine.
        let console = console.clone().expect("the demo prints the console's URL");
        assert!(console.starts_with("http://127.0.0.1:"), "{console}");
        let status = send(&format!(
            "curl -s -o /dev/null -w '%{{http_code}}' '{console}'"
        ));
        assert_eq!(status, "200", "{console}");
        for line in &sends {
            let first = send(line);
            assert!(
                first.contains("\"run_ids\":[\"") && !first.contains("duplicate"),
                "{line}: {first}"
            );
            let again = send(line);
            assert!(again.contains("duplicate"), "{line}: {again}");
        }
    });
    // This test's own child, ended by its handle.
    let _ = child.kill();
    let _ = child.wait();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
