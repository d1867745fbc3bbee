//! What the kernel says about a network device, read in the caller's network namespace: its
//! link attributes and XDP attachment (rtnetlink `RTM_GETLINK`), its XDP features (the
//! generic-netlink `netdev` family, Linux 6.3+) and its driver (ethtool's `GDRVINFO`).
//!
//! Netlink, not `/sys/class/net`: sysfs shows the devices of the network namespace that
//! mounted it, which is not the caller's after a setns (as `nsenter --net` and our lab do).
//! Every request carries a receive timeout, so a kernel that never answers costs a bounded
//! wait, not a hang (doctor promises to finish in under 2 s).

use std::{io, os::fd::AsRawFd as _, time::Duration};

use anyhow::{bail, Context as _};
use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, NetlinkDeserializable, NetlinkMessage, NetlinkPayload,
    NetlinkSerializable, Nla as _, NlasIterator, Parseable, ParseableParametrized, NLM_F_ACK,
    NLM_F_REQUEST,
};
use netlink_packet_generic::{
    ctrl::{nlas::GenlCtrlAttrs, GenlCtrl, GenlCtrlCmd},
    GenlFamily, GenlHeader, GenlMessage,
};
use netlink_packet_route::{
    link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage, LinkXdp, State, XdpAttached},
    tc::{TcAttribute, TcFilterBpfOption, TcMessage, TcOption},
    RouteNetlinkMessage,
};
use netlink_sys::{
    protocols::{NETLINK_GENERIC, NETLINK_ROUTE},
    Socket, SocketAddr,
};

/// How long one netlink request may wait for its answer.
const REPLY_TIMEOUT: Duration = Duration::from_millis(500);

/// A device as rtnetlink reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// The lower layer has a carrier (`IFF_LOWER_UP`).
    pub carrier: bool,
    /// RFC 2863 operational state, in the kernel's words ("up", "down", "lowerlayerdown").
    pub oper_state: String,
    pub mtu: u32,
    /// The link kind of virtual devices ("veth", "bridge", ...); `None` for hardware.
    pub kind: Option<String>,
    pub xdp: XdpState,
}

/// The XDP programs attached to a device (`IFLA_XDP`), by mode. The kernel allows one
/// program per mode; native and generic never together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpState {
    pub native: Option<u32>,
    pub skb: Option<u32>,
    pub hw: Option<u32>,
}

/// An XDP attach mode as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAttachMode {
    Native,
    Skb,
    Hw,
}

impl XdpAttachMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            XdpAttachMode::Native => "native",
            XdpAttachMode::Skb => "skb",
            XdpAttachMode::Hw => "hw",
        }
    }
}

impl XdpState {
    /// Every attached program with its mode.
    pub fn programs(&self) -> Vec<(XdpAttachMode, u32)> {
        [
            (XdpAttachMode::Native, self.native),
            (XdpAttachMode::Skb, self.skb),
            (XdpAttachMode::Hw, self.hw),
        ]
        .into_iter()
        .filter_map(|(mode, id)| Some((mode, id?)))
        .collect()
    }

    fn from_attributes(attributes: &[LinkXdp]) -> XdpState {
        let mut state = XdpState::default();
        let mut attached = XdpAttached::None;
        let mut single = None;
        for attribute in attributes {
            match *attribute {
                LinkXdp::Attached(mode) => attached = mode,
                LinkXdp::ProgId(id) => single = Some(id),
                LinkXdp::DrvProgId(id) => state.native = Some(id),
                LinkXdp::SkbProgId(id) => state.skb = Some(id),
                LinkXdp::HwProgId(id) => state.hw = Some(id),
                _ => {}
            }
        }
        // With one program attached the kernel sends only IFLA_XDP_PROG_ID and the mode in
        // IFLA_XDP_ATTACHED; the per-mode ids come with XDP_ATTACHED_MULTI.
        match attached {
            XdpAttached::Driver => state.native = state.native.or(single),
            XdpAttached::SocketBuffer => state.skb = state.skb.or(single),
            XdpAttached::Hardware => state.hw = state.hw.or(single),
            _ => {}
        }
        state
    }
}

