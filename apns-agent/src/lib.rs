//! apns-agent as a library: the embedded datapath object, the policy model, typed access to
//! the datapath's maps, the pinned lifecycle and the subcommands. The binary (`main.rs`) and
//! the integration tests both use it.

pub mod cli;
pub mod cmd;
pub mod config;
pub mod counters;
pub mod datapath;
pub mod events;
pub mod interfaces;
pub mod maps;
pub mod pinned;
pub mod pins;
pub mod policy;
pub mod privileges;
pub mod telemetry;
