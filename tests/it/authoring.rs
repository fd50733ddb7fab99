//! Authoring: trigger-url, new, the editor schema, reload, and the five-minute tutorial.

use std::process::Command;

use crate::common::{Harness, Options, sample_payload};
use serde_json::{Value, json};

use crate::common::cli::run as haloflow;

fn flow_with_auth(dir: &std::path::Path, auth: Value) -> String {
    let mut flow: Value =
        serde_json::from_str(&std::fs::read_to_string("flows/new-ticket-routing.json").unwrap())
            .unwrap();
    flow["trigger"]["auth"] = auth;
    let path = dir.join(format!(
        "{}.json",
        flow["trigger"]["auth"]["type"].as_str().unwrap()
    ));
    std::fs::write(&path, flow.to_string()).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn trigger_url_for_each_auth_type() {
    let dir = tempfile::tempdir().unwrap();
    let base = "https://flows.example.com";
    let recipients = "Emma Pearson,antares,r&d/ops";
    let encoded = "recipients=Emma%20Pearson,antares,r%26d%2Fops";
    let cases = [
        (
            json!({"type": "url_key", "param": "apiKey", "secret_name": "KEY"}),
            format!("{base}/triggers/new-ticket-routing?apiKey=<KEY>&{encoded}"),
            "No Authentication (the key rides in the URL",
        ),
        (
            json!({"type": "basic", "username": "halo", "password_secret_name": "PW"}),
            format!("{base}/triggers/new-ticket-routing?{encoded}"),
            "Basic Authentication: user name `halo`, password: the value of the secret PW",
        ),
        (
            json!({"type": "header", "header": "X-Key", "secret_name": "HK"}),
            format!("{base}/triggers/new-ticket-routing?{encoded}"),
            "header `X-Key` with the value of the secret HK",
        ),
        (
            json!({"type": "none"}),
            format!("{base}/triggers/new-ticket-routing?{encoded}"),
            "No Authentication (anyone who knows the URL",
        ),
    ];
    for (auth, url, authentication) in cases {
        let file = flow_with_auth(dir.path(), auth);
        let (ok, out) = haloflow(&[
            "trigger-url",
            &file,
            "--base-url",
            base,
            "--recipients",
            recipients,
            "--agent",
            "Emma Pearson",
        ]);
        assert!(ok, "{out}");
        assert!(
            out.contains(&format!("\n  {url}\n")),
            "expected {url} in:\n{out}"
        );
        assert!(out.contains(&format!("Payload URL: {url}")), "{out}");
        assert!(out.contains(authentication), "{out}");
        for step in [
            "Configuration > Integrations > Webhooks",
            "\"Use a custom payload\": off",
            "Event \"New Ticket Logged\"",
            "Value \"Emma Pearson\"",
            "Value \"Unassigned\"",
            "haloflow - new-ticket-routing - Assigned",
        ] {
            assert!(out.contains(step), "missing {step:?} in:\n{out}");
        }
    }
    // By flow id from a directory, with the key shown on request.
    let output = Command::new(env!("CARGO_BIN_EXE_haloflow"))
        .args([
            "trigger-url",
            "escalate-to-partner",
            "--base-url",
            base,
            "--show-key",
        ])
        .env("HALOFLOW_ESCALATE_KEY", "k/1")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains(&format!(
        "{base}/triggers/escalate-to-partner?apiKey=k%2F1\n"
    )));
}

#[test]
fn new_writes_a_valid_flow_for_each_template() {
    let dir = tempfile::tempdir().unwrap();
    let flows = dir.path().join("flows");
    for (template, _) in haloflow::commands::TEMPLATES {
        let name = format!("My {template} Flow!");
        let (ok, out) = haloflow(&[
            "new",
            &name,
            "--template",
            template,
            "--dir",
            flows.to_str().unwrap(),
        ]);
        assert!(ok, "{out}");
        let file = flows.join(format!("my-{template}-flow.json"));
        let flow: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(flow["name"], name.as_str());
        // The schema reference leads to a file editors can read.
        let schema = std::path::Path::new(flow["$schema"].as_str().unwrap());
        let schema = if schema.is_absolute() {
            schema.to_path_buf()
        } else {
            file.parent().unwrap().join(schema)
        };
        assert!(schema.is_file(), "{}", schema.display());
        let (valid, report) = haloflow(&["validate", file.to_str().unwrap()]);
        assert!(valid, "{report}");
    }
    let (ok, out) = haloflow(&[
        "new",
        "My halo-create Flow!",
        "--dir",
        flows.to_str().unwrap(),
    ]);
    assert!(!ok && out.contains("exists already"), "{out}");
    let (ok, out) = haloflow(&[
        "new",
        "x",
        "--template",
        "nope",
        "--dir",
        flows.to_str().unwrap(),
    ]);
    assert!(
        !ok && out.contains("halo-create"),
        "the error lists the templates: {out}"
    );
}