/// The device `ifindex`, or `None` when there is none in the caller's network namespace.
pub fn link(ifindex: u32) -> anyhow::Result<Option<Link>> {
    let mut request = LinkMessage::default();
    request.header.index = ifindex;
    let reply = match route_request(RouteNetlinkMessage::GetLink(request)) {
        Ok(reply) => reply,
        Err(err) if err.raw_os_error() == Some(libc::ENODEV) => return Ok(None),
        Err(err) => {
            return Err(err).with_context(|| format!("reading ifindex {ifindex} (RTM_GETLINK)"))
        }
    };
    let RouteNetlinkMessage::NewLink(message) = reply else {
        bail!("RTM_GETLINK of ifindex {ifindex}: unexpected answer {reply:?}");
    };
    let mut link = Link {
        ifindex,
        name: String::new(),
        up: message.header.flags.contains(LinkFlags::Up),
        carrier: message.header.flags.contains(LinkFlags::LowerUp),
        oper_state: String::new(),
        mtu: 0,
        kind: None,
        xdp: XdpState::default(),
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name.clone(),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::OperState(state) => link.oper_state = oper_state(*state),
            LinkAttribute::Xdp(xdp) => link.xdp = XdpState::from_attributes(xdp),
            LinkAttribute::LinkInfo(infos) => {
                link.kind = infos.iter().find_map(|info| match info {
                    LinkInfo::Kind(kind) => Some(kind.to_string()),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    Ok(Some(link))
}

fn oper_state(state: State) -> String {
    match state {
        State::Unknown => "unknown".to_owned(),
        State::NotPresent => "notpresent".to_owned(),
        State::Down => "down".to_owned(),
        State::LowerLayerDown => "lowerlayerdown".to_owned(),
        State::Testing => "testing".to_owned(),
        State::Dormant => "dormant".to_owned(),
        State::Up => "up".to_owned(),
        State::Other(code) => format!("state {code}"),
        _ => "unknown".to_owned(),
    }
}

/// `enum netdev_xdp_act` (include/uapi/linux/netdev.h): what a driver's XDP can do.
pub mod xdp_act {
    /// XDP_ABORTED, XDP_DROP, XDP_PASS and XDP_TX in the driver: native XDP.
    pub const BASIC: u64 = 1 << 0;
    /// The driver's XDP program may return XDP_REDIRECT.
    pub const REDIRECT: u64 = 1 << 1;
    /// The device takes frames redirected to it (`ndo_xdp_xmit`): a redirect target.
    pub const NDO_XMIT: u64 = 1 << 2;
}

/// The device's XDP features (`NETDEV_A_DEV_XDP_FEATURES`, a set of [`xdp_act`] bits).
/// `Ok(None)` when this kernel has no `netdev` family (before 6.3).
pub fn xdp_features(ifindex: u32) -> anyhow::Result<Option<u64>> {
    let Some(family) = genl_family_id(NETDEV_FAMILY)? else {
        return Ok(None);
    };
    let request = Netdev {
        cmd: NETDEV_CMD_DEV_GET,
        attributes: vec![DefaultNla::new(
            NETDEV_A_DEV_IFINDEX,
            ifindex.to_ne_bytes().to_vec(),
        )],
    };
    let mut message = GenlMessage::from_payload(request);
    message.set_resolved_family_id(family);
    let reply = request_reply(NETLINK_GENERIC, message).with_context(|| {
        format!("reading the XDP features of ifindex {ifindex} (netdev family, dev-get)")
    })?;
    reply
        .payload
        .attributes
        .iter()
        .find(|nla| nla.kind() == NETDEV_A_DEV_XDP_FEATURES)
        .map(|nla| {
            let mut bytes = [0u8; 8];
            nla.emit_value(&mut bytes);
            u64::from_ne_bytes(bytes)
        })
        .context("the netdev family's answer has no xdp-features")
        .map(Some)
}

/// The driver behind `interface` (ethtool's `ETHTOOL_GDRVINFO`), or `None` when the device
/// does not say.
pub fn driver(interface: &str) -> Option<String> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
    /// `struct ethtool_drvinfo`.
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    /// `struct ifreq` with its `ifr_data` member.
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IF_NAMESIZE],
        data: *mut DrvInfo,
        _pad: [u8; 16],
    }
    if interface.len() >= libc::IF_NAMESIZE {
        return None;
    }
    // SAFETY: plain-data C structs; all zeroes is valid.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut request = IfReq {
        name: [0; libc::IF_NAMESIZE],
        data: &mut info,
        _pad: [0; 16],
    };
    request.name[..interface.len()].copy_from_slice(interface.as_bytes());
    // Any socket is a handle for SIOCETHTOOL; an unbound datagram one sends nothing.
    // SAFETY: socket(2) with constant arguments; the new fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: SIOCETHTOOL reads the ifreq (a NUL-terminated name and a pointer to a live
    // ethtool_drvinfo of the size GDRVINFO writes) and writes only into that struct.
    let ret = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCETHTOOL as _, &mut request) };
    if ret != 0 {
        return None;
    }
    let len = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    let driver = String::from_utf8_lossy(&info.driver[..len]).into_owned();
    (!driver.is_empty()).then_some(driver)
}

