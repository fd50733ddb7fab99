//! The `haloflow` commands, as library functions that write to any output. `main.rs` parses
//! arguments and calls these.

mod authoring;
mod connections;
mod demo;
mod history;
mod render;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use authoring::{NewOptions, TEMPLATES, TriggerUrlOptions, new_flow, slug, trigger_url};
pub use connections::connections_check;
pub use demo::{DemoOptions, demo};
pub use history::{Store, requests_list, runs_list, runs_show};

use crate::config::Config;
use crate::engine::{Engine, EngineError};
use crate::flow::{self, FlowValidator};
use crate::step::StepRegistry;
use crate::storage::{StorageError, StorageSettings};
use crate::trigger::TriggerQuery;

/// A command that could not do its job. The text says what and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
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

/// Loads the config file, or the defaults when none is given.
pub fn load_config(path: Option<&Path>) -> Result<Config, CommandError> {
    Ok(match path {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    })
}

/// Loads the config file a command cannot work without (its connections).
pub fn require_config(path: Option<&Path>, command: &'static str) -> Result<Config, CommandError> {
    let path = path.ok_or(crate::config::ConfigError::NotGiven { command })?;
    Ok(Config::load(path)?)
}

/// How `validate` prints problems.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Lines like a compiler's; `color` adds ANSI colours (for a terminal).
    Text { color: bool },
    /// One JSON document, for tools.
    Json,
}

/// `haloflow validate`: every problem of every flow, then a summary line per valid flow.
/// Returns whether all flows are valid.
pub fn validate(
    paths: &[PathBuf],
    config: Option<&Path>,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<bool, CommandError> {
    let config = config.map(Config::load).transpose()?;
    let registry = StepRegistry::with_builtins();
    let mut validator = FlowValidator::new(&registry);
    if let Some(config) = &config {
        validator = validator.with_config(config);
    }
    let mut files = Vec::new();
    for path in paths {
        files.extend(flow::flow_files(path).map_err(|e| CommandError::Input {
            path: path.clone(),
            message: format!("cannot read: {e}"),
        })?);
    }
    if files.is_empty() {
        return Err(CommandError::Failed(format!(
            "no flow files (*.json) found in {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
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
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&report).expect("report serializes")
            )?;
        }
        OutputFormat::Text { color } => {
            for problem in &problems {
                writeln!(out, "{}", render::problem(problem, color))?;
            }
            for flow in &flows {
                let file = flow
                    .source
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                writeln!(out, "{file}: ok: {}", flow.summary())?;
            }
            if !problems.is_empty() {
                writeln!(
                    out,
                    "{} problem(s) found in {} file(s)",
                    problems.len(),
                    files.len()
                )?;
            }
        }
    }
    Ok(problems.is_empty())
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
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub flow: PathBuf,
    pub payload: PathBuf,
    /// The trigger URL's query, e.g. `recipients=a,b`.
    pub query: Option<String>,
    pub dry_run: bool,
    pub config: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub json: bool,
}

/// `haloflow run`: one payload through one flow, recorded in the run history; with `dry_run`,
/// the rendered inputs and the requests that would be sent, and nothing is sent or stored.
/// Returns whether every run succeeded.
pub async fn run(options: &RunOptions, out: &mut dyn Write) -> Result<bool, CommandError> {
    let config = load_config(options.config.as_deref())?;
    let text = std::fs::read_to_string(&options.payload).map_err(|e| CommandError::Input {
        path: options.payload.clone(),
        message: format!("cannot read the payload: {e}"),
    })?;
    let payload: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| CommandError::Input {
            path: options.payload.clone(),
            message: format!("not valid JSON: {e}"),
        })?;
    let registry = StepRegistry::with_builtins();
    let flow = {
        let validator = FlowValidator::new(&registry).with_config(&config);
        validator
            .validate_file(&options.flow)
            .map_err(EngineError::Flows)?
    };
    let flow_id = flow.id().to_owned();
    let query = TriggerQuery::parse(options.query.as_deref(), None);
    if options.dry_run {
        // A dry run stores nothing; a throwaway in-memory database keeps the engine whole.
        let storage = crate::storage::open_in_memory().await?;
        let engine = engine_for(config, registry, flow, storage, true)?;
        let reports = engine
            .dry_run(&flow_id, &query, payload)
            .await
            .map_err(|e| CommandError::Failed(e.to_string()))?;
        if options.json {
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&reports).expect("reports serialize")
            )?;
        } else {
            for report in &reports {
                render::dry_run(report, out)?;
            }
        }
        return Ok(reports
            .iter()
            .all(|r| r.steps.iter().all(|s| s.error.is_none())));
    }
    let storage = crate::storage::open(&StorageSettings::new(&options.data_dir, None)).await?;
    let engine = engine_for(config, registry, flow, storage, false)?;
    let loaded = engine.flow(&flow_id).expect("the flow was just loaded");
    let accepted = engine
        .accept(&loaded, &query, &text, payload)
        .await
        .map_err(|e| CommandError::Failed(format!("{}: {e}", options.payload.display())))?;
    let mut all_ok = true;
    let mut details = Vec::new();
    for run_id in &accepted.run_ids {
        let detail = engine.wait_for_run(run_id).await?;
        all_ok &= detail.summary.status == crate::storage::RunStatus::Succeeded;
        details.push(detail);
    }
    if options.json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&details).expect("runs serialize")
        )?;
    } else {
        for detail in &details {
            render::run(detail, out)?;
        }
    }
    Ok(all_ok)
}

