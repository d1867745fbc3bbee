//! Test support for apns-agent: frames to feed the datapath and an independent user-space
//! reference of what the datapath must make of them (`docs/classification.md`).

pub mod agent;
pub mod bench;
pub mod lab;
pub mod layout2;
pub mod neighbours;
pub mod packets;
pub mod reference;
pub mod scratch;
pub mod xdp;
