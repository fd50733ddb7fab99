//! The console in a real browser: tests/browser/console_e2e.py drives Chromium through
//! Playwright against a served haloflow with the Halo emulators (log in, a failed run and its
//! replay, trigger setup and test webhook, a suppressed request under its parent).
//! Without python3, Playwright or Chromium it reports that it skipped, unless `CI` is set.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use haloflow::halo::HaloConfig;
use haloflow_emulators::{Fault, Hold};
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

/// What the script prints when the replayed run is seen running: the test then lets the
/// partner Halo answer the request it holds, and the page must show the run succeed by itself.
const RELEASE_MARKER: &str = "waiting: release the replay";

/// API credentials (the console asks to sign in), and a partner Halo that may take as long as
/// the browser needs to see the held replay running.
fn configure(config: &mut haloflow::config::Config) {
    config.server.api.basic_username = Some("ops".into());
    config.server.api.password_secret_name = Some("HALOFLOW_API_PASSWORD".into());
    config
        .edit_section(|halo: &mut HaloConfig| {
            if let Some(partner) = halo.get_mut("partner_halo") {
                partner.timeout_secs = 120;
            }
        })
        .unwrap();
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

/// Runs the scenarios; releases `hold` when the script says the replay is seen running.
fn run_browser(base: &str, screenshots: &Path, hold: &Hold) -> (bool, String) {
    let mut child = Command::new("python3")
        .arg(SCRIPT)
        .args(["--base", base, "--user", "ops", "--password", API_PASSWORD])
        .arg("--screenshots")
        .arg(screenshots)
        .args(["--chromium", CHROMIUM, "--held-replay"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut text);
        text
    });
    let watchdog = Watchdog::start(child);
    let mut text = String::new();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if line.contains(RELEASE_MARKER) {
            hold.release();
        }
        text.push_str(&line);
        text.push('\n');
    }
    // The held request must not outlive the script (a failed scenario never asks).
    hold.release();
    let passed = watchdog.finish();
    text.push_str(&errors.join().unwrap_or_default());
    if passed.is_none() {
        text.push_str(&format!(
            "\nthe browser did not finish within {BROWSER_LIMIT:?}"
        ));
    }
    (passed == Some(true), text)
}

/// Kills the script if it runs past [`BROWSER_LIMIT`] (a hung browser must not hang the test
/// run); its output then ends and the reader above stops.
struct Watchdog {
    thread: std::thread::JoinHandle<Option<bool>>,
}

impl Watchdog {
    fn start(mut child: Child) -> Watchdog {
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    return Some(status.success());
                }
                if started.elapsed() > BROWSER_LIMIT {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Watchdog { thread }
    }

    fn finish(self) -> Option<bool> {
        self.thread.join().unwrap_or(None)
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
        configure,
        ..Options::default()
    })
    .await;
    history(&h).await;
    // The next ticket the partner Halo is asked to create is the replay's: it waits until the
    // browser has shown the replayed run running.
    let hold: Arc<Hold> = Hold::new();
    h.partner.inject(
        "POST",
        "/api/Tickets",
        Fault::HoldBeforeProcessing(hold.clone()),
        1,
    );
    let screenshots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    let base = h.api.clone();
    let (passed, output) =
        tokio::task::spawn_blocking(move || run_browser(&base, &screenshots, &hold))
            .await
            .unwrap();
    println!("{output}");
    assert!(passed, "the console's browser scenarios failed:\n{output}");
}