/// The `netdev` generic-netlink family (Documentation/netlink/specs/netdev.yaml).
const NETDEV_FAMILY: &str = "netdev";
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;

/// A `netdev` family message with its attributes kept raw: we read one u64 of it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Netdev {
    cmd: u8,
    attributes: Vec<DefaultNla>,
}

impl GenlFamily for Netdev {
    fn family_name() -> &'static str {
        NETDEV_FAMILY
    }
    fn command(&self) -> u8 {
        self.cmd
    }
    fn version(&self) -> u8 {
        1
    }
}

impl Emitable for Netdev {
    fn buffer_len(&self) -> usize {
        self.attributes.as_slice().buffer_len()
    }
    fn emit(&self, buffer: &mut [u8]) {
        self.attributes.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for Netdev {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let attributes = NlasIterator::new(buf)
            .map(|nla| nla.and_then(|nla| DefaultNla::parse(&nla)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Netdev {
            cmd: header.cmd,
            attributes,
        })
    }
}

/// The id the kernel gave generic-netlink family `name`; `None` when it has none.
fn genl_family_id(name: &str) -> anyhow::Result<Option<u16>> {
    let request = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName(name.to_owned())],
    });
    match request_reply(NETLINK_GENERIC, request) {
        Ok(reply) => Ok(reply.payload.nlas.iter().find_map(|nla| match nla {
            GenlCtrlAttrs::FamilyId(id) => Some(*id),
            _ => None,
        })),
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(err) => Err(err).with_context(|| format!("resolving generic-netlink family {name:?}")),
    }
}

/// The id of the BPF program the TC filter at (`priority`, `handle`) of `ifindex`'s clsact
/// qdisc runs, on ingress or egress (`RTM_GETTFILTER` of one filter); `None` when there is no
/// such filter (or no such device or qdisc).
pub fn tc_filter_program(
    ifindex: u32,
    ingress: bool,
    priority: u16,
    handle: u32,
) -> anyhow::Result<Option<u32>> {
    /// The clsact qdisc's ingress and egress hooks (TC_H_CLSACT with TC_H_MIN_INGRESS or
    /// TC_H_MIN_EGRESS), and the protocol every filter of ours matches (ETH_P_ALL, network
    /// byte order), as `tcm_info` carries them.
    const CLSACT_INGRESS: u32 = 0xffff_fff2;
    const CLSACT_EGRESS: u32 = 0xffff_fff3;
    const ETH_P_ALL_BE: u32 = 0x0300;
    /// `TCA_BPF_ID` inside a cls_bpf filter's options.
    const TCA_BPF_ID: u16 = 11;
    let mut request = TcMessage::default();
    request.header.index = ifindex as i32;
    request.header.parent = if ingress {
        CLSACT_INGRESS
    } else {
        CLSACT_EGRESS
    }
    .into();
    request.header.handle = handle.into();
    request.header.info = (u32::from(priority) << 16) | ETH_P_ALL_BE;
    let reply = match route_request(RouteNetlinkMessage::GetTrafficFilter(request)) {
        Ok(reply) => reply,
        Err(err)
            if matches!(
                err.raw_os_error(),
                Some(libc::ENOENT | libc::ENODEV | libc::EINVAL)
            ) =>
        {
            return Ok(None)
        }
        Err(err) => {
            return Err(err).with_context(|| {
                format!("reading the TC filter {priority}:{handle:#x} of ifindex {ifindex} (RTM_GETTFILTER)")
            })
        }
    };
    let RouteNetlinkMessage::NewTrafficFilter(message) = reply else {
        bail!("RTM_GETTFILTER of ifindex {ifindex}: unexpected answer {reply:?}");
    };
    let program = message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            TcAttribute::Options(options) => options.iter().find_map(|option| match option {
                TcOption::Bpf(TcFilterBpfOption::Other(nla)) if nla.kind() == TCA_BPF_ID => {
                    let mut id = [0u8; 4];
                    nla.emit_value(&mut id);
                    Some(u32::from_ne_bytes(id))
                }
                _ => None,
            }),
            _ => None,
        });
    Ok(program)
}

