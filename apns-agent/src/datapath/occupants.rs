//! The XDP occupants of an interface: whatever XDP program runs on it, who attached it and
//! how, and whether it is a libxdp multiprog dispatcher (and which components it chains).
//! `attach` reads it to never clobber someone else's program, and says in one line what is
//! in the way and how to clear it; `doctor` reports it.
//!
//! A libxdp dispatcher (with libxdp's pins) is not in the way unless `xdp_multiprog` is
//! `never`: the agent joins it (`multiprog`). Any other program that is not ours is.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use aya::programs::{links::LinkType, loaded_links, ProgramInfo};

use super::{
    multiprog::{Multiprog, LIBXDP_DIR, LIBXDP_DISPATCHER},
    netdev::{self, XdpAttachMode},
    pins::{PinDir, BPFFS_ROOT},
    sys,
};

/// One XDP program on an interface.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Occupant {
    pub program_id: u32,
    /// The kernel's program name (at most 15 bytes); "?" when it cannot be read.
    pub name: String,
    /// 16 hex digits.
    pub tag: String,
    #[serde(serialize_with = "serialize_mode")]
    pub mode: XdpAttachMode,
    /// The bpf_link that holds it; `None`: attached through netlink (owned by no fd).
    pub link_id: Option<u32>,
    /// The program this datapath's links run.
    pub ours: bool,
    pub dispatcher: Option<Dispatcher>,
}

/// A libxdp multiprog dispatcher and its components, from libxdp's pins.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Dispatcher {
    /// `<bpffs>/xdp/dispatch-<ifindex>-<program id>`; `None` when it is not there (libxdp
    /// then treats the dispatcher as a plain program).
    pub pin_dir: Option<String>,
    /// (program id, name) of each component, in run order.
    pub components: Vec<(u32, String)>,
}

fn serialize_mode<S: serde::Serializer>(mode: &XdpAttachMode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(mode.as_str())
}

impl Occupant {
    /// "XDP program 42 (xdpfilt_alw_all, tag 2d85…, attached by netlink in skb mode, not a
    /// libxdp dispatcher)".
    pub fn describe(&self) -> String {
        let attached = match self.link_id {
            Some(link) => format!("attached by bpf_link {link}"),
            None => "attached by netlink".to_owned(),
        };
        let dispatcher = match &self.dispatcher {
            None => "not a libxdp dispatcher".to_owned(),
            Some(dispatcher) => {
                let components: Vec<String> = dispatcher
                    .components
                    .iter()
                    .map(|(id, name)| format!("{name} (id {id})"))
                    .collect();
                match dispatcher.pin_dir {
                    Some(_) if components.is_empty() => {
                        "a libxdp dispatcher with no components".to_owned()
                    }
                    Some(_) => format!("a libxdp dispatcher running {}", components.join(", ")),
                    None => "named like a libxdp dispatcher but without libxdp's pins".to_owned(),
                }
            }
        };
        format!(
            "XDP program {} ({}, tag {}, {attached} in {} mode, {dispatcher})",
            self.program_id,
            self.name,
            self.tag,
            self.mode.as_str()
        )
    }

    /// Whether the agent can join it: a libxdp dispatcher with libxdp's pins.
    pub fn joinable(&self) -> bool {
        self.dispatcher
            .as_ref()
            .is_some_and(|dispatcher| dispatcher.pin_dir.is_some())
    }

    /// How an operator clears the interface, in words.
    pub fn way_out(&self, interface: &str) -> String {
        if self.joinable() {
            return format!(
                "set xdp_multiprog = \"auto\" (or --xdp-multiprog auto) to run beside its components, unload them first (`xdp-loader unload {interface} --all`), or run the agent on another interface"
            );
        }
        if self.dispatcher.is_some() {
            return format!(
                "libxdp cannot change it either: detach it (`ip link set dev {interface} xdp off`) and load its programs again, or run the agent on another interface"
            );
        }
        if let Some(link) = self.link_id {
            return format!(
                "its owner holds it through bpf_link {link}: stop that program or unpin the link (`bpftool link show id {link}`), or run the agent on another interface"
            );
        }
        let unload = if self.name.starts_with("xdpfilt_") {
            format!("`xdp-filter unload {interface}` / ")
        } else {
            String::new()
        };
        // `xdp off` alone only detaches a native program: name the mode it runs in.
        let keyword = match self.mode {
            XdpAttachMode::Native => "xdpdrv",
            XdpAttachMode::Skb => "xdpgeneric",
            XdpAttachMode::Hw => "xdpoffload",
        };
        format!(
            "detach it first ({unload}`ip link set dev {interface} {keyword} off`), or run the agent on another interface"
        )
    }
}

