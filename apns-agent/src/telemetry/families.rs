//! Every metric family the agent exports, once: its name, type, label names and help text.
//! The exposition ([`crate::telemetry::metrics`]) takes them from here, and tests hold the
//! rest to this table: what the exposition emits, the metric table of docs/metrics.md, and
//! the names the Prometheus rules and Grafana dashboards in packaging/ use.
//!
//! The names and labels are a contract with dashboards and alerts: a family is added, never
//! renamed. `apns_uncounted_packets_total` was specified as `apns_counter_updates_lost_total`,
//! but promtool's lint refuses a metric name containing its own type ("counter").

use prometheus_client::metrics::MetricType;

/// One metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Family {
    /// The name as Prometheus sees it: a counter's ends in `_total`, an info's in `_info`.
    pub name: &'static str,
    pub kind: Kind,
    /// The label names of every sample, in exposition order (an info's labels are its
    /// values; a histogram's `le` is not listed).
    pub labels: &'static [&'static str],
    /// The `# HELP` text.
    pub help: &'static str,
}

/// What a family's samples are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    /// Always 1, its labels the information: written as a gauge (text format 0.0.4).
    Info,
}

impl Kind {
    /// The word docs/metrics.md's table uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::Info => "info",
        }
    }

    /// The suffix prometheus-client's encoder appends to the name it is given.
    fn suffix(self) -> &'static str {
        match self {
            Kind::Counter => "_total",
            Kind::Info => "_info",
            Kind::Gauge | Kind::Histogram => "",
        }
    }
}

impl Family {
    /// The name to give prometheus-client's encoder, which appends the type's suffix.
    pub fn encoder_name(&self) -> &'static str {
        self.name
            .strip_suffix(self.kind.suffix())
            .unwrap_or(self.name)
    }

    /// The type to give prometheus-client's encoder.
    pub fn metric_type(&self) -> MetricType {
        match self.kind {
            Kind::Counter => MetricType::Counter,
            Kind::Gauge => MetricType::Gauge,
            Kind::Histogram => MetricType::Histogram,
            Kind::Info => MetricType::Info,
        }
    }
}

/// Every family, in the order the exposition writes them.
pub const ALL: [&Family; 30] = [
    &PACKETS,
    &BYTES,
    &TCP_EVENTS,
    &POLICY_DROPS,
    &INBOUND_OPENS,
    &OTHER_PACKETS,
    &FASTPATH_PACKETS,
    &FASTPATH_FALLBACKS,
    &FASTPATH_TC_HANDOFFS,
    &UNCOUNTED_PACKETS,
    &REACHABILITY_RATIO,
    &ALLOWLIST_PREFIXES,
    &DATAPATH_ATTACHED,
    &KERNEL_FEATURE,
    &POLICY_GENERATION,
    &CONFIG_APPLIED,
    &CONFIG_RELOAD_OK,
    &CONFIG_RELOAD_FAILURES,
    &POLICY_SOURCES,
    &CONNECTIONS_OPEN,
    &CONNECTIONS_ENDED,
    &CONNECTION_LIFETIMES,
    &HANDSHAKE_FAILURES,
    &PORT443_CONNECTIONS,
    &UNHEALTHY_DEVICES,
    &CONNTRACK_ENTRIES,
    &CONNTRACK_SIZE,
    &CONNTRACK_EVICTIONS,
    &CONNTRACK_UNTRACKED,
    &AGENT,
];

pub const PACKETS: Family = Family {
    name: "apns_packets_total",
    kind: Kind::Counter,
    labels: &["interface", "direction", "port", "verdict"],
    help: "APNs packets by interface, direction (outbound: toward Apple), APNs port and \
         verdict, since the datapath was loaded",
};

pub const BYTES: Family = Family {
    name: "apns_bytes_total",
    kind: Kind::Counter,
    labels: &["interface", "direction", "port", "verdict"],
    help: "APNs frame bytes (Ethernet header included) by interface, direction, APNs port \
         and verdict, since the datapath was loaded",
};

pub const TCP_EVENTS: Family = Family {
    name: "apns_tcp_events_total",
    kind: Kind::Counter,
    labels: &["interface", "direction", "port", "event"],
    help: "TCP segments of APNs traffic by flag: syn (SYN without ACK, a connection \
         attempt), synack (answered attempt), rst, fin; over all verdicts",
};

pub const POLICY_DROPS: Family = Family {
    name: "apns_policy_drops_total",
    kind: Kind::Counter,
    labels: &["interface", "reason"],
    help: "Packets dropped by the enforce-mode policy: pinhole (TCP to a pinhole port of an \
         address outside the allow-list), provider (to a provider port from outside the \
         provider list), inbound_open (a connection attempt from Apple's side, which APNs \
         never makes), unfinished (headers the parser cannot finish that could hide an \
         APNs-port packet: a first fragment without the whole TCP header, an IPv6 header \
         chain too long to follow)",
};

