//! `haloflow emulator halo`: the Halo API emulator on a fixed address until Ctrl-C, to try
//! `haloflow halo setup` (or anything else) against it by hand.

use std::io::Write;
use std::net::SocketAddr;

use haloflow_emulators::halo::{HaloEmulator, HaloEmulatorConfig};

use super::CommandError;

#[derive(Debug, clap::Subcommand)]
pub enum EmulatorCommand {
    /// Serve the Halo emulator (held to Halo's published API) until Ctrl-C.
    Halo(HaloEmulatorOptions),
}

/// Options of `haloflow emulator halo`.
#[derive(Debug, Clone, clap::Args)]
pub struct HaloEmulatorOptions {
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub listen: SocketAddr,
    /// The client id of the emulated Halo API application.
    #[arg(long, default_value = "demo")]
    pub client_id: String,
    /// Its client secret.
    #[arg(long, default_value = "demo")]
    pub client_secret: String,
}

impl EmulatorCommand {
    /// Serves until Ctrl-C, then prints what Halo's contract would not take (`Ok(false)` if
    /// anything).
    pub async fn run(self, out: &mut dyn Write) -> Result<bool, CommandError> {
        let EmulatorCommand::Halo(options) = self;
        let emulator = HaloEmulator::new(HaloEmulatorConfig {
            client_id: options.client_id.clone(),
            client_secret: options.client_secret,
            tenant: None,
            token_lifetime_secs: 3600,
        });
        let running = emulator.start_at(options.listen).await?;
        writeln!(
            out,
            "Halo emulator on {} (client id `{}`); Ctrl-C stops it.",
            running.base_url(),
            options.client_id
        )?;
        out.flush()?;
        super::shutdown_signal().await;
        let warnings = emulator.warnings();
        for warning in &warnings {
            writeln!(out, "outside Halo's contract: {warning}")?;
        }
        Ok(warnings.is_empty())
    }
}
