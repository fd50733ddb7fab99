//! The console in a real browser: tests/browser/console_e2e.py drives Chromium through
//! Playwright against a served haloflow with the Halo emulators (log in, a failed run and its
//! replay, trigger setup and test webhook, a suppressed request under its parent).
//! Without python3, Playwright or Chromium it reports that it skipped, unless `CI` is set.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{API_PASSWORD, Harness, Options, sample_payload};

const CHROMIUM: &str = "/usr/bin/chromium";
const SCRIPT: &str = "tests/browser/console_e2e.py";
/// How long the browser may take for all scenarios before the test gives up on it (a hung
/// browser must not hang the test run); the scenarios themselves wait for states.
const BROWSER_LIMIT: Duration = Duration::from_secs(300);
/// The ticket the flood of requests is about (the failed run's is the sample's, 4242).
const FLOOD_TICKET: i64 = 5151;

/// Why the browser tests cannot run here, if they cannot.
fn missing_browser() -> Option<String> {
    let python = Command::new("python3")
        .args(["-c", "import playwright.sync_api"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match python {
        Err(_) => return Some("python3 is not installed".into()),
        Ok(status) if !status.success() => {
            return Some("Playwright for Python is not installed (pip install playwright)".into());
        }
        Ok(_) => {}
    }
    (!Path::new(CHROMIUM).exists())
        .then(|| format!("Chromium is not installed at {CHROMIUM} (apt-get install chromium)"))
}

fn with_credentials(config: &mut haloflow::config::Config) {
    config.server.api.basic_username = Some("ops".into());
    config.server.api.password_secret_name = Some("HALOFLOW_API_PASSWORD".into());
}

/// A run that fails (the partner Halo refuses the ticket), and a flood of requests about one
/// ticket: four run, the rest are suppressed under the fourth.
async fn history(h: &Harness) {
    h.partner.fail_next("POST", "/api/Tickets", 400, 2, None); // twice: a 400 gets one fresh token
    let (status, answer) = h
        .post_json(
            &h.escalate_url("ops"),
            &sample_payload("halo-new-ticket.json"),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let failed = h.wait(answer["run_ids"][0].as_str().unwrap()).await;
    assert_eq!(failed.summary.status.as_str(), "failed", "{failed:?}");

    let mut ticket = sample_payload("halo-new-ticket.json")["ticket"].clone();
    ticket["id"] = json!(FLOOD_TICKET);
    h.halo.insert_ticket(ticket.clone());
    let mut runs = Vec::new();
    let mut suppressed = 0;
    for _ in 0..6 {
        let mut payload = sample_payload("halo-new-ticket.json");
        payload["object_id"] = json!(FLOOD_TICKET);
        payload["ticket"] = ticket.clone();
        let (status, answer) = h.post_json(&h.escalate_url("ops"), &payload).await;
        assert_eq!(status, 202, "{answer}");
        runs.extend(answer["run_ids"].as_array().unwrap().iter().cloned());
        suppressed += usize::from(answer["suppressed"] == Value::Bool(true));
    }
    assert!(
        suppressed > 0,
        "flood control suppressed none of six requests"
    );
    for run in runs {
        h.wait(run.as_str().unwrap()).await;
    }
}

fn run_browser(base: &str, screenshots: &Path) -> (bool, String) {
    let mut child = Command::new("python3")
        .arg(SCRIPT)
        .args(["--base", base, "--user", "ops", "--password", API_PASSWORD])
        .arg("--screenshots")
        .arg(screenshots)
        .args(["--chromium", CHROMIUM])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 starts");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > BROWSER_LIMIT {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    match status {
        Some(status) => (status.success(), text),
        None => (
            false,
            format!("{text}\nthe browser did not finish within {BROWSER_LIMIT:?}"),
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_administrator_finds_a_failed_run_replays_it_sets_up_a_trigger_and_finds_a_suppressed_request()
 {
    if let Some(why) = missing_browser() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but the browser tests cannot run: {why}"
        );
        println!("skipped: {why}");
        return;
    }
    let h = Harness::start_with(Options {
        configure: with_credentials,
        ..Options::default()
    })
    .await;
    history(&h).await;
    let screenshots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    let base = h.api.clone();
    let (passed, output) = tokio::task::spawn_blocking(move || run_browser(&base, &screenshots))
        .await
        .unwrap();
    println!("{output}");
    assert!(passed, "the console's browser scenarios failed:\n{output}");
}