pub const INBOUND_OPENS: Family = Family {
    name: "apns_inbound_opens_total",
    kind: Kind::Counter,
    labels: &["interface", "port", "verdict"],
    help: "Inbound connection attempts on an APNs port (a SYN without ACK from Apple's \
         addresses, from an APNs port or to one inside: APNs connections are only ever \
         opened from inside), by verdict: pass in monitor mode, drop in enforce mode",
};

pub const OTHER_PACKETS: Family = Family {
    name: "apns_other_packets_total",
    kind: Kind::Counter,
    labels: &["interface", "class"],
    help: "Packets that are not APNs traffic: not_ip, not_apns (IP touching no rule), \
         fragment (non-first IP fragment), malformed, unfinished (headers that could hide \
         an APNs-port packet, passed in monitor mode; dropped in enforce mode, see \
         apns_policy_drops_total)",
};

pub const FASTPATH_PACKETS: Family = Family {
    name: "apns_fastpath_packets_total",
    kind: Kind::Counter,
    labels: &["interface", "path"],
    help: "APNs packets that arrived on a redirect fast-path interface, by how they left: \
         xdp_redirect (forwarded by XDP), tc_redirect (forwarded by the TC step: the next \
         hop's neighbour was not resolved yet), stack (left to the kernel stack, see \
         apns_fastpath_fallback_packets_total)",
};

pub const FASTPATH_FALLBACKS: Family = Family {
    name: "apns_fastpath_fallback_packets_total",
    kind: Kind::Counter,
    labels: &["interface", "reason"],
    help: "APNs packets the redirect fast path left to the kernel stack, by reason; where \
         the stack's forward path drops APNs, the reasons egress_unmanaged, vlan_tagged, \
         tc_not_ready, no_metadata, unsupported_lwt and other are lost there; unsolicited \
         (from Apple, of no flow a device opened: forged, or forgotten) is for the \
         firewall to judge (docs/fastpath.md)",
};

pub const FASTPATH_TC_HANDOFFS: Family = Family {
    name: "apns_fastpath_tc_handoffs_total",
    kind: Kind::Counter,
    labels: &["interface", "result"],
    help: "Packets the TC program of the redirect fast path was handed, by result: \
         forwarded (bpf_redirect_neigh accepted them) or refused (should stay 0); counted \
         by segment, a cross-check of path=tc_redirect",
};

pub const UNCOUNTED_PACKETS: Family = Family {
    name: "apns_uncounted_packets_total",
    kind: Kind::Counter,
    labels: &[],
    help: "Packets not counted because the counter map was full; when non-zero every other \
         counter is an undercount (more interfaces or ports than the map was sized for)",
};

pub const REACHABILITY_RATIO: Family = Family {
    name: "apns_reachability_ratio",
    kind: Kind::Gauge,
    labels: &["interface", "port"],
    help: "SYN-ACKs from Apple / SYNs toward Apple (not counting policy-dropped SYNs) on an \
         APNs port over the reachability window, summed over every interface \
         (interface=\"all\": SYNs enter on LAN interfaces, SYN-ACKs on the WAN one); \
         absent when no SYN was sent in the window",
};

pub const ALLOWLIST_PREFIXES: Family = Family {
    name: "apns_allowlist_prefixes",
    kind: Kind::Gauge,
    labels: &["family"],
    help: "Prefixes in the active allow-list (Apple's addresses) by address family",
};

pub const DATAPATH_ATTACHED: Family = Family {
    name: "apns_datapath_attached",
    kind: Kind::Gauge,
    labels: &["interface", "xdp_mode"],
    help: "1 if the datapath is attached to the interface (its link is live), 0 if only a \
         stale link pin is left or the interface is missing (the config or `attach` wants \
         it but it does not exist; xdp_mode=\"none\")",
};

pub const KERNEL_FEATURE: Family = Family {
    name: "apns_kernel_feature",
    kind: Kind::Gauge,
    labels: &["feature"],
    help: "Optional kernel features the datapath uses, as probed on this kernel: 1 present, \
         0 missing or switched off by APNS_AGENT_FEATURES_OFF (xdp_meta, fib_lookup, \
         redirect_neigh, coarse_clock, xdp_link, tcx; docs/platform.md says what each \
         changes)",
};

pub const POLICY_GENERATION: Family = Family {
    name: "apns_policy_generation",
    kind: Kind::Gauge,
    labels: &[],
    help: "The active policy generation (0 or 1); it flips on every policy change, by run \
         or a subcommand, so changes() counts them",
};

pub const CONFIG_APPLIED: Family = Family {
    name: "apns_config_applied_timestamp_seconds",
    kind: Kind::Gauge,
    labels: &[],
    help: "When run last applied its config (start-up or SIGHUP), Unix time",
};

