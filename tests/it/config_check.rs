//! The whole config is checked before anything runs: every problem at once, at its key path,
//! with the fix; commands that need a config say so when none is given; a command asks only
//! for the secrets it needs.

use std::sync::Arc;

use haloflow::engine::Engine;
use haloflow::secrets::SecretStore;
use haloflow::storage::SqliteStorage;

use crate::common::cli::{haloflow, text};

/// A config that parses but cannot work, in five places.
const BROKEN: &str = r#"
[halo.halo]
base_url = "acme.haloitsm.com"
client_id = "abc"
client_secret_name = "HALO_CLIENT_SECRET"

[http.crm]
base_url = "not a url"
basic_username = "svc"

[servicenow.customers."12"]
instance_url = "https://acme.service-now.com"
auth = "oauth"
client_secret_name = "SN"
integrator = { every = "banana" }
"#;

const EXPECTED: [&str; 5] = [
    "[halo.halo].base_url: `acme.haloitsm.com` is not an http(s) URL; write https://",
    "[http.crm].base_url: `not a url` is not an http(s) URL",
    "[http.crm].basic_password_secret_name: is missing; basic_username needs it",
    "[servicenow.customers.\"12\"].client_id: is missing; auth = \"oauth\" needs",
    "[servicenow.customers.\"12\"].integrator.every: `banana` is not an interval; write a number with s, m, h or d",
];

#[test]
fn every_problem_of_the_config_is_reported_at_its_key_path() {
    let err = haloflow::bundled::integrations()
        .parse_config(BROKEN)
        .unwrap_err();
    for expected in EXPECTED {
        assert!(err.contains(expected), "{expected}\nin\n{err}");
    }
    // A config built in code is checked too, before the engine is built.
    let mut config = haloflow::bundled::integrations().parse_config("").unwrap();
    config
        .edit_section(|halo: &mut haloflow::halo::HaloConfig| {
            halo.insert(
                "halo".into(),
                haloflow::halo::HaloConnectionConfig::new("ftp://x", "id", "S"),
            );
        })
        .unwrap();
    let problems = haloflow::bundled::integrations().problems(&config);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].key, "[halo.halo].base_url");
}

#[test]
fn validate_serve_run_and_connections_check_refuse_a_broken_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("haloflow.toml");
    std::fs::write(&config, BROKEN).unwrap();
    let config = config.to_str().unwrap();
    let data = dir.path().to_str().unwrap();
    let commands: [&[&str]; 4] = [
        &["validate", "flows", "--config", config],
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data",
            data,
            "--config",
            config,
        ],
        &[
            "run",
            "flows/new-ticket-routing.json",
            "--payload",
            "examples/halo-new-ticket.json",
            "--data",
            data,
            "--config",
            config,
        ],
        &["connections", "check", "--config", config],
    ];
    for args in commands {
        let output = haloflow(args).output().unwrap();
        let out = text(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {out}");
        assert!(out.contains("5 problem(s)"), "{args:?}: {out}");
        for expected in EXPECTED {
            assert!(out.contains(expected), "{args:?}: {expected}\nin\n{out}");
        }
    }
}

#[test]
fn commands_that_need_a_config_say_when_none_was_given() {
    let data = tempfile::tempdir().unwrap();
    let data = data.path().to_str().unwrap();
    for args in [
        &["runs", "replay", "some-run", "--data", data][..],
        &["connections", "check"][..],
    ] {
        let output = haloflow(args).output().unwrap();
        let out = text(&output);
        assert_ne!(output.status.code(), Some(0), "{args:?}: {out}");
        assert!(
            out.contains("no config given")
                && out.contains("--config")
                && out.contains("HALOFLOW_CONFIG"),
            "{args:?}: {out}"
        );
        assert!(!out.contains("problem(s) in the flows"), "{out}");
        assert!(!out.contains("no connections"), "{out}");
    }
}

#[tokio::test]
async fn one_flow_needs_only_its_connections_secrets() {
    let config = haloflow::bundled::integrations()
        .load_config("examples/haloflow.toml".as_ref())
        .unwrap();
    let registry = haloflow::bundled::integrations().registry();
    let flow = haloflow::flow::FlowValidator::new(&registry)
        .with_config(&config)
        .validate_file("flows/new-ticket-routing.json".as_ref())
        .unwrap();
    let mut secrets = SecretStore::default();
    secrets.insert("HALO_CLIENT_SECRET", "set");
    secrets.insert("HALOFLOW_ROUTING_PASSWORD", "set");
    let build = |only: bool| {
        let mut builder = Engine::builder()
            .integrations(haloflow::bundled::integrations())
            .config(config.clone())
            .secrets(secrets.clone())
            .flow(flow.clone());
        if only {
            builder = builder.only_flow_connections();
        }
        async move {
            let storage = Arc::new(SqliteStorage::in_memory().await.unwrap());
            builder.storage(storage).build()
        }
    };
    let Err(all) = build(false).await else {
        panic!("serve needs every secret");
    };
    let all = all.to_string();
    assert!(all.contains("PARTNER_HALO_CLIENT_SECRET"), "{all}");
    assert!(all.contains("ACME_SERVICENOW_PASSWORD"), "{all}");
    build(true)
        .await
        .expect("the routing flow uses [halo.halo] only");
}

/// Seen: a sync-back `webhook` table without `secret_name` or `hmac_secret_name` was accepted,
/// and an anonymous POST created a Halo ticket. Every command refuses such a config.
#[test]
fn a_webhook_without_a_secret_is_refused_at_its_key_path() {
    let text = "[servicenow.customers.\"12\"]\ninstance_url = \"https://acme.service-now.com\"\nauth = \"basic\"\nusername = \"u\"\npassword_secret_name = \"P\"\nwebhook = { ticket_type_id = 1 }\n";
    let err = haloflow::bundled::integrations()
        .parse_config(text)
        .unwrap_err();
    assert!(
        err.contains("[servicenow.customers.\"12\"].webhook.secret_name: is missing"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("haloflow.toml");
    std::fs::write(&config, text).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_haloflow"))
        .args([
            "serve",
            "--flows",
            "flows",
            "--listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(dir.path())
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("webhook.secret_name"), "{stderr}");
}
