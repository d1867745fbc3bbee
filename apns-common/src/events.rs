//! Drop events: what the XDP program reports through the `APNS_EVENTS` ring buffer when it
//! drops a packet by policy, and the knobs that bound what a flood of drops can cost.

/// One policy drop. Addresses in network byte order (IPv4 in the first 4 bytes), ports in
/// host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropEvent {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub time_ns: u64,
    pub ifindex: u32,
    /// The drop's [`crate::counters::Outcome`] code (`DropPinhole`, `DropProvider` or `DropInboundOpen`; an unfinished packet has no ports to report, so `DropUnfinished` makes no event).
    pub outcome: u8,
    /// IP protocol number (6 for TCP: only TCP is ever dropped).
    pub protocol: u8,
    /// 4 or 6.
    pub ip_version: u8,
    pub _pad: u8,
    pub sport: u16,
    pub dport: u16,
    /// Drops suppressed by sampling and rate limiting on this CPU since the previous event.
    pub suppressed: u32,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}
const _: () = assert!(size_of::<DropEvent>() == 56);

/// Value of `APNS_EVENT_CFG`: written by the agent, read by the XDP program.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventConfig {
    /// Events each CPU may emit per second; 0 turns drop events off.
    pub per_cpu_per_second: u32,
    /// Consider only every Nth drop for an event (1 = every drop). 0 reads as 1.
    pub sample_every: u32,
}
const _: () = assert!(size_of::<EventConfig>() == 8);

impl Default for EventConfig {
    /// 100 events per CPU per second, every drop considered: enough to see who is abusing a
    /// pinhole, and a flood costs at most that many ring-buffer writes per CPU and second.
    fn default() -> Self {
        EventConfig {
            per_cpu_per_second: 100,
            sample_every: 1,
        }
    }
}

/// Value of `APNS_EVENT_ST`, one per CPU: the rate limiter's state. Only the XDP program
/// touches it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventState {
    /// Start of the current one-second budget window (`bpf_ktime_get_ns`).
    pub window_start_ns: u64,
    /// Events emitted in the window.
    pub emitted: u32,
    /// Drops seen since the last one considered for an event (sampling).
    pub since_sample: u32,
    /// Drops that produced no event since the last event.
    pub suppressed: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<EventState>() == 24);

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::DropEvent {}
    unsafe impl aya::Pod for super::EventConfig {}
    unsafe impl aya::Pod for super::EventState {}
}
