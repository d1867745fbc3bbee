//! `Tcpdump`: a capture in a lab namespace, written to a pcap file, for `apns-agent replay`.
//! Started and ready (tcpdump said it is listening) before any frame it should see is sent;
//! stopped on drop.
//!
//! A capture that is compared frame for frame with live counters must hold every frame sent
//! before it stops, however late tcpdump is scheduled: tcpdump leaves what it has not yet read
//! from its ring when SIGTERM comes. So a test sends a [`CaptureMarker`] where its captures see
//! it, after the frames they should hold, and stops them with [`Tcpdump::stop_after`]: tcpdump
//! reads frames in the order the kernel queued them, so once the marker is in the file, so is
//! everything before it.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{Lab, LabChild, Role};

/// How long tcpdump gets to start capturing, to write a marker, and to exit once told to.
const TIMEOUT: Duration = Duration::from_secs(10);

/// How often a wait for a marker reads the capture's file.
const POLL: Duration = Duration::from_millis(20);

/// The marker's ethertype: 0x88B5, IEEE 802's for local experiments, which nothing in the
/// lab speaks (the datapath counts it as not_ip, live and in replay alike).
const MARKER_ETHERTYPE: [u8; 2] = [0x88, 0xb5];

/// What tcpdump keeps of a frame: all of any frame the lab sends (MTU 1500, plus Ethernet and
/// a VLAN tag). Not `-s 0`: on an interface with offloads (veths have them) libpcap then sizes
/// every slot of its ring for 64 KiB, so its default 2 MiB ring holds ~32 frames, and a burst
/// of the lab's parallel connections overflows it ("packets dropped by kernel"); at 2048 bytes
/// it holds about a thousand.
const SNAPLEN: &str = "2048";

/// The shortest Ethernet frame without its FCS; the marker is padded to it.
const MIN_FRAME: usize = 60;

/// Makes markers unique within a process (the lab's id makes them unique across labs).
static NEXT_MARKER: AtomicU64 = AtomicU64::new(0);

/// A running tcpdump; see the module documentation.
pub struct Tcpdump<'lab> {
    child: LabChild<'lab>,
    /// Where it writes.
    path: PathBuf,
    /// tcpdump's stderr, line by line (what it says when it starts and stops).
    said: mpsc::Receiver<String>,
}

/// A frame sent after the frames some captures must hold; see the module documentation.
pub struct CaptureMarker {
    /// The frame's payload: unique, and found as is in any capture's file whatever its link
    /// header (Ethernet, SLL, SLL2).
    payload: Vec<u8>,
}

impl CaptureMarker {
    /// Sends a marker out of `ifname` in `role`'s namespace: a broadcast frame no protocol
    /// of the lab answers.
    pub fn send(lab: &Lab, role: Role, ifname: &str) -> Result<CaptureMarker> {
        let payload = format!(
            "apns-tests capture marker {} {}",
            lab.id(),
            NEXT_MARKER.fetch_add(1, Ordering::Relaxed)
        )
        .into_bytes();
        let mut frame = vec![0xff; 6];
        frame.extend(lab.mac(role, ifname)?);
        frame.extend(MARKER_ETHERTYPE);
        frame.extend(&payload);
        frame.resize(frame.len().max(MIN_FRAME), 0);
        lab.send_frames(role, ifname, &[frame])
            .context("sending a capture marker")?;
        Ok(CaptureMarker { payload })
    }
}

impl<'lab> Tcpdump<'lab> {
    /// Starts `tcpdump ARGS -w PATH` in `role`'s namespace (ARGS: the interface, a
    /// direction, a filter) and returns once it is capturing.
    pub fn start(lab: &'lab Lab, role: Role, args: &[&str], path: &Path) -> Result<Tcpdump<'lab>> {
        let mut cmd = lab.command(role, "tcpdump");
        // -Z root: keep writing as root (Debian's tcpdump drops to its own user otherwise);
        // -U and --immediate-mode: every frame reaches the file as it is captured.
        cmd.args(["-n", "-Z", "root", "-U", "--immediate-mode", "-s", SNAPLEN])
            .args(args)
            .arg("-w")
            .arg(path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = lab.spawn(&mut cmd)?;
        let stderr = child
            .child_mut()
            .stderr
            .take()
            .context("tcpdump's stderr is not piped")?;
        let (tx, said) = mpsc::channel();
        // Drains tcpdump's stderr until it exits, so it never blocks or dies on a closed pipe.
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        loop {
            match said.recv_timeout(TIMEOUT) {
                Ok(line) if line.contains("listening on") => break,
                Ok(_) => {}
                Err(_) => bail!(
                    "tcpdump {args:?} in {} did not start capturing within {TIMEOUT:?}",
                    lab.ns_name(role)
                ),
            }
        }
        Ok(Tcpdump {
            child,
            path: path.to_owned(),
            said,
        })
    }

    /// Waits until `marker` is in the file, so every frame sent before it is too, then stops
    /// tcpdump and returns what it said at the end (see [`Tcpdump::stop`]).
    pub fn stop_after(self, marker: &CaptureMarker) -> Result<String> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let written = fs::read(&self.path)
                .with_context(|| format!("reading the capture {}", self.path.display()))?;
            if written
                .windows(marker.payload.len())
                .any(|window| window == marker.payload)
            {
                return self.stop();
            }
            if Instant::now() > deadline {
                let path = self.path.display().to_string();
                bail!(
                    "the capture {path} did not get the marker within {TIMEOUT:?} (tcpdump: {})",
                    self.stop()?
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Stops it (SIGTERM: it writes what it has read and exits) and returns what it said at
    /// the end: how many frames it captured, and dropped.
    pub fn stop(mut self) -> Result<String> {
        self.child.stop(TIMEOUT)?;
        // Its last lines, until the drain thread ends at the end of the pipe.
        let mut said = Vec::new();
        while let Ok(line) = self.said.recv_timeout(TIMEOUT) {
            said.push(line);
        }
        Ok(said.join("; "))
    }
}
