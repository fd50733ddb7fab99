//! The `haloflow` commands, as library functions that write to any output. Each command's
//! options are a `clap::Args` struct that clap fills straight from the command line;
//! `Command` names them all, and `main.rs` parses it and runs it.

mod authoring;
mod connections;
mod demo;
mod emulator;
mod halo_setup;
mod history;
mod render;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use authoring::{
    NewOptions, TEMPLATES, TriggerUrlOptions, new_flow, schema, slug, trigger_url,
};
pub use connections::{ConnectionsCheckOptions, connections_check};
pub use demo::{DemoOptions, demo};
pub use emulator::{EmulatorCommand, HaloEmulatorOptions};
pub use halo_setup::{
    HaloCheckOptions, HaloCommand, HaloSetupOptions, HaloTargetOptions, halo_check, halo_setup,
};
pub use history::{
    RequestsListOptions, RunsListOptions, RunsShowOptions, Store, requests_list, runs_list,
    runs_show,
};

pub use crate::bundled::integrations;
use crate::internals::config::Config;
use crate::internals::engine::{Engine, EngineError};
use crate::internals::flow::{self, FlowValidator};
use crate::internals::step::StepRegistry;
use crate::internals::storage::{RunDetail, StorageError, StorageSettings};
use crate::internals::trigger::TriggerQuery;
use crate::servicenow::{ServiceNowConnections, ServiceNowEngine};

/// The `haloflow` commands, each with its own options.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Start local Halo emulators and the server with the example flows, send the sample webhooks
    /// and show the runs.
    Demo(DemoOptions),
    /// Check flow files and print every problem.
    Validate(ValidateOptions),
    /// Run one payload through a flow.
    Run(RunOptions),
    /// Serve trigger URLs and the API.
    Serve(ServeOptions),
    /// Print a flow's trigger URL and the Halo webhook settings to enter.
    TriggerUrl(TriggerUrlOptions),
    /// Write a new flow from a template into flows/.
    New(NewOptions),
    /// Print the editor-facing flow schema (schemas/flow.schema.json) for the registered steps.
    Schema,
    /// Sync back from ServiceNow on demand.
    #[command(subcommand)]
    Integrator(IntegratorCommand),
    /// Check the connections of the config file.
    #[command(subcommand)]
    Connections(ConnectionsCommand),
    /// Set up a flow's trigger webhooks in Halo through its API, and check them.
    #[command(subcommand)]
    Halo(HaloCommand),
    /// Serve an API emulator by hand (to try `halo setup` against).
    #[command(subcommand)]
    Emulator(EmulatorCommand),
    /// Read the run history.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Read the trigger requests received.
    #[command(subcommand)]
    Requests(RequestsCommand),
}

#[derive(Debug, clap::Subcommand)]
pub enum IntegratorCommand {
    /// Scan for ServiceNow changes now and print what was synced to Halo.
    Run(IntegratorRunOptions),
}

#[derive(Debug, clap::Subcommand)]
pub enum ConnectionsCommand {
    /// Prove every Halo and ServiceNow connection's credentials with a cheap authenticated
    /// request; warn about settings that will fail later (a short OAuth token lifespan).
    Check(ConnectionsCheckOptions),
}

#[derive(Debug, clap::Subcommand)]
pub enum RunsCommand {
    /// Recent runs, newest first.
    List(RunsListOptions),
    /// Start a new run from a finished one, linked to it, and wait for it. Without a flag, a
    /// failed run replays from its failed step, reusing the outputs of the steps before it.
    Replay(ReplayOptions),
    /// One run with its steps, inputs, outputs and requests.
    Show(RunsShowOptions),
}

#[derive(Debug, clap::Subcommand)]
pub enum RequestsCommand {
    /// Recent trigger requests, accepted and rejected.
    List(RequestsListOptions),
}