#[test]
fn the_editor_schema_is_generated_from_the_steps_and_checks_inputs() {
    let generated =
        haloflow::internals::flow::editor_schema(&haloflow::bundled::integrations().registry());
    let shipped: Value =
        serde_json::from_str(&std::fs::read_to_string("schemas/flow.schema.json").unwrap())
            .unwrap();
    assert_eq!(
        shipped, generated,
        "schemas/flow.schema.json is stale: run `haloflow schema > schemas/flow.schema.json`"
    );

    // An editor validating with the schema alone: every shipped flow passes, a misspelt input fails.
    let editor = jsonschema::draft202012::new(&shipped).unwrap();
    for file in haloflow::internals::flow::flow_files(std::path::Path::new("flows")).unwrap() {
        let flow: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let errors: Vec<String> = editor.iter_errors(&flow).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", file.display());
    }
    let mut misspelt: Value =
        serde_json::from_str(&std::fs::read_to_string("flows/escalate-to-partner.json").unwrap())
            .unwrap();
    misspelt["steps"][0]["inputs"]["sumary"] = json!("x");
    let paths: Vec<String> = editor
        .iter_errors(&misspelt)
        .map(|e| e.instance_path().to_string())
        .collect();
    assert!(
        paths.iter().any(|p| p.starts_with("/steps/0/inputs")),
        "{paths:?}"
    );
    let step = &shipped["$defs"]["step"];
    assert!(
        step["properties"]["type"]["examples"]
            .as_array()
            .unwrap()
            .contains(&json!("halo.add_action"))
    );
    let create = step["allOf"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["if"]["properties"]["type"]["const"] == "halo.create_ticket")
        .unwrap();
    assert!(
        create["then"]["properties"]["inputs"]["properties"]["summary"]["description"].is_string(),
        "hover text for inputs"
    );
}

#[tokio::test]
async fn reload_keeps_the_old_flow_when_the_new_one_is_invalid() {
    let flows = tempfile::tempdir().unwrap();
    let file = flows.path().join("routing.json");
    let original = std::fs::read_to_string("flows/new-ticket-routing.json").unwrap();
    std::fs::write(&file, &original).unwrap();
    let h = Harness::start_with(Options {
        flows: flows.path().to_owned(),
        ..Options::default()
    })
    .await;
    let send = || {
        h.routing_request("recipients=a")
            .json(&sample_payload("halo-new-ticket.json"))
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 202);

    // A broken edit: rejected with its problems; the running version keeps serving.
    std::fs::write(
        &file,
        original.replace("\"halo.add_action\"", "\"halo.add_actoin\""),
    )
    .unwrap();
    let error = h.engine.reload().unwrap_err().to_string();
    assert!(
        error.contains("unknown step type `halo.add_actoin`"),
        "{error}"
    );
    assert_eq!(send().await.unwrap().status(), 202);
    assert_eq!(
        h.engine.flow("new-ticket-routing").unwrap().flow.steps[1]
            .description()
            .type_name,
        "halo.add_action"
    );

    // A good edit is taken.
    std::fs::write(
        &file,
        original.replace("Route new tickets", "Route tickets (v2)"),
    )
    .unwrap();
    assert_eq!(h.engine.reload().unwrap(), 1);
    let listed: Value = h
        .client
        .get(format!("{}/api/flows", h.api))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        listed["flows"][0]["name"]
            .as_str()
            .unwrap()
            .starts_with("Route tickets (v2)")
    );
    assert_eq!(send().await.unwrap().status(), 202);
}

