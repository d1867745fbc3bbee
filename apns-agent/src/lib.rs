//! apns-agent as a library: the binary (`main.rs`) and the integration tests both use it.
//!
//! The crate reads top-down; a module only uses the ones below it:
//!
//! ```text
//! main.rs ─ cmd/         one file per subcommand; cmd/mod.rs only dispatches
//!            ├─ cli      the clap definitions
//!            ├─ settings flags over config over defaults; the live-state record
//!            ├─ telemetry counters for Prometheus, JSON and terminals
//!            ├─ preflight doctor's checks (reads settings, privileges and the datapath door)
//!            ├─ capture  pcap/pcapng frames as Ethernet, for replay
//!            ├─ readiness, privileges, durable (files replaced atomically and durably)
//!            └─ datapath the one door to the pinned programs, maps, links and pins
//!                 └─ label   (parsing the kernel contract's labels) ─ apns-common
//! ```

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
