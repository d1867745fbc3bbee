//! One file per subcommand; this module dispatches, and turns clap's types into settings'
//! plain values (`settings` knows nothing of the command line). `live` holds the protocol
//! the subcommands that change a running datapath share.

mod attach;
mod check_config;
mod clients;
mod detach;
mod doctor;
mod events;
mod fastpath;
mod generate;
mod live;
mod policy;
mod replay;
mod run;
mod stats;
mod status;
mod unload;

use std::process::ExitCode;

use crate::{
    cli::{Cli, Command, Global, RunArgs},
    settings::{Flags, RunFlags},
};

/// Runs the subcommand; its exit code on success (only `doctor` has others than 0).
pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let Cli { global, command } = cli;
    let done = match command {
        Command::Run(args) => run::run(&global, &args),
        Command::Attach {
            xdp_mode,
            sharing,
            interfaces,
        } => attach::attach(&global, xdp_mode, &sharing, &interfaces),
        Command::Detach { interfaces } => detach::detach(&global, &interfaces),
        Command::Unload => unload::unload(&global),
        Command::Status { json } => status::status(&global, json),
        Command::Allow { action } => policy::prefixes(&global, policy::PrefixList::Allow, &action),
        Command::Providers { action } => {
            policy::prefixes(&global, policy::PrefixList::Providers, &action)
        }
        Command::Ports { action } => policy::ports(&global, &action),
        Command::Mode { mode } => policy::mode(&global, mode),
        Command::Fastpath { interface, mode } => fastpath::fastpath(&global, &interface, mode),
        Command::CheckConfig { file } => check_config::check_config(&file),
        Command::Doctor(args) => return doctor::doctor(&global, &args),
        Command::Replay {
            file,
            mode,
            json,
            frames,
        } => replay::replay(&global, &file, mode, json, frames),
        Command::Events { json, count } => events::events(&global, json, count),
        Command::Stats {
            json,
            all,
            interface,
            watch,
        } => stats::stats(&global, json, all, interface.as_deref(), watch),
        Command::Clients {
            json,
            watch,
            device,
        } => clients::clients(&global, json, watch, device),
        Command::Generate { args } => generate::generate(&args),
    };
    done.map(|()| ExitCode::SUCCESS)
}

impl From<&Global> for Flags {
    fn from(global: &Global) -> Flags {
        Flags {
            config: global.config.clone(),
            pin_dir: global.pin_dir.clone(),
        }
    }
}

impl From<&RunArgs> for RunFlags {
    fn from(run: &RunArgs) -> RunFlags {
        RunFlags {
            interfaces: run.interfaces.clone(),
            mode: run.mode,
            xdp_mode: run.xdp_mode,
            xdp_multiprog: run.sharing.xdp_multiprog,
            xdp_priority: run.sharing.xdp_priority,
            fastpath: run.fastpath.clone(),
            roles: run.roles.clone(),
            events_per_second: run.events_per_second,
            events_sample_every: run.events_sample_every,
        }
    }
}
