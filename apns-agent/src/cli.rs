//! Command-line definitions (clap): the flags, their help, and nothing else. Subcommand names
//! are the contract; flags may grow. Values of the kernel contract (policy mode, fast path,
//! XDP mode, log level) parse through their one type ([`crate::label`]).

use std::{net::SocketAddr, path::PathBuf};

use apns_common::{fastpath::FastPath, label::Label, policy::Mode};
use clap::{Args, Parser, Subcommand};

use crate::{
    datapath::{
        interfaces::InterfaceRole, links::check_interface_name, multiprog::Multiprog, EbpfLog,
        XdpMode,
    },
    label,
};

/// apns-agent: keeps Apple Push Notification service traffic flowing and measured on Linux
/// gateways, with an XDP classifier that counts (and in enforce mode polices) APNs traffic.
#[derive(Parser, Debug)]
#[command(version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,

    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand takes.
#[derive(Args, Debug, Default, Clone)]
pub struct Global {
    /// Config file. Default: /etc/apns-agent/config.toml when it exists, else the built-in
    /// defaults (Apple's prefixes and ports, monitor mode). Every subcommand reads it (for
    /// pin_dir, at least; `unload` reads nothing else of it); `run` applies it.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Where programs, links and maps are pinned (bpffs). Overrides the config's pin_dir
    /// (default /sys/fs/bpf/apns-agent).
    #[arg(long, global = true, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,

