//! `haloflow halo setup` and `haloflow halo check`: the flow's trigger webhooks created,
//! updated, removed and checked through the flow's Halo connection (`haloflow_halo::setup`).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use super::{CommandError, require_config};
use crate::halo::setup::{self, Desired, Existing, HaloRequest, Target};
use crate::halo::{HALO, HaloConnection, HaloConnections};
use crate::internals::connections::Needed;
use crate::internals::flow::ValidatedFlow;
use crate::internals::outbound::Outbound;
use crate::internals::secrets::SecretStore;

#[derive(Debug, clap::Subcommand)]
pub enum HaloCommand {
    /// Create or update the flow's trigger webhooks in Halo (assigned and unassigned agent,
    /// each with the "New Ticket Logged" event and the agent rule).
    Setup(HaloSetupOptions),
    /// Report where the tenant's webhooks differ from what the flow needs, with the fix.
    Check(HaloCheckOptions),
}

/// What both `halo setup` and `halo check` need: the flow, the config, the Halo connection
/// and the trigger URL's address and recipients.
#[derive(Debug, Clone, clap::Args)]
pub struct HaloTargetOptions {
    /// A flow file, or the id of a flow in --flows.
    pub flow: String,
    #[arg(long, default_value = "flows")]
    pub flows: PathBuf,
    #[arg(long, env = "HALOFLOW_CONFIG")]
    pub config: Option<PathBuf>,
    /// The Halo connection (`[halo.<name>]`) that sends the flow's webhooks.
    #[arg(long, default_value = "halo")]
    pub connection: String,
    /// The address Halo reaches haloflow at (default: server.public_url of --config).
    #[arg(long)]
    pub public_url: Option<String>,
    /// Names to notify, comma separated (each is URL-encoded into the webhook's URL). Without
    /// it, the recipients an existing webhook has are kept.
    #[arg(long, value_delimiter = ',')]
    pub recipients: Option<Vec<String>>,
}

/// Options of `haloflow halo setup`.
#[derive(Debug, Clone, clap::Args)]
pub struct HaloSetupOptions {
    #[command(flatten)]
    pub target: HaloTargetOptions,
    /// Print the Halo requests (secrets masked) and send none.
    #[arg(long)]
    pub dry_run: bool,
    /// Delete the webhooks haloflow made for this flow (and nothing else).
    #[arg(long)]
    pub remove: bool,
}

/// Options of `haloflow halo check`.
#[derive(Debug, Clone, clap::Args)]
pub struct HaloCheckOptions {
    #[command(flatten)]
    pub target: HaloTargetOptions,
}

const LIGHTWEIGHT_LOGS: &str = "Note: \"Use lightweight logs\" is not in Halo's published API, so haloflow can neither set nor read it: keep it off in Configuration > Integrations > Webhooks, so deliveries can be re-sent.";

impl HaloCommand {
    pub async fn run(self, out: &mut dyn Write) -> Result<bool, CommandError> {
        match self {
            HaloCommand::Setup(options) => halo_setup(&options, out).await,
            HaloCommand::Check(options) => halo_check(&options.target, out).await,
        }
    }
}

/// The flow, its desired webhooks, what the tenant has, and the connection to reach it.
struct Prepared {
    flow: ValidatedFlow,
    halo: Arc<HaloConnection>,
    http: Outbound,
    desired: Vec<Desired>,
}

async fn prepare(
    options: &HaloTargetOptions,
    command: &'static str,
) -> Result<Prepared, CommandError> {
    let flow = super::authoring::find_flow(&options.flow, &options.flows)?;
    let config = require_config(options.config.as_deref(), command)?;
    let base_url = (options.public_url.clone())
        .or(config.server.public_url.clone())
        .ok_or_else(|| {
            CommandError::Failed(format!(
                "flow `{}`: the webhooks need the address Halo reaches haloflow at; pass --public-url or set server.public_url in the config",
                flow.id()
            ))
        })?;
    let secrets = SecretStore::from_environment(config.secrets.clone());
    let needed = Needed::Only {
        connections: [(HALO.config_table(), options.connection.clone())].into(),
        step_types: Default::default(),
    };
    let connections = super::connections::build_connections(&config, &secrets, &needed)?;
    let halo = connections.halo(&options.connection).map_err(|_| {
        CommandError::Failed(format!(
            "flow `{}`: the config has no [halo.{}]; add it (the Halo that sends the webhooks) or name another with --connection",
            flow.id(),
            options.connection
        ))
    })?;
    let secret = (flow.document.trigger.auth.secret_name()).and_then(|name| secrets.get(name));
    let target = Target {
        flow: &flow,
        base_url: &base_url,
        recipients: options.recipients.as_deref(),
        secret: secret.as_ref(),
    };
    let desired = setup::desired(&target).map_err(|e| CommandError::Failed(e.to_string()))?;
    let http = Outbound::live(reqwest::Client::new());
    Ok(Prepared {
        flow,
        halo,
        http,
        desired,
    })
}