/// An engine for one flow; the trigger's own secret is not needed when the CLI feeds the payload.
fn engine_for(
    config: Config,
    registry: StepRegistry,
    mut flow: flow::ValidatedFlow,
    storage: Arc<dyn crate::storage::Storage>,
    dry_run: bool,
) -> Result<Engine, CommandError> {
    flow.document.trigger.auth = flow::TriggerAuth::None;
    let mut secrets = crate::secrets::SecretStore::from_environment(config.secrets.clone());
    if dry_run {
        // A dry run sends nothing: connections whose secret is unset still preview (masked).
        let servicenow = config
            .servicenow
            .customers
            .values()
            .chain(config.servicenow.suppliers.values())
            .flat_map(|c| {
                let webhook = c
                    .webhook
                    .iter()
                    .flat_map(|w| [w.secret_name.as_deref(), w.hmac_secret_name.as_deref()]);
                std::iter::once(c.secret_name()).chain(webhook).flatten()
            });
        let names: Vec<String> = config
            .halo
            .values()
            .map(|c| c.client_secret_name.as_str())
            .chain(servicenow)
            .map(str::to_owned)
            .collect();
        for name in names {
            if secrets.get(&name).is_none() {
                secrets.insert(name, "unset");
            }
        }
    }
    Ok(Engine::builder()
        .config(config)
        .only_flow_connections()
        .secrets(secrets)
        .registry(registry)
        .flow(flow)
        .storage(storage)
        .build()?)
}

/// Options of `haloflow runs replay`.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub run_id: String,
    pub from: crate::engine::ReplayFrom,
    pub flows: PathBuf,
    pub store: Store,
    pub config: Option<PathBuf>,
    pub json: bool,
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
        .flows_from(&options.flows)
        .storage(storage)
        .build()?;
    let run_id = engine
        .replay(&options.run_id, options.from.clone())
        .await
        .map_err(|e| CommandError::Failed(e.to_string()))?;
    let detail = engine.wait_for_run(&run_id).await?;
    if options.json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&detail).expect("run serializes")
        )?;
    } else {
        render::run(&detail, out)?;
    }
    Ok(detail.summary.status == crate::storage::RunStatus::Succeeded)
}

