//! `LabChild`: a process started inside a lab namespace (an agent, tcpdump, iperf3…) that is
//! stopped and reaped when the guard drops. It borrows the lab, so it cannot outlive the
//! namespaces it runs in.

use std::{
    marker::PhantomData,
    process::{Child, ExitStatus},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use super::Lab;

/// How long a child gets to exit after SIGTERM when its guard drops: enough for an agent to
/// detach its programs and remove its pins.
const DROP_GRACE: Duration = Duration::from_secs(2);

/// How often waits look at the child.
const POLL: Duration = Duration::from_millis(10);

/// A running child process of a lab; SIGTERM, then SIGKILL, and reaped on drop.
pub struct LabChild<'lab> {
    child: Child,
    /// The command line, for messages.
    line: String,
    _lab: PhantomData<&'lab Lab>,
}

impl<'lab> LabChild<'lab> {
    pub(super) fn new(child: Child, line: String) -> LabChild<'lab> {
        LabChild {
            child,
            line,
            _lab: PhantomData,
        }
    }

    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The underlying process, e.g. to take its piped stdout.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Waits up to `timeout` for the child to exit; `None` if it still runs.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for `{}`", self.line))?
            {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(POLL);
        }
    }

    /// Sends SIGTERM, waits up to `grace`, then SIGKILLs; returns how the child ended.
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.wait_timeout(Duration::ZERO)? {
            return Ok(status);
        }
        let pid = Pid::from_raw(
            i32::try_from(self.child.id()).with_context(|| format!("pid of `{}`", self.line))?,
        );
        // The child may exit between try_wait and kill: it is not reaped yet, so the pid is
        // still ours and ESRCH cannot happen.
        kill(pid, Signal::SIGTERM).with_context(|| format!("SIGTERM to `{}`", self.line))?;
        if let Some(status) = self.wait_timeout(grace)? {
            return Ok(status);
        }
        self.child
            .kill()
            .with_context(|| format!("SIGKILL to `{}`", self.line))?;
        self.child
            .wait()
            .with_context(|| format!("reaping `{}`", self.line))
    }
}

impl Drop for LabChild<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.stop(DROP_GRACE) {
            eprintln!("apns lab: stopping `{}`: {e:#}", self.line);
        }
    }
}
