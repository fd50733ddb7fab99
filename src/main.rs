//! The `haloflow` command line: parses arguments, sets up logging, calls the library.

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use haloflow::commands::Command;

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
    Ok(command.run(&mut stdout.lock()).await?)
}
