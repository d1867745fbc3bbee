//! A software 802.1Q sub-interface: a TAP device (e.g. `lan2.100`) that carries the VLAN's
//! addresses, and a relay thread that moves frames between it and the trunk veth (`lan2`),
//! inserting the tag on the way out and taking it off (and filtering on the VLAN id) on the way
//! in.
//!
//! Why not `ip link add … type vlan`: the kernel of these machines is built without
//! CONFIG_VLAN_8021Q (and so without bridge VLAN filtering or act_vlan), and the lab must run
//! there. The relay writes the tag into the frame bytes, so the trunk carries real 802.1Q frames,
//! as a kernel VLAN device does when the veth's tx-VLAN offload is off: an XDP program on the
//! trunk sees the tag in the packet.

use std::{
    fs::{File, OpenOptions},
    io::{IoSliceMut, Read as _, Write as _},
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
};

use anyhow::{Context as _, Result};
use nix::{
    cmsg_space,
    errno::Errno,
    libc,
    poll::{poll, PollFd, PollFlags},
    setsockopt_impl, sockopt_impl,
    sys::socket::{
        bind, recvmsg, send, setsockopt, socket, AddressFamily, ControlMessageOwned, LinkAddr,
        MsgFlags, SockFlag, SockProtocol, SockType,
    },
};

use super::{link, netns::Namespace};

/// The 802.1Q tag protocol identifier.
const TPID_8021Q: u16 = 0x8100;
/// `sll_pkttype` of frames this host sent (packet sockets see them too).
const PACKET_OUTGOING: u8 = 4;
/// How often the relay looks at its stop flag while idle.
const TICK_MS: u16 = 50;
/// Larger than any frame: the TAP has no offloads, but a trunk with NAPI (XDP attached) may
/// hand GRO-merged packets to the packet socket.
const BUF_LEN: usize = 64 * 1024 + 4;

// Asks the kernel for the VLAN tag it took off a received frame (struct tpacket_auxdata):
// receive paths move the tag out of the frame before packet sockets see it.
sockopt_impl!(
    PacketAuxdata,
    SetOnly,
    libc::SOL_PACKET,
    libc::PACKET_AUXDATA,
    bool
);

// TUNSETIFF: attaches a /dev/net/tun fd to a new TUN/TAP device; the device lives as long as
// the fd and is made in the network namespace the fd was opened in.
nix::ioctl_write_ptr_bad!(tun_set_iff, libc::TUNSETIFF, libc::ifreq);

/// A running software VLAN sub-interface; dropping it stops the relay and removes the TAP.
pub(super) struct VlanRelay {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl VlanRelay {
    /// Creates the TAP `sub` on top of `trunk` for VLAN `vid` inside `ns` and starts relaying.
    /// The TAP is down and has the kernel's random MAC; the caller configures it with `ip`.
    pub(super) fn start(ns: &Namespace, trunk: &str, sub: &str, vid: u16) -> Result<VlanRelay> {
        let (tap, sock) = ns
            .run_on_thread(|| -> Result<(File, OwnedFd)> {
                Ok((open_tap(sub)?, open_trunk(trunk)?))
            })
            .map_err(anyhow::Error::from)
            .flatten()
            .with_context(|| {
                format!(
                    "making VLAN {vid} sub-interface {sub} on {trunk} in {}",
                    ns.name()
                )
            })?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = thread::Builder::new()
            .name(format!("lab-{sub}"))
            .spawn({
                let stop = Arc::clone(&stop);
                move || relay(tap, &sock, vid, &stop)
            })
            .with_context(|| format!("starting the relay thread for {sub}"))?;
        Ok(VlanRelay {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for VlanRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                eprintln!("apns lab: a VLAN relay thread panicked");
            }
        }
    }
}

/// A new TAP device `name` in the calling thread's network namespace.
fn open_tap(name: &str) -> Result<File> {
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("opening /dev/net/tun")?;
    // SAFETY: ifreq is plain data, valid when zeroed.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    anyhow::ensure!(
        name.len() < req.ifr_name.len(),
        "interface name {name} is too long"
    );
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // Raw Ethernet frames, without the 4-byte packet-information header.
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: `req` is a valid ifreq that outlives the call; TUNSETIFF reads it and writes the
    // final name back into it.
    unsafe { tun_set_iff(tun.as_raw_fd(), &req) }
        .with_context(|| format!("creating TAP {name}"))?;
    Ok(tun)
}

