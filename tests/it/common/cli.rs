//! The `haloflow` binary, run as a newcomer would run it.

use std::process::{Command, Output};

/// `haloflow <args>`, without a `HALOFLOW_CONFIG` the caller's environment may set.
pub fn haloflow(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_haloflow"));
    command.args(args).env_remove("HALOFLOW_CONFIG");
    command
}

/// What a command printed, stdout then stderr.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `haloflow <args>`: whether it succeeded, and what it printed.
pub fn run(args: &[&str]) -> (bool, String) {
    let output = haloflow(args).output().unwrap();
    (output.status.success(), text(&output))
}
