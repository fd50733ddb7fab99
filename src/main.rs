//! The `haloflow` command line: parses arguments, sets up logging, calls the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use haloflow::commands;
use haloflow::engine::ReplayFrom;
use haloflow::storage::{RequestFilter, RunFilter, RunStatus};

#[derive(Parser)]
#[command(
    name = "haloflow",
    version,
    about = "Flow automation for HaloITSM and ServiceNow"
)]
struct Cli {
    /// Log lines on stderr as text (coloured only on a terminal) or as JSON, one object a line.
    #[arg(long, global = true, env = "HALOFLOW_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start local Halo emulators and the server with the example flows, send the sample webhooks
    /// and show the runs.
    Demo {
        #[arg(long, default_value = "flows")]
        flows: PathBuf,
        #[arg(long, default_value = "examples")]
        examples: PathBuf,
        #[arg(long, default_value = "data")]
        data: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Exit after showing the runs.
        #[arg(long)]
        once: bool,
    },
    /// Check flow files and print every problem.
    Validate {
        /// Flow files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Also check connections against this config file.
        #[arg(long, env = "HALOFLOW_CONFIG")]
        config: Option<PathBuf>,
        /// text (coloured on a terminal) or json.
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        format: String,
        /// Validate again whenever a flow file changes.
        #[arg(long)]
        watch: bool,
    },
    /// Run one payload through a flow.
    Run {
        flow: PathBuf,
        #[arg(long)]
        payload: PathBuf,
        /// The trigger URL's query, e.g. "recipients=epearson,antares".
        #[arg(long)]
        query: Option<String>,
        /// Show rendered inputs and the exact requests without sending anything.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, env = "HALOFLOW_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long, default_value = "data")]
        data: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Serve trigger URLs and the API.
    Serve {
        #[arg(long, default_value = "flows")]
        flows: PathBuf,
        #[arg(long, default_value = "data")]
        data: PathBuf,
        #[arg(long, env = "HALOFLOW_CONFIG")]
        config: Option<PathBuf>,
        /// Overrides server.listen from the config.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Overrides server.admin_listen: where the API is served for this machine.
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
        /// Reload flows when their files change (SIGHUP always reloads).
        #[arg(long)]
        watch: bool,
        /// The database: sqlite://<file> or postgres://user@host/db (default: SQLite in --data).
        #[arg(long, env = "HALOFLOW_DATABASE_URL")]
        database: Option<String>,
        /// This node's name in run claims (several nodes on one database need distinct names).
        #[arg(long, env = "HALOFLOW_NODE_ID")]
        node_id: Option<String>,
    },
    /// Print a flow's trigger URL and the Halo webhook settings to enter.
    TriggerUrl {
        /// A flow file, or the id of a flow in --flows.
        flow: String,
        #[arg(long, default_value = "flows")]
        flows: PathBuf,
        /// The address Halo reaches haloflow at (default: server.public_url of --config).
        #[arg(long)]
        base_url: Option<String>,
        /// Names to notify, comma separated (each is URL-encoded).
        #[arg(long, value_delimiter = ',')]
        recipients: Vec<String>,
        /// The agent named in the assigned webhook's event rule.
        #[arg(long)]
        agent: Option<String>,
        /// Print the URL key itself (read from the environment or the config's [secrets]).
        #[arg(long)]
        show_key: bool,
        #[arg(long, env = "HALOFLOW_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Write a new flow from a template into flows/.
    New {
        /// The flow's name; its id and file name are made from it.
        name: String,
        /// halo-create, halo-update or halo-routing.
        #[arg(long, default_value = "halo-create")]
        template: String,
        #[arg(long, default_value = "flows")]
        dir: PathBuf,
    },
    /// Print the editor-facing flow schema (schemas/flow.schema.json) for the registered steps.
    Schema,
    /// Sync back from ServiceNow on demand.
    Integrator {
        #[command(subcommand)]
        command: IntegratorCommand,
    },
    /// Check the connections of the config file.
    Connections {
        #[command(subcommand)]
        command: ConnectionsCommand,
    },
    /// Read the run history.
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// Read the trigger requests received.
    Requests {
        #[command(subcommand)]
        command: RequestsCommand,
    },
}

#[derive(Subcommand)]
enum IntegratorCommand {
    /// Scan for ServiceNow changes now and print what was synced to Halo.
    Run {
        /// One connection, e.g. customers/12 (default: every enabled integrator).
        #[arg(long)]
        connection: Option<String>,
        #[arg(long, env = "HALOFLOW_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long, default_value = "data")]
        data: PathBuf,
        #[arg(long, env = "HALOFLOW_DATABASE_URL")]
        database: Option<String>,
    },
}

#[derive(Subcommand)]
enum ConnectionsCommand {
    /// Prove every Halo and ServiceNow connection's credentials with a cheap authenticated
    /// request; warn about settings that will fail later (a short OAuth token lifespan).
    Check {
        #[arg(long, env = "HALOFLOW_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RunsCommand {
    /// Recent runs, newest first.
    List {
        #[arg(long, default_value = "data")]
        data: PathBuf,
        /// The database URL (default: SQLite in --data).
        #[arg(long, env = "HALOFLOW_DATABASE_URL")]
        database: Option<String>,
        #[arg(long)]
        flow: Option<String>,
        /// queued, running, succeeded or failed.
        #[arg(long, value_parser = parse_status)]
        status: Option<RunStatus>,
        /// Runs created at or after this time (RFC 3339 or unix milliseconds).
        #[arg(long, value_parser = parse_time)]
        since: Option<i64>,
        /// Runs created before this time (RFC 3339 or unix milliseconds).
        #[arg(long, value_parser = parse_time)]
        until: Option<i64>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Start a new run from a finished one, linked to it, and wait for it. Without a flag, a
    /// failed run replays from its failed step, reusing the outputs of the steps before it.
    Replay {
        run_id: String,
        /// Run this step and those after it again; earlier outputs are reused.
        #[arg(long, conflicts_with = "from_trigger")]
        from_step: Option<String>,
        /// Run every step again.
        #[arg(long)]
        from_trigger: bool,
        #[arg(long, default_value = "flows")]
        flows: PathBuf,
        #[arg(long, default_value = "data")]
        data: PathBuf,
        /// The database URL (default: SQLite in --data).
        #[arg(long, env = "HALOFLOW_DATABASE_URL")]
        database: Option<String>,
        #[arg(long, env = "HALOFLOW_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// One run with its steps, inputs, outputs and requests.
    Show {
        run_id: String,
        #[arg(long, default_value = "data")]
        data: PathBuf,
        /// The database URL (default: SQLite in --data).
        #[arg(long, env = "HALOFLOW_DATABASE_URL")]
        database: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum RequestsCommand {
    /// Recent trigger requests, accepted and rejected.
    List {
        #[arg(long, default_value = "data")]
        data: PathBuf,
        /// The database URL (default: SQLite in --data).
        #[arg(long, env = "HALOFLOW_DATABASE_URL")]
        database: Option<String>,
        #[arg(long)]
        flow: Option<String>,
        /// Only requests that flood control suppressed.
        #[arg(long)]
        suppressed: bool,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
}

fn parse_status(text: &str) -> Result<RunStatus, String> {
    RunStatus::parse(text)
        .ok_or_else(|| format!("`{text}` is not one of queued, running, succeeded, failed"))
}

fn parse_time(text: &str) -> Result<i64, String> {
    haloflow::storage::parse_time(text).ok_or_else(|| {
        format!("`{text}` is not a time; use RFC 3339 (2026-11-23T10:00:00Z) or unix milliseconds")
    })
}

/// mimalloc: glibc's malloc took about a quarter of the server's CPU under load (profile in
/// benches/RESULTS.md). The library leaves the allocator to whoever embeds it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// No transparent huge pages for this process: where the kernel applies them to every
/// aligned region (`/sys/kernel/mm/transparent_hugepage/enabled` = always), a few touched
/// kilobytes of the allocator's arenas become 2 MiB resident each, which took the server's
/// RSS under load from about 45 to about 77 MB on the benchmark machine.
#[allow(unsafe_code)] // the one call into libc, documented below
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes no memory we hold.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("haloflow: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("haloflow: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Logs on stderr, filtered by `HALOFLOW_LOG` (default `haloflow=warn`); an invalid filter is
/// reported rather than silently replaced.
fn init_logging(format: &str) {
    use std::io::IsTerminal;
    let filter = match std::env::var("HALOFLOW_LOG") {
        Ok(text) => tracing_subscriber::EnvFilter::try_new(&text).unwrap_or_else(|e| {
            eprintln!("haloflow: HALOFLOW_LOG=`{text}` is not a log filter ({e}); logging haloflow=warn. Example: HALOFLOW_LOG=haloflow=debug");
            "haloflow=warn".into()
        }),
        Err(_) => "haloflow=warn".into(),
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        logs.json().init();
    } else {
        logs.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// Runs the command; `Ok(false)` means it ran and found problems (exit code 1).
async fn dispatch(command: Command) -> Result<bool> {
    let stdout = std::io::stdout();
    let out = &mut stdout.lock();
    Ok(match command {
        Command::Demo {
            flows,
            examples,
            data,
            listen,
            once,
        } => {
            commands::demo(
                &commands::DemoOptions {
                    flows,
                    examples,
                    data_dir: data,
                    listen,
                    once,
                },
                out,
            )
            .await?;
            true
        }
        Command::Validate {
            paths,
            config,
            format,
            watch,
        } => {
            use std::io::IsTerminal;
            let format = match format.as_str() {
                "json" => commands::OutputFormat::Json,
                _ => commands::OutputFormat::Text {
                    color: std::io::stdout().is_terminal()
                        && std::env::var_os("NO_COLOR").is_none(),
                },
            };
            if watch {
                commands::validate_watch(&paths, config.as_deref(), format, out)?;
            }
            commands::validate(&paths, config.as_deref(), format, out)?
        }
        Command::Run {
            flow,
            payload,
            query,
            dry_run,
            config,
            data,
            json,
        } => {
            let options = commands::RunOptions {
                flow,
                payload,
                query,
                dry_run,
                config,
                data_dir: data,
                json,
            };
            commands::run(&options, out).await?
        }
        Command::Serve {
            flows,
            data,
            config,
            listen,
            admin_listen,
            watch,
            database,
            node_id,
        } => {
            commands::serve(
                &commands::ServeOptions {
                    flows,
                    data_dir: data,
                    config,
                    listen,
                    watch,
                    database,
                    node_id,
                    admin_listen,
                },
                out,
            )
            .await?;
            true
        }
        Command::TriggerUrl {
            flow,
            flows,
            base_url,
            recipients,
            agent,
            show_key,
            config,
        } => {
            let options = commands::TriggerUrlOptions {
                flow,
                flows,
                base_url,
                recipients,
                agent,
                show_key,
                config,
            };
            commands::trigger_url(&options, out)?;
            true
        }
        Command::New {
            name,
            template,
            dir,
        } => {
            commands::new_flow(
                &commands::NewOptions {
                    name,
                    template,
                    dir,
                },
                out,
            )?;
            true
        }
        Command::Connections {
            command: ConnectionsCommand::Check { config },
        } => commands::connections_check(config.as_deref(), out).await?,
        Command::Integrator {
            command:
                IntegratorCommand::Run {
                    connection,
                    config,
                    data,
                    database,
                },
        } => {
            commands::integrator_run(
                config.as_deref(),
                &commands::Store::new(data, database),
                connection.as_deref(),
                out,
            )
            .await?
        }
        Command::Schema => {
            let schema =
                haloflow::flow::editor_schema(&haloflow::bundled::integrations().registry());
            use std::io::Write as _;
            writeln!(out, "{}", serde_json::to_string_pretty(&schema)?)?;
            true
        }
        Command::Runs {
            command:
                RunsCommand::List {
                    data,
                    database,
                    flow,
                    status,
                    since,
                    until,
                    limit,
                    json,
                },
        } => {
            commands::runs_list(
                &commands::Store::new(data, database),
                &RunFilter {
                    flow_id: flow,
                    status,
                    since_ms: since,
                    until_ms: until,
                    limit: Some(limit),
                },
                json,
                out,
            )
            .await?;
            true
        }
        Command::Runs {
            command:
                RunsCommand::Show {
                    run_id,
                    data,
                    database,
                    json,
                },
        } => {
            commands::runs_show(&commands::Store::new(data, database), &run_id, json, out).await?;
            true
        }
        Command::Runs {
            command:
                RunsCommand::Replay {
                    run_id,
                    from_step,
                    from_trigger,
                    flows,
                    data,
                    database,
                    config,
                    json,
                },
        } => {
            let from = match (from_step, from_trigger) {
                (Some(step), _) => ReplayFrom::Step(step),
                (None, true) => ReplayFrom::Trigger,
                (None, false) => ReplayFrom::Failure,
            };
            let options = commands::ReplayOptions {
                run_id,
                from,
                flows,
                store: commands::Store::new(data, database),
                config,
                json,
            };
            commands::runs_replay(&options, out).await?
        }
        Command::Requests {
            command:
                RequestsCommand::List {
                    data,
                    database,
                    flow,
                    suppressed,
                    limit,
                    json,
                },
        } => {
            let filter = RequestFilter {
                flow_id: flow,
                suppressed_only: suppressed,
                limit: Some(limit),
            };
            commands::requests_list(&commands::Store::new(data, database), &filter, json, out)
                .await?;
            true
        }
    })
}