impl Command {
    /// Runs the command, writing what it shows to `out`. `Ok(false)`: it ran and found
    /// problems (a flow that does not validate, a run that failed, a connection refused).
    pub async fn run(self, out: &mut dyn Write) -> Result<bool, CommandError> {
        let done = |()| true;
        match self {
            Command::Demo(options) => demo(&options, out).await.map(done),
            Command::Validate(options) => validate_command(&options, out),
            Command::Run(options) => run(&options, out).await,
            Command::Serve(options) => serve(&options, out).await.map(done),
            Command::TriggerUrl(options) => trigger_url(&options, out).map(done),
            Command::New(options) => new_flow(&options, out).map(|_| true),
            Command::Schema => schema(out).map(done),
            Command::Integrator(IntegratorCommand::Run(options)) => {
                integrator_run(&options, out).await
            }
            Command::Connections(ConnectionsCommand::Check(options)) => {
                connections_check(options.config.as_deref(), out).await
            }
            Command::Halo(command) => command.run(out).await,
            Command::Emulator(command) => command.run(out).await,
            Command::Runs(RunsCommand::List(options)) => runs_list(&options, out).await.map(done),
            Command::Runs(RunsCommand::Replay(options)) => runs_replay(&options, out).await,
            Command::Runs(RunsCommand::Show(o)) => {
                runs_show(&o.store, &o.run_id, o.json, out).await.map(done)
            }
            Command::Requests(RequestsCommand::List(options)) => {
                requests_list(&options, out).await.map(done)
            }
        }
    }
}

/// A command that could not do its job. The text says what and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Config(#[from] crate::internals::config::ConfigError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("{path}: {message}")]
    Input { path: PathBuf, message: String },
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Loads and checks the config file (with the bundled integrations' sections), or the
/// defaults when none is given.
pub fn load_config(path: Option<&Path>) -> Result<Config, CommandError> {
    Ok(match path {
        Some(path) => integrations().load_config(path)?,
        None => Config::default(),
    })
}

/// Loads the config file a command cannot work without (its connections).
pub fn require_config(path: Option<&Path>, command: &'static str) -> Result<Config, CommandError> {
    let path = path.ok_or(crate::internals::config::ConfigError::NotGiven { command })?;
    Ok(integrations().load_config(path)?)
}

/// How `validate` prints problems.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Lines like a compiler's; `color` adds ANSI colours (for a terminal).
    Text { color: bool },
    /// One JSON document, for tools.
    Json,
}

/// The output format named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatName {
    Text,
    Json,
}

impl FormatName {
    /// Text is coloured on a terminal, unless `NO_COLOR` is set.
    pub fn for_stdout(self) -> OutputFormat {
        use std::io::IsTerminal;
        match self {
            FormatName::Json => OutputFormat::Json,
            FormatName::Text => OutputFormat::Text {
                color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
            },
        }
    }
}

/// Options of `haloflow validate`.
#[derive(Debug, Clone, clap::Args)]
pub struct ValidateOptions {
    /// Flow files or directories.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Also check connections against this config file.
    #[arg(long, env = "HALOFLOW_CONFIG")]
    pub config: Option<PathBuf>,
    /// text (coloured on a terminal) or json.
    #[arg(long, value_enum, default_value = "text")]
    pub format: FormatName,
    /// Validate again whenever a flow file changes.
    #[arg(long)]
    pub watch: bool,
}

/// `haloflow validate [--watch]`: [`validate`] once, or again on every change with `watch`.
pub fn validate_command(
    options: &ValidateOptions,
    out: &mut dyn Write,
) -> Result<bool, CommandError> {
    let format = options.format.for_stdout();
    let config = options.config.as_deref();
    if options.watch {
        validate_watch(&options.paths, config, format, out)?;
    }
    validate(&options.paths, config, format, out)
}

