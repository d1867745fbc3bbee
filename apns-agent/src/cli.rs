//! Command-line definitions (clap). Subcommand names are the contract; flags may grow.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{datapath::EbpfLog, interfaces::FastPath, pinned::XdpModeChoice, policy::Mode};

/// apns-agent: keeps Apple Push Notification service traffic flowing and measured on Linux
/// gateways, with an XDP classifier that counts (and in enforce mode polices) APNs traffic.
#[derive(Parser, Debug)]
#[command(version, propagate_version = true)]
pub struct Cli {
    /// Where programs, links and maps are pinned (bpffs). Overrides the config's pin_dir.
    #[arg(long, global = true, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,

    /// More logging (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Load (or adopt) the datapath, attach it, apply the config, and stay in the foreground.
    /// SIGHUP re-reads the config; SIGTERM/SIGINT leave the datapath attached and enforcing
    /// unless --detach-on-exit.
    Run(RunArgs),
    /// Attach the datapath to interfaces (loading it if nothing is pinned yet).
    Attach {
        #[arg(long, value_enum, default_value = "auto")]
        xdp_mode: XdpModeArg,
        #[arg(required = true, value_name = "IFACE")]
        interfaces: Vec<String>,
    },
    /// Detach the datapath from interfaces.
    Detach {
        #[arg(required = true, value_name = "IFACE")]
        interfaces: Vec<String>,
    },
    /// Detach from every interface and remove every pin: program, links and maps (counters
    /// are lost).
    Unload,
    /// Show interfaces, XDP mode, program, policy mode and allow-list sizes.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Apple's prefixes (the allow-list) of the live datapath.
    Allow {
        #[command(subcommand)]
        action: PrefixAction,
    },
    /// Source prefixes of the MDM servers (the provider list) of the live datapath.
    Providers {
        #[command(subcommand)]
        action: PrefixAction,
    },
    /// The port table of the live datapath.
    Ports {
        #[command(subcommand)]
        action: PortAction,
    },
    /// Set an attached interface's fast path: pass (count only) or redirect (forward APNs
    /// packets from XDP, past netfilter; for routed gateways without NAT on the APNs path).
    Fastpath {
        interface: String,
        #[arg(value_parser = clap::value_parser!(FastPath))]
        mode: FastPath,
    },
    /// Switch the live datapath between monitor and enforce.
    Mode {
        #[arg(value_enum)]
        mode: ModeArg,
    },
    /// Validate a config file without touching the kernel.
    CheckConfig { file: PathBuf },
    /// Stream policy drop events (time, interface, reason, addresses, ports, protocol) as
    /// the datapath reports them: sampled and rate-limited (see run --events-per-second).
    Events {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Exit after this many events.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Print the counters: a table, JSON (--json), or a live view of rates (--watch).
    Stats {
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Only this interface.
        #[arg(long, value_name = "IFACE")]
        interface: Option<String>,
        /// Redraw rates every SECS seconds (default 2) until q or Ctrl-C.
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2", value_parser = clap::value_parser!(u64).range(1..))]
        watch: Option<u64>,
    },
    /// For packagers: man pages and shell completions from these definitions
    /// (`generate man DIR`, `generate completions SHELL DIR`; arguments parsed in cmd/generate.rs).
    #[command(hide = true)]
    Generate {
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<std::ffi::OsString>,
    },
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Config file. Without it, /etc/apns-agent/config.toml is read if present, else the
    /// built-in defaults (Apple's prefixes and ports, monitor mode).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Interface to attach to (repeatable). Replaces the config's interfaces.
    #[arg(long = "iface", value_name = "IFACE")]
    pub interfaces: Vec<String>,
    /// Overrides the config's mode.
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// Overrides the config's xdp_mode.
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpModeArg>,
    /// Fast path of an interface: IFACE=pass or IFACE=redirect (repeatable). Adds to the
    /// config's [fastpath] table.
    #[arg(long = "fastpath", value_name = "IFACE=MODE", value_parser = parse_fastpath)]
    pub fastpath: Vec<(String, FastPath)>,
    /// On SIGTERM/SIGINT, detach from the interfaces this run attached.
    #[arg(long)]
    pub detach_on_exit: bool,
    /// Where to serve Prometheus metrics (GET /metrics).
    #[arg(long, value_name = "ADDR", default_value = crate::telemetry::DEFAULT_METRICS_ADDR)]
    pub metrics_addr: SocketAddr,
    /// Also write the metrics to this file (atomically) for node_exporter's textfile
    /// collector, every --textfile-interval seconds.
    #[arg(long, value_name = "PATH")]
    pub textfile: Option<PathBuf>,
    #[arg(long, value_name = "SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    pub textfile_interval: u64,
    /// Drop events each CPU may report per second (0 turns them off); a flood of
    /// violations costs at most this many ring-buffer writes per CPU and second.
    #[arg(long, value_name = "N", default_value_t = apns_common::events::EventConfig::default().per_cpu_per_second)]
    pub events_per_second: u32,
    /// Consider only every Nth policy drop for an event.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub events_sample_every: u32,
    /// Turn the datapath's own debug log on (forwarded into this process's log) for
    /// debugging; reloads the program when the level changes. Off by default, at no cost.
    #[arg(long, value_enum, default_value = "off")]
    pub ebpf_log: EbpfLog,
    /// Sliding window of apns_reachability_ratio (SYN-ACKs seen / SYNs sent).
    #[arg(long, value_name = "SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub reachability_window: u64,
}

#[derive(Subcommand, Debug)]
pub enum PrefixAction {
    /// Add prefixes (IPv4 or IPv6 CIDR; host bits must be zero).
    Add {
        #[arg(required = true, value_name = "PREFIX")]
        prefixes: Vec<String>,
    },
    /// Remove prefixes.
    Del {
        #[arg(required = true, value_name = "PREFIX")]
        prefixes: Vec<String>,
    },
    /// List the prefixes, one per line.
    List,
}

#[derive(Subcommand, Debug)]
pub enum PortAction {
    /// Add or change ports: PORT or PORT=ROLE[,ROLE] with roles apns, pinhole, provider
    /// (apns is implied).
    Add {
        #[arg(required = true, value_name = "PORT[=ROLES]")]
        ports: Vec<String>,
    },
    /// Remove ports.
    Del {
        #[arg(required = true, value_name = "PORT")]
        ports: Vec<String>,
    },
    /// List the port table.
    List,
}

fn parse_fastpath(text: &str) -> Result<(String, FastPath), String> {
    let (interface, mode) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not IFACE=MODE (e.g. lan0=redirect)"))?;
    crate::config::check_interface_name(interface).map_err(|err| err.to_string())?;
    Ok((
        interface.to_owned(),
        mode.parse().map_err(|err: anyhow::Error| err.to_string())?,
    ))
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ModeArg {
    Monitor,
    Enforce,
}

impl From<ModeArg> for Mode {
    fn from(mode: ModeArg) -> Mode {
        match mode {
            ModeArg::Monitor => Mode::Monitor,
            ModeArg::Enforce => Mode::Enforce,
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum XdpModeArg {
    Auto,
    Native,
    Skb,
}

impl From<XdpModeArg> for XdpModeChoice {
    fn from(mode: XdpModeArg) -> XdpModeChoice {
        match mode {
            XdpModeArg::Auto => XdpModeChoice::Auto,
            XdpModeArg::Native => XdpModeChoice::Native,
            XdpModeArg::Skb => XdpModeChoice::Skb,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn unknown_mode_is_refused() {
        assert!(Cli::try_parse_from(["apns-agent", "mode", "block"]).is_err());
        assert!(Cli::try_parse_from(["apns-agent", "run", "--xdp-mode", "hw"]).is_err());
    }

    #[test]
    fn run_flags_parse() {
        let cli = Cli::try_parse_from([
            "apns-agent",
            "--pin-dir",
            "/sys/fs/bpf/x",
            "run",
            "--iface",
            "eth1",
            "--iface",
            "eth2",
            "--mode",
            "enforce",
            "--xdp-mode",
            "skb",
            "--detach-on-exit",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.interfaces, ["eth1", "eth2"]);
        assert!(args.detach_on_exit);
    }
}
