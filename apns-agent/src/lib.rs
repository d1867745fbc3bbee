//! apns-agent as a library: the binary (`main.rs`) and the integration tests both use it.
//!
//! The crate reads top-down, in layers: a module only uses the layers below it (a layer's
//! modules do not use each other), and inside a folder the files never use each other in a
//! circle. `tests/layers.rs` checks the source against this table, top first:
//!
//! ```text
//! cmd/        one file per subcommand; cmd/mod.rs dispatches and turns the clap types
//!             into settings' plain values (main.rs parses and calls it)
//! cli         the clap definitions
//! preflight/  doctor's checks: the settings, the host, the interfaces, the datapath door
//! settings/   flags over config over defaults, from plain values; the live-state record
//! telemetry/  counters for Prometheus, JSON and terminals
//! capture     pcap/pcapng frames as Ethernet, for replay
//! readiness, privileges, durable  systemd's notify; capabilities; files replaced atomically
//! datapath/   the one door to the pinned programs, maps, links and pins
//! label       parsing the kernel contract's labels (apns-common's `Label`)
//! ```
//!
//! `preflight` sits above `settings`: doctor judges the resolved settings (the config, its
//! interfaces), and nothing below needs doctor's checks. `settings` takes plain values, never
//! clap's types; what the kernel and the agent share (map layouts, codes, their labels) lives
//! below everything, in apns-common. docs/architecture.md maps the whole workspace.

pub mod capture;
pub mod cli;
pub mod cmd;
pub mod datapath;
pub mod durable;
pub mod label;
pub mod preflight;
pub mod privileges;
pub mod readiness;
pub mod settings;
pub mod telemetry;