/// `haloflow validate`: every problem of every flow, then a summary line per valid flow.
/// Returns whether all flows are valid.
pub fn validate(
    paths: &[PathBuf],
    config: Option<&Path>,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<bool, CommandError> {
    let config = config.map(|c| integrations().load_config(c)).transpose()?;
    let registry = integrations().registry();
    let mut validator = FlowValidator::new(&registry);
    if let Some(config) = &config {
        validator = validator.with_config(config);
    }
    let files = flow_files_in(paths)?;
    let (flows, problems) = validator.validate_files(&files);
    match format {
        OutputFormat::Json => {
            let valid: Vec<serde_json::Value> = flows
                .iter()
                .map(
                    |f| serde_json::json!({"file": f.source, "id": f.id(), "summary": f.summary()}),
                )
                .collect();
            let report = serde_json::json!({"valid": valid, "problems": problems});
            write_json(&report, out)?;
        }
        OutputFormat::Text { color } => {
            write_validation(&flows, &problems, files.len(), color, out)?;
        }
    }
    Ok(problems.is_empty())
}

/// The flow files under `paths` (files, or directories of `*.json`); at least one.
fn flow_files_in(paths: &[PathBuf]) -> Result<Vec<PathBuf>, CommandError> {
    let mut files = Vec::new();
    for path in paths {
        files.extend(flow::flow_files(path).map_err(|e| CommandError::Input {
            path: path.clone(),
            message: format!("cannot read: {e}"),
        })?);
    }
    if files.is_empty() {
        let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(CommandError::Failed(format!(
            "no flow files (*.json) found in {}",
            shown.join(", ")
        )));
    }
    Ok(files)
}

/// Problems like a compiler's, then a line per valid flow, then the count.
fn write_validation(
    flows: &[flow::ValidatedFlow],
    problems: &[flow::Problem],
    files: usize,
    color: bool,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    for problem in problems {
        writeln!(out, "{}", render::problem(problem, color))?;
    }
    for flow in flows {
        let file = (flow.source.as_ref())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        writeln!(out, "{file}: ok: {}", flow.summary())?;
    }
    if !problems.is_empty() {
        let count = problems.len();
        writeln!(out, "{count} problem(s) found in {files} file(s)")?;
    }
    Ok(())
}

/// `haloflow validate --watch`: validates, then again whenever a flow file (or the config)
/// changes, until interrupted. Polls twice a second: no platform file-notification needed.
pub fn validate_watch(
    paths: &[PathBuf],
    config: Option<&Path>,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let snapshot = || files_snapshot(paths, config);
    let mut last = None;
    loop {
        let current = snapshot();
        if last.as_ref() != Some(&current) {
            if last.is_some() {
                writeln!(out, "--- changed; validating again ---")?;
            }
            if let Err(e) = validate(paths, config, format, out) {
                writeln!(out, "haloflow: {e}")?;
            }
            out.flush()?;
            last = Some(current);
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

type Snapshot = Vec<(PathBuf, Option<(u64, Option<std::time::SystemTime>)>)>;

/// Size and modification time of every flow file (and the config): a change shows as a
/// different snapshot.
fn files_snapshot(paths: &[PathBuf], config: Option<&Path>) -> Snapshot {
    let mut files: Vec<PathBuf> = paths
        .iter()
        .flat_map(|p| flow::flow_files(p).unwrap_or_default())
        .collect();
    files.extend(config.map(Path::to_owned));
    files
        .into_iter()
        .map(|f| {
            let stamp = std::fs::metadata(&f)
                .ok()
                .map(|m| (m.len(), m.modified().ok()));
            (f, stamp)
        })
        .collect()
}

/// Reloads the engine's flows on SIGHUP and, with `watch`, when a flow file changes. An
/// invalid new version is rejected with its problems and the running one kept.
fn spawn_reloader(engine: Engine, flows: PathBuf, watch: bool) {
    let reload = move |engine: &Engine, why: &str| match engine.reload() {
        Ok(count) => tracing::warn!(flows = count, "Reloaded the flows ({why})."),
        Err(e) => {
            tracing::error!("Kept the running flows: the new version has problems ({why}):\n{e}")
        }
    };
    // Registered here, before serving starts, so an early SIGHUP cannot end the process.
    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hangup) => {
            let engine = engine.clone();
            tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    reload(&engine, "SIGHUP");
                }
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "Cannot listen for SIGHUP; flows reload only with --watch.")
        }
    }
    if watch {
        tokio::spawn(async move {
            let paths = [flows];
            let mut last = files_snapshot(&paths, None);
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                let current = files_snapshot(&paths, None);
                if current != last {
                    reload(&engine, "a flow file changed");
                    last = current;
                }
            }
        });
    }
}

/// Options of `haloflow run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunOptions {
    pub flow: PathBuf,
    #[arg(long)]
    pub payload: PathBuf,
    /// The trigger URL's query, e.g. "recipients=epearson,antares".
    #[arg(long)]
    pub query: Option<String>,
    /// Show rendered inputs and the exact requests without sending anything.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long, env = "HALOFLOW_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long = "data", value_name = "DATA", default_value = "data")]
    pub data_dir: PathBuf,
    #[arg(long)]
    pub json: bool,
}

