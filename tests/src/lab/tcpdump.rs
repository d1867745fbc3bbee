//! `Tcpdump`: a capture of one interface in a lab namespace, written to a pcap file, for
//! `apns-agent replay`. Started and ready (tcpdump said it is listening) before any frame
//! it should see is sent; stopped on drop.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::Stdio,
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use super::{Lab, LabChild, Role};

/// How long tcpdump gets to start capturing, and to exit once told to.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A running tcpdump; see the module documentation.
pub struct Tcpdump<'lab> {
    child: LabChild<'lab>,
    /// tcpdump's stderr, line by line (what it says when it starts and stops).
    said: mpsc::Receiver<String>,
}

impl<'lab> Tcpdump<'lab> {
    /// Starts `tcpdump ARGS -w PATH` in `role`'s namespace (ARGS: the interface, a
    /// direction, a filter) and returns once it is capturing.
    pub fn start(lab: &'lab Lab, role: Role, args: &[&str], path: &Path) -> Result<Tcpdump<'lab>> {
        let mut cmd = lab.command(role, "tcpdump");
        // -Z root: keep writing as root (Debian's tcpdump drops to its own user otherwise);
        // -U and --immediate-mode: every frame reaches the file as it is captured.
        cmd.args(["-n", "-Z", "root", "-U", "--immediate-mode", "-s", "0"])
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
        Ok(Tcpdump { child, said })
    }

    /// Stops it (SIGTERM: it writes what it holds and exits) and returns what it said at
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
