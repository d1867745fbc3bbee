//! One function per subcommand; `main` dispatches here.

mod edit;
mod events;
mod generate;
mod run;
mod stats;
mod status;

use std::path::PathBuf;

use anyhow::Context as _;

use crate::{
    cli::{Cli, Command},
    config::Config,
    pinned,
    pins::{PinDir, DEFAULT_PIN_DIR},
    privileges,
};

pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let pins = |config_pin_dir: Option<&str>| {
        PinDir::new(
            cli.pin_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(config_pin_dir.unwrap_or(DEFAULT_PIN_DIR))),
        )
    };
    match cli.command {
        Command::Run(ref args) => run::run(args, &cli.pin_dir),
        Command::Attach {
            xdp_mode,
            ref interfaces,
        } => {
            privileges::require(privileges::CHANGE, "apns-agent attach")?;
            let pins = pins(None);
            for interface in interfaces {
                pinned::ifindex(interface)?;
            }
            pins.prepare()?;
            let _lock = pins.lock()?;
            // Keep the pinned program's log level: only `run --ebpf-log` changes it.
            pinned::install(&pins, None)?;
            for interface in interfaces {
                let mode = pinned::attach(&pins, interface, xdp_mode.into())?;
                println!("{interface}: attached ({} mode)", mode.as_str());
            }
            Ok(())
        }
        Command::Detach { ref interfaces } => {
            privileges::require(privileges::CHANGE, "apns-agent detach")?;
            let pins = pins(None);
            let _lock = lock_loaded(&pins)?;
            for interface in interfaces {
                anyhow::ensure!(
                    pins.link_of(interface)?.is_some(),
                    "{interface} is not attached (see `apns-agent status`)"
                );
            }
            for interface in interfaces {
                pinned::detach(&pins, interface)?;
                println!("{interface}: detached");
            }
            Ok(())
        }
        Command::Unload => {
            privileges::require(privileges::CHANGE, "apns-agent unload")?;
            let pins = pins(None);
            if !pins.root().exists() {
                println!("nothing to unload at {}", pins.root().display());
                return Ok(());
            }
            let _lock = pins.lock()?;
            pinned::unload(&pins)?;
            println!(
                "unloaded: no program, link or pin left at {}",
                pins.root().display()
            );
            Ok(())
        }
        Command::Status { json } => status::status(&pins(None), json),
        Command::Allow { ref action } => {
            edit::prefixes(&pins(None), edit::PrefixList::Allow, action)
        }
        Command::Providers { ref action } => {
            edit::prefixes(&pins(None), edit::PrefixList::Providers, action)
        }
        Command::Ports { ref action } => edit::ports(&pins(None), action),
        Command::Mode { mode } => edit::mode(&pins(None), mode.into()),
        Command::Fastpath {
            ref interface,
            mode,
        } => {
            privileges::require(privileges::CHANGE, "apns-agent fastpath")?;
            let pins = pins(None);
            let _lock = lock_loaded(&pins)?;
            pinned::set_fastpath(&pins, interface, mode, None)?;
            println!("{interface}: fast path {}", mode.as_str());
            Ok(())
        }
        Command::Stats {
            json,
            ref interface,
            watch,
        } => stats::stats(&pins(None), json, interface.as_deref(), watch),
        Command::Events { json, count } => events::events(&pins(None), json, count),
        Command::Generate { ref args } => generate::generate(args),
        Command::CheckConfig { ref file } => {
            let config = Config::load(file)?;
            println!(
                "{}: ok ({} interfaces, mode {}, {} allow-list prefixes, {} provider prefixes, {} ports)",
                file.display(),
                config.interfaces.len(),
                config.policy.mode,
                config.policy.allow.len(),
                config.policy.providers.len(),
                config.policy.ports.len()
            );
            Ok(())
        }
    }
}

/// Takes the lock of a loaded datapath; refuses when nothing is loaded.
fn lock_loaded(pins: &PinDir) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    if !pins.is_loaded() {
        // Datapath::open words the refusal; reuse it.
        pinned::Datapath::open(pins)?;
    }
    pins.lock()
        .with_context(|| format!("locking {}", pins.root().display()))
}