pub const CONFIG_RELOAD_OK: Family = Family {
    name: "apns_config_last_reload_successful",
    kind: Kind::Gauge,
    labels: &[],
    help: "1 if the last SIGHUP reload was applied (or none was asked for), 0 if it was \
         refused and the config in force is the one before",
};

pub const CONFIG_RELOAD_FAILURES: Family = Family {
    name: "apns_config_reload_failures_total",
    kind: Kind::Counter,
    labels: &[],
    help: "SIGHUP reloads refused (a bad config or list file) since run started",
};

pub const POLICY_SOURCES: Family = Family {
    name: "apns_policy_sources_info",
    kind: Kind::Info,
    labels: &["config_file", "apple", "allow_files", "provider_files"],
    help: "Where run's policy comes from: the config file (empty: built-in defaults), the \
         Apple preset, the allow-list and provider list files; always 1",
};

pub const CONNECTIONS_OPEN: Family = Family {
    name: "apns_connections_open",
    kind: Kind::Gauge,
    labels: &["interface", "port"],
    help: "APNs connections open now (established, not ended, not abandoned for a newer \
         one, a packet within stale_after), by the device-facing interface the device is \
         behind and Apple port",
};

pub const CONNECTIONS_ENDED: Family = Family {
    name: "apns_connections_ended_total",
    kind: Kind::Counter,
    labels: &["reason"],
    help: "APNs connections by how they ended: the first FIN or RST and its side \
         (fin_device, fin_apple, rst_device, rst_apple), or evicted from the connection \
         table before their end was seen; since the datapath was loaded",
};

pub const CONNECTION_LIFETIMES: Family = Family {
    name: "apns_connection_lifetime_seconds",
    kind: Kind::Histogram,
    labels: &[],
    help: "Lifetimes of APNs connections whose end was seen, first packet to first FIN or \
         RST; since the datapath was loaded",
};

pub const HANDSHAKE_FAILURES: Family = Family {
    name: "apns_handshake_failures_total",
    kind: Kind::Counter,
    labels: &["port", "reason"],
    help: "Failed APNs handshakes since the agent started: unanswered (no SYN-ACK or RST \
         within handshake_timeout, or before the device tried again), refused (a RST \
         instead of a SYN-ACK), incomplete (Apple answered, the device never completed \
         the handshake)",
};

pub const PORT443_CONNECTIONS: Family = Family {
    name: "apns_port443_connections_total",
    kind: Kind::Counter,
    labels: &["kind"],
    help: "APNs connections to Apple on 443 since the agent started: fallback (opened \
         within fallback_window of a failed 5223 handshake of the same device: 5223 is \
         blocked on its path) or direct",
};

pub const UNHEALTHY_DEVICES: Family = Family {
    name: "apns_unhealthy_devices",
    kind: Kind::Gauge,
    labels: &["finding"],
    help: "Devices behind the gateway with that finding now (apns-agent clients; ok devices \
         are not counted)",
};

pub const CONNTRACK_ENTRIES: Family = Family {
    name: "apns_conntrack_entries",
    kind: Kind::Gauge,
    labels: &[],
    help: "APNs connections the connection table holds now",
};

pub const CONNTRACK_SIZE: Family = Family {
    name: "apns_conntrack_size",
    kind: Kind::Gauge,
    labels: &[],
    help: "APNs connections the connection table holds at most (config [clients] \
         table_size)",
};

pub const CONNTRACK_EVICTIONS: Family = Family {
    name: "apns_conntrack_evictions_total",
    kind: Kind::Counter,
    labels: &[],
    help: "Connections the connection table evicted to make room for new ones (least \
         recently used first); since the datapath was loaded",
};

pub const CONNTRACK_UNTRACKED: Family = Family {
    name: "apns_conntrack_untracked_total",
    kind: Kind::Counter,
    labels: &[],
    help: "Connections the kernel could not add to the connection table (not tracked); \
         since the datapath was loaded",
};

pub const AGENT: Family = Family {
    name: "apns_agent_info",
    kind: Kind::Info,
    labels: &["version", "program_tag"],
    help: "Agent version and the tag of the loaded XDP program; always 1",
};

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn names_are_unique_and_end_in_their_type_suffix() {
        let names: BTreeSet<&str> = ALL.iter().map(|family| family.name).collect();
        assert_eq!(names.len(), ALL.len(), "a name twice in {names:?}");
        for family in ALL {
            assert!(family.name.starts_with("apns_"), "{}", family.name);
            assert!(
                family.name.ends_with(family.kind.suffix()),
                "{} is a {:?}",
                family.name,
                family.kind
            );
            assert!(!family.help.is_empty(), "{} has no help", family.name);
        }
    }
}
