//! apns-agent as a library: the embedded datapath object, the policy model, and typed access
//! to the datapath's maps. The binary (`main.rs`) and the integration tests both use it.

pub mod counters;
pub mod datapath;
pub mod maps;
pub mod policy;