    /// More logging (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Sharing an interface's XDP hook with other programs (libxdp's multiprog dispatcher).
#[derive(Args, Clone, Debug, Default)]
pub struct SharingArgs {
    /// Overrides the config's xdp_multiprog: auto joins the libxdp dispatcher an interface
    /// runs (xdp-filter, xdp-loader) and takes a free interface alone; never refuses an
    /// interface that runs one; always runs as a dispatcher component, so that libxdp
    /// programs can join later. A shared interface runs the pass fast path.
    #[arg(long, value_parser = label::value_parser::<Multiprog>())]
    pub xdp_multiprog: Option<Multiprog>,
    /// Overrides the config's xdp_priority: our place in a libxdp dispatcher (lower runs
    /// first; default 50, after xdp-filter's 10).
    #[arg(long, value_name = "N")]
    pub xdp_priority: Option<u32>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Load (or adopt) the datapath, attach it, apply the config, and stay in the foreground.
    /// SIGHUP re-reads the config; SIGTERM/SIGINT leave the datapath attached and enforcing
    /// unless --detach-on-exit. Live changes made with the other subcommands survive a
    /// restart until the config's same setting changes (see `status`). An interface that
    /// does not exist is reported as missing (log, `status`, /metrics) and attached when it
    /// appears; the others are attached and enforced all the same (and `run` starts even
    /// when none exists yet).
    Run(RunArgs),
    /// Attach the datapath to interfaces (loading it if nothing is pinned yet).
    Attach {
        #[arg(long, value_parser = label::value_parser::<XdpMode>(), default_value = "auto")]
        xdp_mode: XdpMode,
        #[command(flatten)]
        sharing: SharingArgs,
        #[arg(required = true, value_name = "IFACE")]
        interfaces: Vec<String>,
    },
    /// Detach the datapath from interfaces. A missing interface (wanted but not there: see
    /// `status`) is no longer wanted afterwards.
    Detach {
        #[arg(required = true, value_name = "IFACE")]
        interfaces: Vec<String>,
    },
    /// Detach from every interface and remove every pin: programs, links and maps (counters
    /// are lost), and the record of live changes. Refuses, removing nothing, a pin directory
    /// that holds anything but apns-agent's pins, is not on bpffs, or is bpffs' root. Reads
    /// only pin_dir from the config: a config with broken lists or prefixes still unloads.
    Unload,
    /// Show interfaces, XDP mode, programs, policy mode and allow-list sizes, where each
    /// part of the live policy came from, and the kernel's optional features (probed) with the
    /// way each fast path takes.
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
    /// Set an attached interface's fast path: pass (count only), mark (set skb->mark on
    /// APNs packets for netfilter and policy routing; works with NAT) or redirect (forward
    /// APNs packets from XDP, or from TC while the next hop is being resolved, past
    /// netfilter; for routed gateways without NAT on the APNs path).
    Fastpath {
        interface: String,
        #[arg(value_parser = label::value_parser::<FastPath>())]
        mode: FastPath,
    },
    /// Switch the live datapath between monitor and enforce.
    Mode {
        #[arg(value_parser = label::value_parser::<Mode>())]
        mode: Mode,
    },
    /// Validate a config file without touching the kernel.
    CheckConfig { file: PathBuf },
    /// Check, changing nothing, whether the agent will work on this host: the kernel's
    /// features (probed), the verifier's verdict on every program of the datapath (loaded
    /// into a private instance, attached nowhere), bpffs, BTF, capabilities, config,
    /// forwarding, conntrack, the metrics address, and per interface its link, MTU, driver
    /// and XDP features, the XDP programs already on it and rp_filter. One line per check:
    /// ok, warn or fail, and the fix. Sends nothing unless --probe. Exit 0: all ok; 1:
    /// warnings; 2: failures (a command-line error exits 2 too, with nothing on standard
    /// output).
    Doctor(DoctorArgs),
    /// A dry run: every frame of a pcap or pcapng capture (Ethernet, or Linux cooked from
    /// `tcpdump -i any`) through the real XDP program in a private instance loaded with the
    /// config's policy (BPF_PROG_TEST_RUN: nothing attached, no pin touched, no packet
    /// sent). Prints the counters as `stats` does, under the capture's name, and what
    /// enforce would have dropped.
    Replay {
        /// The capture file.
        #[arg(value_name = "CAPTURE")]
        file: PathBuf,
        /// Overrides the config's mode.
        #[arg(long, value_parser = label::value_parser::<Mode>())]
        mode: Option<Mode>,
        /// The report as JSON (the counters in the shape of `stats --json`).
        #[arg(long)]
        json: bool,
        /// Also each frame's verdict: XDP action and counted outcome.
        #[arg(long)]
        frames: bool,
    },
    /// Stream policy drop events (time, interface, reason, addresses, ports, protocol) as
    /// the datapath reports them: sampled and rate-limited (see run --events-per-second).
    /// A drop that concerns a device the connection table knows carries its finding (see
    /// `clients`).
    Events {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Exit after this many events.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Print the counters: a table, JSON (--json), or a live view of rates (--watch). The
    /// table leaves out rows whose counts are all zero and says how many; --all shows every
    /// row. JSON and /metrics always have every series.
    Stats {
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Every row of the table, all-zero ones included.
        #[arg(long, conflicts_with_all = ["json", "watch"])]
        all: bool,
        /// Only this interface.
        #[arg(long, value_name = "IFACE")]
        interface: Option<String>,
        /// Redraw rates every SECS seconds (default 2) until q or Ctrl-C.
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2", value_parser = clap::value_parser!(u64).range(1..))]
        watch: Option<u64>,
    },
    /// Which devices behind the gateway reach APNs, and why not: one line per device address,
    /// worst first (open connections and since when, last handshake, failed handshakes,
    /// resets, idle cuts, 443 fallbacks, bytes) and a finding in words: ok, no answer from
    /// Apple, reset by Apple, reset by the network, cut while idle after ~N min, falls back
    /// to 443, never connected. From the datapath's connection table (interfaces with the
    /// `devices` role feed it); the rules are in docs/clients.md.
    Clients {
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Redraw every SECS seconds (default 2) until q or Ctrl-C.
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2", value_parser = clap::value_parser!(u64).range(1..))]
        watch: Option<u64>,
        /// Only this device (its IPv4 or IPv6 address), with each of its connections.
        #[arg(long, value_name = "ADDR", value_parser = parse_device)]
        device: Option<std::net::IpAddr>,
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

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Interface to attach to (repeatable). Replaces the config's interfaces.
    #[arg(long = "iface", value_name = "IFACE")]
    pub interfaces: Vec<String>,
    /// Overrides the config's mode.
    #[arg(long, value_parser = label::value_parser::<Mode>())]
    pub mode: Option<Mode>,
    /// Overrides the config's xdp_mode.
    #[arg(long, value_parser = label::value_parser::<XdpMode>())]
    pub xdp_mode: Option<XdpMode>,
    #[command(flatten)]
    pub sharing: SharingArgs,
    /// Fast path of an interface: IFACE=pass, IFACE=mark or IFACE=redirect (repeatable).
    /// Adds to the config's [fastpath] table.
    #[arg(long = "fastpath", value_name = "IFACE=MODE", value_parser = parse_fastpath)]
    pub fastpath: Vec<(String, FastPath)>,
    /// Role of an interface for the connection table (`apns-agent clients`): IFACE=devices
    /// (faces the devices: the LAN side) or IFACE=upstream (repeatable). Adds to the
    /// config's [roles] table; interfaces named nowhere are upstream.
    #[arg(long = "role", value_name = "IFACE=ROLE", value_parser = parse_role)]
    pub roles: Vec<(String, InterfaceRole)>,
    /// On SIGTERM/SIGINT, detach from the interfaces this run attached.
    #[arg(long)]
    pub detach_on_exit: bool,
    /// Where to serve Prometheus metrics (GET /metrics).
    #[arg(long, value_name = "ADDR", default_value = crate::telemetry::DEFAULT_METRICS_ADDR)]
    pub metrics_addr: SocketAddr,
    /// TLS and basic auth for /metrics, from a web config file in Prometheus exporter-toolkit's
    /// format (tls_server_config: cert_file, key_file, client_auth_type, client_ca_file;
    /// basic_auth_users: user: bcrypt hash). Re-read on SIGHUP (a bad file is logged and the
    /// one in force stays). An address that fails 5 logins is refused (429) for a while.
    #[arg(long, value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,
    /// Also write the metrics to this file (atomically) for node_exporter's textfile
    /// collector, every --textfile-interval seconds.
    #[arg(long, value_name = "PATH")]
    pub textfile: Option<PathBuf>,
    #[arg(long, value_name = "SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    pub textfile_interval: u64,
    /// Drop events each CPU may report per second (0 turns them off); a flood of
    /// violations costs at most this many ring-buffer writes per CPU and second.
    /// Overrides the config's [events] per_cpu_per_second (default 100).
    #[arg(long, value_name = "N")]
    pub events_per_second: Option<u32>,
    /// Consider only every Nth policy drop for an event. Overrides the config's [events]
    /// sample_every (default 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub events_sample_every: Option<u32>,
    /// Turn the datapath's own debug log on (forwarded into this process's log) for
    /// debugging; reloads the program when the level changes. Off by default, at no cost.
    #[arg(long, value_parser = label::value_parser::<EbpfLog>(), default_value = "off")]
    pub ebpf_log: EbpfLog,
    /// Sliding window of apns_reachability_ratio (SYN-ACKs seen / SYNs sent).
    #[arg(long, value_name = "SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub reachability_window: u64,
}

#[derive(Args, Debug, Clone)]
pub struct DoctorArgs {
    /// Interface to check (repeatable). Default: the config's interfaces.
    #[arg(long = "iface", value_name = "IFACE")]
    pub interfaces: Vec<String>,
    /// The report as one JSON document (checks, and what was read of each interface).
    #[arg(long)]
    pub json: bool,
    /// Also try one TCP connection to HOST:PORT (e.g. an APNs courier on 5223) and report
    /// it: the only check that sends anything.
    #[arg(long, value_name = "HOST:PORT")]
    pub probe: Option<String>,
    /// The address `run` will serve metrics on, to check that it is free.
    #[arg(long, value_name = "ADDR", default_value = crate::telemetry::DEFAULT_METRICS_ADDR)]
    pub metrics_addr: SocketAddr,
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

fn parse_device(text: &str) -> Result<std::net::IpAddr, String> {
    text.trim().parse().map_err(|_| {
        format!("{text:?} is not an IP address (a device's IPv4 or IPv6 address, e.g. 192.0.2.10 or 2001:db8::10)")
    })
}

fn parse_role(text: &str) -> Result<(String, InterfaceRole), String> {
    parse_assignment(text, "IFACE=ROLE (e.g. lan0=devices)")
}

fn parse_fastpath(text: &str) -> Result<(String, FastPath), String> {
    parse_assignment(text, "IFACE=MODE (e.g. lan0=redirect)")
}

/// `IFACE=VALUE`: a valid interface name and one of `T`'s labels; `form` is what the error
/// says it should look like.
fn parse_assignment<T: Label>(text: &str, form: &str) -> Result<(String, T), String> {
    let (interface, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not {form}"))?;
    check_interface_name(interface).map_err(|err| err.to_string())?;
    Ok((interface.to_owned(), label::parse(value)?))
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
        assert!(Cli::try_parse_from(["apns-agent", "run", "--fastpath", "lan0=fast"]).is_err());
    }

    #[test]
    fn doctor_and_replay_flags_parse() {
        let cli = Cli::try_parse_from([
            "apns-agent",
            "doctor",
            "--iface",
            "lan0",
            "--iface",
            "wan0",
            "--json",
            "--probe",
            "17.57.144.10:5223",
        ])
        .unwrap();
        let Command::Doctor(args) = cli.command else {
            panic!("not doctor")
        };
        assert_eq!(args.interfaces, ["lan0", "wan0"]);
        assert!(args.json);
        assert_eq!(args.probe.as_deref(), Some("17.57.144.10:5223"));
        assert_eq!(
            args.metrics_addr.to_string(),
            crate::telemetry::DEFAULT_METRICS_ADDR
        );
        let cli = Cli::try_parse_from([
            "apns-agent",
            "replay",
            "lan0.pcap",
            "--mode",
            "enforce",
            "--frames",
        ])
        .unwrap();
        let Command::Replay {
            file, mode, frames, ..
        } = cli.command
        else {
            panic!("not replay")
        };
        assert_eq!(file, PathBuf::from("lan0.pcap"));
        assert_eq!(mode, Some(Mode::Enforce));
        assert!(frames);
        assert!(Cli::try_parse_from(["apns-agent", "replay"]).is_err());
        assert!(
            Cli::try_parse_from(["apns-agent", "replay", "x.pcap", "--mode", "block"]).is_err()
        );
    }

    #[test]
    fn stats_all_is_for_the_table_only() {
        let cli =
            Cli::try_parse_from(["apns-agent", "stats", "--all", "--interface", "lan0"]).unwrap();
        let Command::Stats {
            json,
            all,
            interface,
            watch,
        } = cli.command
        else {
            panic!("not stats")
        };
        assert!(all && !json && watch.is_none());
        assert_eq!(interface.as_deref(), Some("lan0"));
        // JSON and the live view have every series anyway: --all with them is a mistake.
        for other in ["--json", "--watch"] {
            assert!(
                Cli::try_parse_from(["apns-agent", "stats", "--all", other]).is_err(),
                "{other}"
            );
        }
    }

    #[test]
    fn clients_and_role_flags_parse() {
        let cli = Cli::try_parse_from([
            "apns-agent",
            "clients",
            "--json",
            "--device",
            "2001:db8::10",
        ])
        .unwrap();
        let Command::Clients {
            json,
            watch,
            device,
        } = cli.command
        else {
            panic!("not clients")
        };
        assert!(json && watch.is_none());
        assert_eq!(device, Some("2001:db8::10".parse().unwrap()));
        let err = Cli::try_parse_from(["apns-agent", "clients", "--device", "not-an-address"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"not-an-address\" is not an IP address"),
            "{err}"
        );
        assert!(Cli::try_parse_from(["apns-agent", "clients", "--json", "--watch"]).is_err());
        let cli = Cli::try_parse_from(["apns-agent", "run", "--role", "lan0=devices"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.roles, [("lan0".to_owned(), InterfaceRole::Devices)]);
        for bad in ["lan0=lan", "lan0", "a/b=devices"] {
            assert!(
                Cli::try_parse_from(["apns-agent", "run", "--role", bad]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn run_flags_parse() {
        let cli = Cli::try_parse_from([
            "apns-agent",
            "--pin-dir",
            "/sys/fs/bpf/x",
            "run",
            "--config",
            "/etc/x.toml",
            "--iface",
            "eth1",
            "--iface",
            "eth2",
            "--mode",
            "enforce",
            "--xdp-mode",
            "skb",
            "--fastpath",
            "eth1=mark",
            "--detach-on-exit",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.interfaces, ["eth1", "eth2"]);
        assert_eq!(args.mode, Some(Mode::Enforce));
        assert_eq!(args.xdp_mode, Some(XdpMode::Skb));
        assert_eq!(args.fastpath, [("eth1".to_owned(), FastPath::Mark)]);
        assert!(args.detach_on_exit);
        assert_eq!(cli.global.config, Some(PathBuf::from("/etc/x.toml")));
    }
}