/// The tutorial's `haloflow` lines, exactly as the README shows them.
fn tutorial_commands() -> Vec<String> {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let section = readme
        .split("## Your first flow in five minutes")
        .nth(1)
        .expect("the tutorial section");
    let block = section
        .split("```sh")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    block
        .lines()
        .filter(|l| l.starts_with("haloflow "))
        .map(str::to_owned)
        .collect()
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.path().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

#[test]
fn the_five_minute_tutorial_runs_as_written() {
    let dir = tempfile::tempdir().unwrap();
    for folder in ["flows", "examples", "schemas"] {
        copy_dir(std::path::Path::new(folder), &dir.path().join(folder));
    }
    let commands = tutorial_commands();
    assert_eq!(commands.len(), 6, "{commands:?}");
    let expectations = [
        "wrote flows/disk-alerts.json",
        "flows/disk-alerts.json: ok: flow `disk-alerts`",
        "would send: POST https://acme.haloitsm.com/api/Tickets",
        "recipients=Emma%20Pearson,ops",
        "flow disk-alerts  SUCCEEDED",
        "succeeded",
    ];
    for (command, expected) in commands.iter().zip(expectations) {
        // The README's alias, as a shell function calling the binary under test.
        let script = format!("haloflow() {{ \"$HALOFLOW_BIN\" \"$@\"; }}\n{command}");
        let output = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .current_dir(dir.path())
            .env("HALOFLOW_BIN", env!("CARGO_BIN_EXE_haloflow"))
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "`{command}` failed:\n{text}");
        assert!(
            text.contains(expected),
            "`{command}` did not print {expected:?}:\n{text}"
        );
    }
}

#[cfg(unix)]
#[tokio::test]
async fn serve_reloads_on_sighup_and_keeps_serving_an_invalid_edit() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let flows = dir.path().join("flows");
    std::fs::create_dir_all(&flows).unwrap();
    let file = flows.join("routing.json");
    let original = std::fs::read_to_string("flows/new-ticket-routing.json").unwrap();
    std::fs::write(&file, &original).unwrap();
    let config = dir.path().join("haloflow.toml");
    std::fs::write(&config, "[halo.halo]\nbase_url = \"http://127.0.0.1:9\"\nclient_id = \"c\"\nclient_secret_name = \"SIGHUP_HALO_SECRET\"\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_haloflow"))
        .args([
            "serve",
            "--flows",
            flows.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--config", config.to_str().unwrap()])
        .env("SIGHUP_HALO_SECRET", "s")
        .args(["--data", dir.path().join("data").to_str().unwrap()])
        .env("HALOFLOW_ROUTING_PASSWORD", "pw")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let mut second = String::new();
    stdout.read_line(&mut second).unwrap();
    // Keep reading, as a terminal would.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let public = first
        .split_whitespace()
        .nth(3)
        .expect("haloflow listening on <url>")
        .to_owned();
    // The API is on the loopback admin listener: "API on http://127.0.0.1:<port>/api ...".
    let base = second
        .split_whitespace()
        .nth(2)
        .and_then(|url| url.strip_suffix("/api"))
        .expect("API on <url>/api")
        .to_owned();
    let client = reqwest::Client::new();
    let name = || async {
        let flows: Value = client
            .get(format!("{base}/api/flows"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        flows["flows"][0]["name"].as_str().unwrap().to_owned()
    };
    let hangup = || {
        Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap()
    };
    let wait_for = |expected: &'static str| async move {
        for _ in 0..100 {
            if name().await.starts_with(expected) {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        false
    };
    assert!(wait_for("Route new tickets").await);

    std::fs::write(
        &file,
        original.replace("Route new tickets", "Route tickets v2"),
    )
    .unwrap();
    hangup();
    assert!(
        wait_for("Route tickets v2").await,
        "SIGHUP reloads the flows"
    );

    std::fs::write(
        &file,
        original
            .replace("Route new tickets", "Broken")
            .replace("\"halo.add_action\"", "\"halo.nope\""),
    )
    .unwrap();
    hangup();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        name().await.starts_with("Route tickets v2"),
        "an invalid edit is rejected and the old version kept"
    );
    // The console shows why: the last reload's problems, from the API.
    let mut reload = Value::Null;
    for _ in 0..100 {
        let flows: Value = (client.get(format!("{base}/api/flows")).send().await)
            .unwrap()
            .json()
            .await
            .unwrap();
        reload = flows["reload"].clone();
        if reload["ok"] == false {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(reload["ok"], false, "{reload}");
    assert!(
        reload["problems"].to_string().contains("halo.nope"),
        "{reload}"
    );
    let accepted = client
        .post(format!("{public}/triggers/new-ticket-routing"))
        .basic_auth("halo", Some("pw"))
        .json(&sample_payload("halo-new-ticket.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    child.kill().unwrap();
    child.wait().unwrap();
}