/// The XDP programs on device `ifindex` of the caller's network namespace (empty when there
/// are none, or no such device). `pins`: the datapath whose program counts as ours.
pub fn of(ifindex: u32, pins: Option<&PinDir>) -> anyhow::Result<Vec<Occupant>> {
    let Some(link) = netdev::link(ifindex)? else {
        return Ok(Vec::new());
    };
    let attached = link.xdp.programs();
    if attached.is_empty() {
        return Ok(Vec::new());
    }
    let ours = pins.and_then(|pins| ProgramInfo::from_pin(pins.program()).ok().map(|p| p.id()));
    let links = xdp_links(ifindex);
    attached
        .into_iter()
        .map(|(mode, program_id)| {
            let info = sys::program_by_id(program_id);
            let name = info
                .as_ref()
                .and_then(|info| info.name_as_str().map(str::to_owned))
                .unwrap_or_else(|| "?".to_owned());
            let tag = info
                .as_ref()
                .map_or("?".to_owned(), |info| format!("{:016x}", info.tag()));
            let link_id = links
                .iter()
                .find(|facts| facts.program_id == program_id)
                .map(|facts| facts.link_id);
            let dispatcher = (name == LIBXDP_DISPATCHER)
                .then(|| dispatcher(Path::new(BPFFS_ROOT), ifindex, program_id));
            Ok(Occupant {
                program_id,
                name,
                tag,
                mode,
                link_id,
                ours: ours == Some(program_id),
                dispatcher,
            })
        })
        .collect()
}

/// Refuses, in one line naming the program and the way out, when `interface` (index
/// `ifindex`) runs an XDP program that is not the one of `pins`, nor (unless `multiprog` is
/// `never`) a libxdp dispatcher the agent can join. Changes nothing.
pub fn check_free(
    interface: &str,
    ifindex: u32,
    pins: &PinDir,
    multiprog: Multiprog,
) -> anyhow::Result<()> {
    let occupants = of(ifindex, Some(pins))
        .with_context(|| format!("reading the XDP programs of {interface}"))?;
    let in_the_way = |occupant: &&Occupant| {
        !occupant.ours && (multiprog == Multiprog::Never || !occupant.joinable())
    };
    match occupants.iter().find(in_the_way) {
        None => Ok(()),
        Some(other) => anyhow::bail!(
            "{interface} runs {}: {}",
            other.describe(),
            other.way_out(interface)
        ),
    }
}

/// The XDP bpf_links on `ifindex`. Links of other network namespaces with the same ifindex
/// are told apart by program id by the caller. Unreadable links are skipped: this is a
/// report, and the kernel has the last word when we attach.
fn xdp_links(ifindex: u32) -> Vec<sys::LinkFacts> {
    loaded_links()
        .filter_map(Result::ok)
        .filter(|link| matches!(link.link_type(), Ok(LinkType::Xdp)))
        .filter_map(|link| sys::link_by_id(link.id()).ok())
        .filter(|facts| facts.ifindex == ifindex)
        .collect()
}

/// libxdp's record of the dispatcher `program_id` on `ifindex`: its pin folder
/// `<bpffs>/xdp/dispatch-<ifindex>-<id>` with `prog<N>-prog` per component.
fn dispatcher(bpffs: &Path, ifindex: u32, program_id: u32) -> Dispatcher {
    let dir: PathBuf = bpffs
        .join(LIBXDP_DIR)
        .join(format!("dispatch-{ifindex}-{program_id}"));
    if !dir.is_dir() {
        return Dispatcher {
            pin_dir: None,
            components: Vec::new(),
        };
    }
    // libxdp numbers its slots from 0 without gaps; at most 10 (MAX_DISPATCHER_ACTIONS).
    let components = (0..10)
        .map_while(|slot| ProgramInfo::from_pin(dir.join(format!("prog{slot}-prog"))).ok())
        .map(|info| (info.id(), info.name_as_str().unwrap_or("?").to_owned()))
        .collect();
    Dispatcher {
        pin_dir: Some(dir.display().to_string()),
        components,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(name: &str, link_id: Option<u32>) -> Occupant {
        Occupant {
            program_id: 42,
            name: name.to_owned(),
            tag: "2d8506cc913c856b".to_owned(),
            mode: XdpAttachMode::Skb,
            link_id,
            ours: false,
            dispatcher: None,
        }
    }

    #[test]
    fn a_refusal_names_the_program_and_the_way_out() {
        let filter = plain("xdpfilt_alw_all", None);
        assert_eq!(
            format!("lan0 runs {}: {}", filter.describe(), filter.way_out("lan0")),
            "lan0 runs XDP program 42 (xdpfilt_alw_all, tag 2d8506cc913c856b, attached by netlink in skb mode, not a libxdp dispatcher): detach it first (`xdp-filter unload lan0` / `ip link set dev lan0 xdpgeneric off`), or run the agent on another interface"
        );
        let linked = plain("floor_xdp", Some(7));
        assert!(linked
            .describe()
            .contains("attached by bpf_link 7 in skb mode"));
        assert!(linked.way_out("lan0").contains("bpftool link show id 7"));
        let mut dispatcher = plain(LIBXDP_DISPATCHER, None);
        dispatcher.dispatcher = Some(Dispatcher {
            pin_dir: Some("/sys/fs/bpf/xdp/dispatch-3-42".to_owned()),
            components: vec![(43, "xdpfilt_alw_all".to_owned())],
        });
        assert!(dispatcher
            .describe()
            .contains("a libxdp dispatcher running xdpfilt_alw_all (id 43)"));
        assert!(dispatcher
            .way_out("lan0")
            .contains("xdp-loader unload lan0 --all"));
        assert!(dispatcher
            .way_out("lan0")
            .contains("xdp_multiprog = \"auto\""));
    }
}
