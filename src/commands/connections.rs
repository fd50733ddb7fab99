//! `haloflow connections check`: proves each configured connection's credentials with a cheap
//! authenticated request, and reports what would go wrong before a flow finds out.

use std::io::Write;
use std::path::Path;

use super::{CommandError, require_config};
use crate::halo::HaloConnections;
use crate::internals::connections::Needed;
use crate::internals::outbound::Outbound;
use crate::internals::secrets::SecretStore;
use crate::servicenow::ServiceNowConnections;

/// Options of `haloflow connections check`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionsCheckOptions {
    #[arg(long, env = "HALOFLOW_CONFIG")]
    pub config: Option<std::path::PathBuf>,
}

/// The bundled integrations' connections that `needed` names; every missing secret at once.
pub(super) fn build_connections(
    config: &crate::internals::config::Config,
    secrets: &SecretStore,
    needed: &Needed,
) -> Result<crate::internals::connections::Connections, CommandError> {
    (super::integrations().connections(config, secrets, needed)).map_err(|missing| {
        let lines: Vec<String> = missing.iter().map(ToString::to_string).collect();
        CommandError::Failed(lines.join("\n"))
    })
}

/// Checks every Halo and ServiceNow connection; returns whether all passed.
pub async fn connections_check(
    config: Option<&Path>,
    out: &mut dyn Write,
) -> Result<bool, CommandError> {
    let config = require_config(config, "`connections check`")?;
    let secrets = SecretStore::from_environment(config.secrets.clone());
    let connections = build_connections(&config, &secrets, &Needed::All)?;
    let client = reqwest::Client::new();
    let mut all_ok = true;
    for halo in connections.halo_all() {
        let http = Outbound::live(client.clone());
        match halo.check(&http).await {
            Ok(()) => writeln!(out, "[halo.{}]: ok", halo.name())?,
            Err(e) => {
                all_ok = false;
                writeln!(out, "[halo.{}]: failed: {e}", halo.name())?;
            }
        }
    }
    for sn in connections.servicenow_all() {
        let http = Outbound::live(client.clone());
        match sn.check(&http).await {
            Ok(report) => {
                let lifespan = report
                    .token_lifespan_secs
                    .map(|s| format!(" (OAuth token lifespan {s} s)"))
                    .unwrap_or_default();
                writeln!(out, "{}: ok{lifespan}", sn.config_table())?;
                writeln!(out, "  notes: {}", report.notes)?;
                for warning in report.warnings {
                    writeln!(out, "  warning: {warning}")?;
                }
            }
            Err(e) => {
                all_ok = false;
                writeln!(out, "{}: failed: {e}", sn.config_table())?;
            }
        }
    }
    if connections.halo_all().next().is_none() && connections.servicenow_all().next().is_none() {
        writeln!(out, "no connections in the config file")?;
    }
    Ok(all_ok)
}