/// `haloflow run`: one payload through one flow, recorded in the run history; with `dry_run`,
/// the rendered inputs and the requests that would be sent, and nothing is sent or stored.
/// Returns whether every run succeeded.
pub async fn run(options: &RunOptions, out: &mut dyn Write) -> Result<bool, CommandError> {
    let config = load_config(options.config.as_deref())?;
    let (text, payload) = read_payload(&options.payload)?;
    let registry = integrations().registry();
    let flow = FlowValidator::new(&registry)
        .with_config(&config)
        .validate_file(&options.flow)
        .map_err(EngineError::Flows)?;
    let flow_id = flow.id().to_owned();
    let query = TriggerQuery::parse(options.query.as_deref(), None);
    if options.dry_run {
        // A dry run stores nothing; a throwaway in-memory database keeps the engine whole.
        let storage = crate::internals::storage::open_in_memory().await?;
        let engine = engine_for(config, registry, flow, storage, true)?;
        let reports = engine
            .dry_run(&flow_id, &query, payload)
            .await
            .map_err(|e| CommandError::Failed(e.to_string()))?;
        show(&reports[..], options.json, out, |reports, out| {
            reports.iter().try_for_each(|r| render::dry_run(r, out))
        })?;
        let steps = reports.iter().flat_map(|r| &r.steps);
        return Ok(steps.into_iter().all(|s| s.error.is_none()));
    }
    let storage =
        crate::internals::storage::open(&StorageSettings::new(&options.data_dir, None)).await?;
    let engine = engine_for(config, registry, flow, storage, false)?;
    let loaded = engine.flow(&flow_id).expect("the flow was just loaded");
    let accepted = engine
        .accept(&loaded, &query, &text, payload)
        .await
        .map_err(|e| CommandError::Failed(format!("{}: {e}", options.payload.display())))?;
    let mut details = Vec::new();
    for run_id in &accepted.run_ids {
        details.push(engine.wait_for_run(run_id).await?);
    }
    show(&details[..], options.json, out, |details, out| {
        details.iter().try_for_each(|d| render::run(d, out))
    })?;
    let succeeded =
        |d: &RunDetail| d.summary.status == crate::internals::storage::RunStatus::Succeeded;
    Ok(details.iter().all(succeeded))
}

/// The payload file's text and its JSON.
fn read_payload(path: &Path) -> Result<(String, serde_json::Value), CommandError> {
    let text = std::fs::read_to_string(path).map_err(|e| CommandError::Input {
        path: path.to_owned(),
        message: format!("cannot read the payload: {e}"),
    })?;
    let payload = serde_json::from_str(&text).map_err(|e| CommandError::Input {
        path: path.to_owned(),
        message: format!("not valid JSON: {e}"),
    })?;
    Ok((text, payload))
}

