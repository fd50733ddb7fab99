//! The examples in `examples/` compile and run: embedding the engine in an axum app, and a
//! custom step registered, validated and run inside a flow.

use std::path::PathBuf;
use std::process::Command;

/// Runs `cargo run --example <name>`'s binary (building it when this test runs alone).
fn run_example(name: &str) -> String {
    let bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_haloflow"))
        .parent()
        .unwrap()
        .to_owned();
    let binary = bin_dir.join("examples").join(name);
    if !binary.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--example", name])
            .status()
            .unwrap();
        assert!(status.success(), "building example {name}");
    }
    let output = Command::new(&binary).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "example {name} failed:\n{text}");
    text
}

#[test]
fn embed_mounts_haloflow_next_to_the_host_routes() {
    let out = run_example("embed");
    assert!(
        out.contains("GET /hello -> hello from the host application"),
        "{out}"
    );
    assert!(out.contains("\"suppressed\":false"), "{out}");
    assert!(out.contains("Succeeded"), "{out}");
    assert!(
        out.contains(
            "Halo received the action: \"Seen by the host application; notify ops, Emma Pearson\""
        ),
        "{out}"
    );
}

#[test]
fn a_custom_step_is_validated_and_runs_inside_a_flow() {
    let out = run_example("custom_step");
    assert!(
        out.contains(
            "rejected as expected: /steps/0/inputs/txt: [invalid_step_input] unknown input `txt`"
        ),
        "{out}"
    );
    assert!(
        out.contains("#agents received: \"Ticket 4242 is yours, agent 3\""),
        "{out}"
    );
    assert!(
        out.contains("#triage received: \"Unassigned ticket 4243: Printer jam\""),
        "{out}"
    );
}