/// `haloflow integrator run`: one scan now of every enabled integrator (or of `connection`,
/// e.g. `customers/12`, enabled or not); prints what it did. Returns whether all succeeded.
pub async fn integrator_run(
    config: Option<&Path>,
    store: &Store,
    connection: Option<&str>,
    out: &mut dyn Write,
) -> Result<bool, CommandError> {
    let config = require_config(config, "`integrator run`")?;
    let storage = store.open().await?;
    let engine = Engine::builder().config(config).storage(storage).build()?;
    let mut all_ok = true;
    let mut found = false;
    for sn in engine.connections().servicenow_all() {
        let chosen = match connection {
            Some(wanted) => sn.key() == wanted,
            None => sn.config.integrator.enabled,
        };
        if !chosen {
            continue;
        }
        found = true;
        let every = sn
            .config
            .integrator
            .interval()
            .map_err(|e| CommandError::Failed(format!("{}: {e}", sn.config_table())))?;
        match engine.run_integrator(sn, every).await {
            Ok(Some(report)) => {
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
                    writeln!(
                        out,
                        "  {} {} {}: {:?}{}",
                        outcome.table,
                        outcome.number.as_deref().unwrap_or(&outcome.sys_id),
                        outcome
                            .ticket_id
                            .map(|t| format!("(Halo #{t})"))
                            .unwrap_or_default(),
                        outcome.action,
                        outcome
                            .reason
                            .as_deref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    )?;
                }
                for error in &report.errors {
                    all_ok = false;
                    writeln!(out, "  error: {error}")?;
                }
            }
            Ok(None) => writeln!(
                out,
                "{}: another node is scanning it now (its lease is live)",
                sn.key()
            )?,
            Err(e) => {
                all_ok = false;
                writeln!(out, "{}: failed: {e}", sn.key())?;
            }
        }
    }
    if !found {
        return Err(CommandError::Failed(match connection {
            Some(wanted) => format!("no ServiceNow connection `{wanted}`; use customers/<client id> or suppliers/<supplier id>"),
            None => "no ServiceNow connection has [integrator] enabled = true; name one with --connection".to_owned(),
        }));
    }
    Ok(all_ok)
}

/// Options of `haloflow serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub flows: PathBuf,
    pub data_dir: PathBuf,
    pub config: Option<PathBuf>,
    pub listen: Option<std::net::SocketAddr>,
    /// Reload flows when their files change (SIGHUP always reloads).
    pub watch: bool,
    /// A database URL (overrides `server.database_url`); default SQLite in `data_dir`.
    pub database: Option<String>,
    /// Overrides `server.node_id`.
    pub node_id: Option<String>,
    /// Overrides `server.admin_listen`.
    pub admin_listen: Option<std::net::SocketAddr>,
}

/// `haloflow serve`: serves trigger URLs and the API until Ctrl-C.
pub async fn serve(options: &ServeOptions, out: &mut dyn Write) -> Result<(), CommandError> {
    let mut config = load_config(options.config.as_deref())?;
    if let Some(listen) = options.listen {
        config.server.listen = listen;
    }
    if let Some(node_id) = &options.node_id {
        config.server.node_id = Some(node_id.clone());
    }
    if let Some(admin_listen) = options.admin_listen {
        config.server.admin_listen = admin_listen;
    }
    let database = options
        .database
        .clone()
        .or_else(|| config.server.database_url.clone());
    let mut store = Store::new(options.data_dir.clone(), database.clone());
    store.durability = config.server.durability;
    let storage = store.open().await?;
    let engine = Engine::builder()
        .config(config.clone())
        .flows_from(&options.flows)
        .storage(storage)
        .build()?;
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| {
            CommandError::Failed(format!(
                "cannot listen on {}: {e}; choose another address with --listen",
                config.server.listen
            ))
        })?;
    let addr = listener.local_addr()?;
    let admin = bind_admin(&config.server).await?;
    let admin_addr = admin.local_addr()?;
    let base = config
        .server
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let shown_database = match &database {
        Some(url) => crate::outbound::redact_url(url),
        None => options
            .data_dir
            .join(crate::storage::DATABASE_FILE)
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
    for loaded in engine.flows() {
        let url = render::trigger_url(&base, &loaded.flow, None);
        banner.push_str(&format!("  {url}  {}\n", loaded.flow.document.name));
    }
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
    let listeners = crate::server::Listeners {
        public: listener,
        admin: Some(admin),
    };
    crate::server::serve_listeners(engine.clone(), listeners, shutdown_signal()).await?;
    // New requests are refused from here; steps already sending may finish, then stop.
    engine.shutdown();
    let timeout = std::time::Duration::from_secs(config.server.shutdown_timeout_secs);
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
    Ok(())
}

/// Binds `server.admin_listen`; without API credentials it must be a loopback address, as
/// it then serves the API to anyone who reaches it.
async fn bind_admin(
    server: &crate::config::ServerConfig,
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