/// Attaches the XDP program `fd` to device `ifindex` through netlink (`None`: detaches),
/// with the IFLA_XDP `flags`; `expected`, with `XDP_FLAGS_REPLACE`, is the program that must
/// be attached now, so that a concurrent change fails instead of being overwritten. libxdp's
/// dispatchers are attached this way, not with a bpf_link: netlink is the only way libxdp
/// can swap them.
pub fn set_xdp(
    ifindex: u32,
    fd: Option<i32>,
    expected: Option<i32>,
    flags: u32,
) -> anyhow::Result<()> {
    let mut request = LinkMessage::default();
    request.header.index = ifindex;
    let mut xdp = vec![LinkXdp::Fd(fd.unwrap_or(-1)), LinkXdp::Flags(flags)];
    xdp.extend(expected.map(|fd| LinkXdp::ExpectedFd(fd as u32)));
    request.attributes.push(LinkAttribute::Xdp(xdp));
    exchange(
        NETLINK_ROUTE,
        RouteNetlinkMessage::SetLink(request),
        NLM_F_REQUEST | NLM_F_ACK,
    )
    .with_context(|| format!("setting the XDP program of ifindex {ifindex} (RTM_SETLINK)"))?;
    Ok(())
}

fn route_request(message: RouteNetlinkMessage) -> io::Result<RouteNetlinkMessage> {
    request_reply(NETLINK_ROUTE, message)
}

/// Sends one request and returns the kernel's one answer (an error answer as its errno).
fn request_reply<T>(protocol: isize, payload: T) -> io::Result<T>
where
    T: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug,
{
    exchange(protocol, payload, NLM_F_REQUEST)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "an acknowledgement, no answer"))
}

/// Sends one request and waits for the kernel's answer: its message, `None` for an
/// acknowledgement (`NLM_F_ACK` in `flags`), an error answer as its errno.
fn exchange<T>(protocol: isize, payload: T, flags: u16) -> io::Result<Option<T>>
where
    T: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug,
{
    let mut socket = Socket::new(protocol)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    set_receive_timeout(&socket, REPLY_TIMEOUT)?;
    let mut request =
        NetlinkMessage::new(Default::default(), NetlinkPayload::InnerMessage(payload));
    request.header.flags = flags;
    request.header.sequence_number = 1;
    request.finalize();
    let mut buffer = vec![0; request.buffer_len()];
    request.serialize(&mut buffer);
    socket.send(&buffer, 0)?;
    loop {
        let (bytes, _) = socket.recv_from_full()?;
        let mut offset = 0;
        while offset < bytes.len() {
            let message = NetlinkMessage::<T>::deserialize(&bytes[offset..])
                .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err.to_string()))?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(inner) => return Ok(Some(inner)),
                NetlinkPayload::Error(error) if error.code.is_some() => return Err(error.to_io()),
                NetlinkPayload::Error(_) => return Ok(None),
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

fn set_receive_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    let value = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: SO_RCVTIMEO reads a timeval of the given size from a live local.
    let ret = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&value as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_program_is_reported_under_its_mode() {
        let state = XdpState::from_attributes(&[
            LinkXdp::Attached(XdpAttached::SocketBuffer),
            LinkXdp::ProgId(42),
        ]);
        assert_eq!(state.programs(), [(XdpAttachMode::Skb, 42)]);
        let none = XdpState::from_attributes(&[LinkXdp::Attached(XdpAttached::None)]);
        assert!(none.programs().is_empty());
    }
}