/// Writes `value` as pretty JSON (`json`), or as `render` writes it for people.
pub(super) fn show<T: serde::Serialize + ?Sized>(
    value: &T,
    json: bool,
    out: &mut dyn Write,
    render: impl FnOnce(&T, &mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    if json {
        write_json(value, out)
    } else {
        render(value, out)
    }
}

/// Writes `value` as pretty JSON, for tools.
pub(super) fn write_json<T: serde::Serialize + ?Sized>(
    value: &T,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(value).expect("JSON output serializes");
    writeln!(out, "{text}")
}

/// An engine for one flow; the trigger's own secret is not needed when the CLI feeds the payload.
fn engine_for(
    config: Config,
    registry: StepRegistry,
    mut flow: flow::ValidatedFlow,
    storage: Arc<dyn crate::internals::storage::Storage>,
    dry_run: bool,
) -> Result<Engine, CommandError> {
    flow.document.trigger.auth = flow::TriggerAuth::None;
    let mut secrets =
        crate::internals::secrets::SecretStore::from_environment(config.secrets.clone());
    if dry_run {
        // A dry run sends nothing: connections whose secret is unset still preview (masked).
        for name in vendor_secret_names(&config) {
            if secrets.get(&name).is_none() {
                secrets.insert(name, "unset");
            }
        }
    }
    Ok(Engine::builder()
        .config(config)
        .integrations(integrations())
        .only_flow_connections()
        .secrets(secrets)
        .registry(registry)
        .flow(flow)
        .storage(storage)
        .build()?)
}

/// The secret names of the Halo and ServiceNow connections (webhooks included).
fn vendor_secret_names(config: &Config) -> Vec<String> {
    let servicenow: crate::servicenow::ServiceNowConfig = config.section().unwrap_or_default();
    let halo: crate::halo::HaloConfig = config.section().unwrap_or_default();
    let servicenow = (servicenow.customers.values())
        .chain(servicenow.suppliers.values())
        .flat_map(|c| {
            let webhook = c
                .webhook
                .iter()
                .flat_map(|w| [w.secret_name.as_deref(), w.hmac_secret_name.as_deref()]);
            std::iter::once(c.secret_name()).chain(webhook).flatten()
        })
        .map(str::to_owned)
        .collect::<Vec<_>>();
    (halo.values())
        .map(|c| c.client_secret_name.clone())
        .chain(servicenow)
        .collect()
}

/// Options of `haloflow runs replay`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayOptions {
    pub run_id: String,
    /// Run this step and those after it again; earlier outputs are reused.
    #[arg(long, conflicts_with = "from_trigger")]
    pub from_step: Option<String>,
    /// Run every step again.
    #[arg(long)]
    pub from_trigger: bool,
    #[arg(long, default_value = "flows")]
    pub flows: PathBuf,
    #[command(flatten)]
    pub store: Store,
    #[arg(long, env = "HALOFLOW_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

impl ReplayOptions {
    /// Where the replay starts: the named step, the trigger, else the failed step.
    pub fn from(&self) -> crate::internals::engine::ReplayFrom {
        use crate::internals::engine::ReplayFrom;
        match (&self.from_step, self.from_trigger) {
            (Some(step), _) => ReplayFrom::Step(step.clone()),
            (None, true) => ReplayFrom::Trigger,
            (None, false) => ReplayFrom::Failure,
        }
    }
}

/// `haloflow runs replay`: starts the replay in this process and prints it when it ends.
/// Returns whether the new run succeeded.
pub async fn runs_replay(
    options: &ReplayOptions,
    out: &mut dyn Write,
) -> Result<bool, CommandError> {
    let config = require_config(options.config.as_deref(), "`runs replay`")?;
    let storage = options.store.open_existing().await?;
    let engine = Engine::builder()
        .config(config)
        .integrations(integrations())
        .flows_from(&options.flows)
        .storage(storage)
        .build()?;
    let run_id = engine
        .replay(&options.run_id, options.from())
        .await
        .map_err(|e| CommandError::Failed(e.to_string()))?;
    let detail = engine.wait_for_run(&run_id).await?;
    show(&detail, options.json, out, render::run)?;
    Ok(detail.summary.status == crate::internals::storage::RunStatus::Succeeded)
}

/// Options of `haloflow integrator run`.
#[derive(Debug, Clone, clap::Args)]
pub struct IntegratorRunOptions {
    /// One connection, e.g. customers/12 (default: every enabled integrator).
    #[arg(long)]
    pub connection: Option<String>,
    #[arg(long, env = "HALOFLOW_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub store: Store,
}

/// `haloflow integrator run`: one scan now of every enabled integrator (or of `connection`,
/// e.g. `customers/12`, enabled or not); prints what it did. Returns whether all succeeded.
pub async fn integrator_run(
    options: &IntegratorRunOptions,
    out: &mut dyn Write,
) -> Result<bool, CommandError> {
    let connection = options.connection.as_deref();
    let config = require_config(options.config.as_deref(), "`integrator run`")?;
    let storage = options.store.open().await?;
    let engine = Engine::builder()
        .config(config)
        .integrations(integrations())
        .storage(storage)
        .build()?;
    let chosen: Vec<_> = (engine.connections().servicenow_all())
        .filter(|sn| match connection {
            Some(wanted) => sn.key() == wanted,
            None => sn.config.integrator.enabled,
        })
        .collect();
    if chosen.is_empty() {
        return Err(CommandError::Failed(match connection {
            Some(wanted) => format!("no ServiceNow connection `{wanted}`; use customers/<client id> or suppliers/<supplier id>"),
            None => "no ServiceNow connection has [integrator] enabled = true; name one with --connection".to_owned(),
        }));
    }
    let mut all_ok = true;
    for sn in chosen {
        all_ok &= scan_now(&engine, sn, out).await?;
    }
    Ok(all_ok)
}

/// One integrator scan of `sn` now, printed; whether it went without errors.
async fn scan_now(
    engine: &Engine,
    sn: &crate::servicenow::ServiceNowConnection,
    out: &mut dyn Write,
) -> Result<bool, CommandError> {
    let every = (sn.config.integrator.interval())
        .map_err(|e| CommandError::Failed(format!("{}: {e}", sn.config_table())))?;
    match engine.run_integrator(sn, every).await {
        Ok(Some(report)) => {
            write_scan(&report, out)?;
            Ok(report.errors.is_empty())
        }
        Ok(None) => {
            let key = sn.key();
            writeln!(
                out,
                "{key}: another node is scanning it now (its lease is live)"
            )?;
            Ok(true)
        }
        Err(e) => {
            writeln!(out, "{}: failed: {e}", sn.key())?;
            Ok(false)
        }
    }
}

/// What a scan did: counts, then each record's outcome, then the errors.
fn write_scan(
    report: &crate::servicenow::integrator::ScanReport,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    writeln!(
        out,
        "{}: {} record(s): {} ticket(s) created, {} updated, {} note(s), {} unchanged, {} ignored",
        report.connection,
        report.records,
        report.created,
        report.updated,
        report.notes,
        report.unchanged,
        report.ignored
    )?;
    for outcome in &report.outcomes {
        let record = outcome.number.as_deref().unwrap_or(&outcome.sys_id);
        let ticket = (outcome.ticket_id)
            .map(|t| format!("(Halo #{t})"))
            .unwrap_or_default();
        let reason = (outcome.reason.as_deref())
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        let (table, action) = (&outcome.table, &outcome.action);
        writeln!(out, "  {table} {record} {ticket}: {action:?}{reason}")?;
    }
    for error in &report.errors {
        writeln!(out, "  error: {error}")?;
    }
    Ok(())
}

/// Options of `haloflow serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeOptions {
    #[arg(long, default_value = "flows")]
    pub flows: PathBuf,
    #[arg(long = "data", value_name = "DATA", default_value = "data")]
    pub data_dir: PathBuf,
    #[arg(long, env = "HALOFLOW_CONFIG")]
    pub config: Option<PathBuf>,
    /// Overrides server.listen from the config.
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Overrides server.admin_listen: where the API is served for this machine.
    #[arg(long)]
    pub admin_listen: Option<std::net::SocketAddr>,
    /// Reload flows when their files change (SIGHUP always reloads).
    #[arg(long)]
    pub watch: bool,
    /// The database: `sqlite://<file>` or `postgres://user@host/db` (default: SQLite in --data).
    #[arg(
        long,
        env = "HALOFLOW_DATABASE_URL",
        help = "The database: sqlite://<file> or postgres://user@host/db (default: SQLite in --data)"
    )]
    pub database: Option<String>,
    /// This node's name in run claims (several nodes on one database need distinct names).
    #[arg(long, env = "HALOFLOW_NODE_ID")]
    pub node_id: Option<String>,
}