impl Prepared {
    /// The flow's webhooks in the tenant; `None` (with the reason printed) when Halo cannot be
    /// read: a problem of the tenant or the network (exit code 1), not of the command line.
    async fn existing(&self, out: &mut dyn Write) -> std::io::Result<Option<Vec<Existing>>> {
        match setup::read_tenant(&self.halo, &self.http, self.flow.id()).await {
            Ok(existing) => Ok(Some(existing)),
            Err(e) => {
                writeln!(out, "failed: {e}")?;
                Ok(None)
            }
        }
    }
}

/// `haloflow halo setup`: plans, then prints (`--dry-run`) or sends the requests.
pub async fn halo_setup(
    options: &HaloSetupOptions,
    out: &mut dyn Write,
) -> Result<bool, CommandError> {
    let prepared = prepare(&options.target, "`halo setup`").await?;
    let flow = prepared.flow.id();
    let Some(existing) = prepared.existing(out).await? else {
        return Ok(false);
    };
    let requests = if options.remove {
        setup::removal(&existing)
    } else {
        setup::plan(&prepared.desired, &existing)
    };
    if requests.is_empty() {
        let state = if options.remove {
            "has no webhooks of"
        } else {
            "is in step with"
        };
        writeln!(
            out,
            "Halo ([halo.{}]) {state} flow `{flow}`: nothing to do.",
            prepared.halo.name()
        )?;
        return Ok(true);
    }
    if options.dry_run {
        writeln!(
            out,
            "Dry run: these requests would be sent to [halo.{}] (nothing was sent):",
            prepared.halo.name()
        )?;
        print_requests(&requests, out)?;
        return Ok(true);
    }
    send(&prepared, &requests, options.remove, out).await
}

/// Sends the planned requests, printing them and the outcome.
async fn send(
    prepared: &Prepared,
    requests: &[HaloRequest],
    remove: bool,
    out: &mut dyn Write,
) -> Result<bool, CommandError> {
    let (flow, connection) = (prepared.flow.id(), prepared.halo.name());
    writeln!(out, "Requests to [halo.{connection}], in order:")?;
    let sent = setup::apply(&prepared.halo, &prepared.http, flow, requests).await;
    print_requests(requests, out)?;
    if let Err(e) = sent {
        writeln!(
            out,
            "failed: {e}\nThe requests before the failed one were sent; run the command again to finish (it plans from what Halo has)."
        )?;
        return Ok(false);
    }
    let done = if remove { "removed" } else { "set up" };
    writeln!(
        out,
        "Flow `{flow}`'s webhooks are {done} in [halo.{connection}]."
    )?;
    if !remove {
        writeln!(out, "{LIGHTWEIGHT_LOGS}")?;
    }
    Ok(true)
}

fn print_requests(requests: &[HaloRequest], out: &mut dyn Write) -> std::io::Result<()> {
    for request in requests {
        writeln!(out, "  {}", request.masked())?;
    }
    Ok(())
}

/// The `haloflow halo setup` that repairs what `halo check` found: the same flow, recipients,
/// connection and public URL the check was given.
fn setup_command(options: &HaloTargetOptions, flow: &str) -> String {
    let mut command = format!("haloflow halo setup {flow}");
    if let Some(recipients) = &options.recipients {
        command += &format!(" --recipients {}", recipients.join(","));
    }
    if options.connection != "halo" {
        command += &format!(" --connection {}", options.connection);
    }
    if let Some(url) = &options.public_url {
        command += &format!(" --public-url {url}");
    }
    command
}

/// `haloflow halo check`: every drift with its fix; `Ok(false)` when there is any.
pub async fn halo_check(
    options: &HaloTargetOptions,
    out: &mut dyn Write,
) -> Result<bool, CommandError> {
    let prepared = prepare(options, "`halo check`").await?;
    let flow = prepared.flow.id();
    let Some(existing) = prepared.existing(out).await? else {
        return Ok(false);
    };
    let drifts = setup::check(&setup_command(options, flow), &prepared.desired, &existing);
    if drifts.is_empty() {
        writeln!(
            out,
            "Halo ([halo.{}]) is in step with flow `{flow}`.",
            prepared.halo.name()
        )?;
    }
    for drift in &drifts {
        writeln!(out, "drift: {drift}")?;
    }
    writeln!(out, "{LIGHTWEIGHT_LOGS}")?;
    Ok(drifts.is_empty())
}