/// A packet socket on `trunk` that receives every frame, with VLAN tags as auxiliary data.
fn open_trunk(trunk: &str) -> Result<OwnedFd> {
    let sock = socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::EthAll,
    )
    .context("opening an AF_PACKET socket")?;
    setsockopt(&sock, PacketAuxdata, &true).context("PACKET_AUXDATA")?;
    let ifindex =
        nix::net::if_::if_nametoindex(trunk).with_context(|| format!("no interface {trunk}"))?;
    bind(
        sock.as_raw_fd(),
        &link::link_addr(ifindex, libc::ETH_P_ALL as u16)?,
    )
    .with_context(|| format!("binding a packet socket to {trunk}"))?;
    Ok(sock)
}

/// Moves frames both ways until `stop`.
fn relay(mut tap: File, trunk: &OwnedFd, vid: u16, stop: &AtomicBool) {
    let mut buf = vec![0u8; BUF_LEN];
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [
            PollFd::new(tap.as_fd(), PollFlags::POLLIN),
            PollFd::new(trunk.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, TICK_MS) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                eprintln!("apns lab: VLAN relay poll failed, stopping: {e}");
                return;
            }
        }
        let [from_tap, from_trunk] = fds.map(|fd| fd.any().unwrap_or(false));
        if from_tap {
            tag_out(&mut tap, trunk, vid, &mut buf);
        }
        if from_trunk {
            untag_in(&mut tap, trunk, vid, &mut buf);
        }
    }
}

/// One frame the TAP sent: insert the tag after the MAC addresses and put it on the trunk.
fn tag_out(tap: &mut File, trunk: &OwnedFd, vid: u16, buf: &mut [u8]) {
    // Read 4 bytes in, then move the MAC addresses to the front to open the gap for the tag.
    let n = match tap.read(&mut buf[4..]) {
        Ok(n) if n >= 12 => n,
        // Nothing a TAP produces is shorter than its MACs; errors end with the TAP.
        _ => return,
    };
    buf.copy_within(4..16, 0);
    buf[12..14].copy_from_slice(&TPID_8021Q.to_be_bytes());
    buf[14..16].copy_from_slice(&vid.to_be_bytes());
    // A frame that cannot be sent (trunk down, queue full) is lost, as on a wire.
    let _ = send(trunk.as_raw_fd(), &buf[..n + 4], MsgFlags::empty());
}

/// One frame from the trunk: pass it to the TAP if it was tagged with `vid`. The kernel has
/// already taken the tag out of the bytes and reports it beside them.
fn untag_in(tap: &mut File, trunk: &OwnedFd, vid: u16, buf: &mut [u8]) {
    let mut cmsg = cmsg_space!(libc::tpacket_auxdata);
    let (len, outgoing, tag) = {
        let mut iov = [IoSliceMut::new(buf)];
        let Ok(msg) = recvmsg::<LinkAddr>(
            trunk.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_DONTWAIT,
        ) else {
            return;
        };
        let outgoing = msg.address.is_some_and(|a| a.pkttype() == PACKET_OUTGOING);
        let tag = msg
            .cmsgs()
            .ok()
            .and_then(|mut cmsgs| cmsgs.find_map(|c| vlan_tag(&c)));
        (msg.bytes, outgoing, tag)
    };
    if outgoing || tag != Some(vid) {
        return;
    }
    // A TAP takes every frame written to it or none; a failure is a lost frame.
    let _ = tap.write(&buf[..len]);
}

/// The VLAN id of an 802.1Q tag in a PACKET_AUXDATA control message.
fn vlan_tag(cmsg: &ControlMessageOwned) -> Option<u16> {
    let ControlMessageOwned::Unknown(unknown) = cmsg else {
        return None;
    };
    if unknown.cmsg_header.cmsg_level != libc::SOL_PACKET
        || unknown.cmsg_header.cmsg_type != libc::PACKET_AUXDATA
    {
        return None;
    }
    // struct tpacket_auxdata { u32 tp_status, tp_len, tp_snaplen; u16 tp_mac, tp_net,
    // tp_vlan_tci, tp_vlan_tpid; }, native byte order.
    let bytes = &unknown.data_bytes;
    let u16_at = |at: usize| Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?));
    let status = u32::from_ne_bytes(bytes.get(0..4)?.try_into().ok()?);
    let (tci, tpid) = (u16_at(16)?, u16_at(18)?);
    // TP_STATUS_VLAN_TPID_VALID unset means an old kernel that only knew 802.1Q.
    let is_8021q = status & libc::TP_STATUS_VLAN_TPID_VALID == 0 || tpid == TPID_8021Q;
    (status & libc::TP_STATUS_VLAN_VALID != 0 && is_8021q).then_some(tci & 0x0fff)
}