/// `haloflow serve`: serves trigger URLs and the API until Ctrl-C.
pub async fn serve(options: &ServeOptions, out: &mut dyn Write) -> Result<(), CommandError> {
    let config = options.server_config()?;
    let database = (options.database.clone()).or_else(|| config.server.database_url.clone());
    let mut store = Store::new(options.data_dir.clone(), database.clone());
    store.durability = config.server.durability;
    let storage = store.open().await?;
    let engine = Engine::builder()
        .config(config.clone())
        .integrations(integrations())
        .flows_from(&options.flows)
        .storage(storage)
        .build()?;
    let (public, admin) = bind_listeners(&config.server).await?;
    let addrs = (public.local_addr()?, admin.local_addr()?);
    let mut banner = banner(options, &config, &engine, addrs, database.as_deref());
    let (replayed, resumed) = engine.start().await?;
    if replayed > 0 {
        banner.push_str(&format!(
            "flood control: replayed {replayed} run(s) of the last window\n"
        ));
    }
    spawn_reloader(engine.clone(), options.flows.clone(), options.watch);
    if resumed > 0 {
        banner.push_str(&format!(
            "resumed {resumed} unfinished run(s) from before the last stop\n"
        ));
    }
    // Best effort: a server keeps serving when nobody reads its standard output.
    let _ = out.write_all(banner.as_bytes()).and_then(|()| out.flush());
    let listeners = crate::internals::server::Listeners {
        public,
        admin: Some(admin),
    };
    crate::internals::server::serve_listeners(engine.clone(), listeners, shutdown_signal()).await?;
    stop(&engine, &config.server, out).await;
    Ok(())
}

