//! IP protocol numbers (IANA's "Assigned Internet Protocol Numbers"), the one place both the
//! programs (parsing, the FIB lookup, drop events) and user space (reading drop events) take
//! them from.

pub const HOPOPTS: u8 = 0;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ROUTING: u8 = 43;
pub const FRAGMENT: u8 = 44;
pub const AH: u8 = 51;
pub const DSTOPTS: u8 = 60;