impl ServeOptions {
    /// The config file with the command line's overrides.
    fn server_config(&self) -> Result<Config, CommandError> {
        let mut config = load_config(self.config.as_deref())?;
        if let Some(listen) = self.listen {
            config.server.listen = listen;
        }
        if let Some(node_id) = &self.node_id {
            config.server.node_id = Some(node_id.clone());
        }
        if let Some(admin_listen) = self.admin_listen {
            config.server.admin_listen = admin_listen;
        }
        Ok(config)
    }
}

/// The public listener (`server.listen`) and the admin one (`server.admin_listen`).
async fn bind_listeners(
    server: &crate::internals::config::ServerConfig,
) -> Result<(tokio::net::TcpListener, tokio::net::TcpListener), CommandError> {
    let public = tokio::net::TcpListener::bind(server.listen)
        .await
        .map_err(|e| {
            CommandError::Failed(format!(
                "cannot listen on {}: {e}; choose another address with --listen",
                server.listen
            ))
        })?;
    Ok((public, bind_admin(server).await?))
}

/// What `serve` prints on start: where it listens, its database and node, where the API is,
/// and each flow's trigger URL.
fn banner(
    options: &ServeOptions,
    config: &Config,
    engine: &Engine,
    (addr, admin_addr): (std::net::SocketAddr, std::net::SocketAddr),
    database: Option<&str>,
) -> String {
    let base = (config.server.public_url.clone()).unwrap_or_else(|| format!("http://{addr}"));
    let shown_database = match database {
        Some(url) => crate::internals::outbound::redact_url(url),
        None => (options
            .data_dir
            .join(crate::internals::storage::DATABASE_FILE))
        .display()
        .to_string(),
    };
    let mut banner = format!(
        "haloflow listening on http://{addr} (database {shown_database}, node {})\n",
        engine.node_id()
    );
    banner.push_str(&format!(
        "API on http://{admin_addr}/api{}\n",
        if config.server.api.is_configured() {
            " and on the public listener, with the [server.api] credentials"
        } else {
            " (this machine only; configure [server.api] credentials to serve it publicly)"
        }
    ));
    banner.push_str(&format!(
        "Console on http://{admin_addr}/console/{}\n",
        if config.server.api.is_configured() {
            " and on the public listener: sign in with the [server.api] credentials"
        } else {
            " (this machine only, no sign-in)"
        }
    ));
    for loaded in engine.flows() {
        let url = render::trigger_url(&base, &loaded.flow, None);
        banner.push_str(&format!("  {url}  {}\n", loaded.flow.document.name));
    }
    banner
}

/// Stops the engine after the listeners closed: new requests are refused from here; steps
/// already sending may finish (within `server.shutdown_timeout_secs`), then stop.
async fn stop(
    engine: &Engine,
    server: &crate::internals::config::ServerConfig,
    out: &mut dyn Write,
) {
    engine.shutdown();
    let timeout = std::time::Duration::from_secs(server.shutdown_timeout_secs);
    let left = engine.drain(timeout).await;
    let message = if left == 0 {
        "haloflow stopped; every run is finished or resumes on the next start\n".to_owned()
    } else {
        format!(
            "haloflow stopped after {}s with {left} run(s) still sending; they resume on the next start\n",
            timeout.as_secs()
        )
    };
    let _ = out.write_all(message.as_bytes()).and_then(|()| out.flush());
}

/// Binds `server.admin_listen`; without API credentials it must be a loopback address, as
/// it then serves the API to anyone who reaches it.
async fn bind_admin(
    server: &crate::internals::config::ServerConfig,
) -> Result<tokio::net::TcpListener, CommandError> {
    let addr = server.admin_listen;
    if !server.api.is_configured() && !addr.ip().is_loopback() {
        return Err(CommandError::Failed(format!(
            "server.admin_listen = {addr} is not a loopback address, and the API has no credentials; use 127.0.0.1:<port>, or configure [server.api] token_secret_name"
        )));
    }
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        CommandError::Failed(format!(
            "cannot listen on {addr} for the API: {e}; choose another address with --admin-listen (127.0.0.1:0 picks a free port)"
        ))
    })
}

/// Completes on Ctrl-C (and SIGTERM on Unix).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
