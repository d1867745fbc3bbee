//! Named network namespaces: creating and deleting them (`ip netns`), entering one on a single
//! thread or in a child before exec (setns(CLONE_NEWNET) only, so the mount namespace and with it
//! /sys/fs/bpf stay the root one's — `ip netns exec` would remount /sys), sweeping those that
//! crashed runs left behind, and running commands with bounded waits and useful errors.

use std::{
    ffi::OsStr,
    fs::File,
    io::{self, Write as _},
    os::{
        fd::{AsFd, OwnedFd},
        unix::process::CommandExt as _,
    },
    panic,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{mpsc, Arc},
    thread,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use nix::{
    sched::{setns, CloneFlags},
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use super::Role;

/// Where `ip netns` keeps the names of network namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Every lab namespace is named `apnslab-<pid>-<seq>-<role>`: the pid tells whether its owner is
/// still alive, so that a lab can sweep what a crashed run left without touching live labs.
pub const NETNS_PREFIX: &str = "apnslab-";

/// How long `run` lets a command take: `ip` and `nft` answer in milliseconds, so
/// this only turns a hang into an error.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// One named network namespace. Dropping it deletes the name (the kernel frees the namespace,
/// and the veths in it, once the last fd and socket inside it are closed).
pub(super) struct Namespace {
    role: Role,
    name: String,
    /// Shared with the pre_exec closures of commands, which must own what they use.
    fd: Arc<OwnedFd>,
}

impl Namespace {
    pub(super) fn create(role: Role, name: String) -> Result<Namespace> {
        run(Command::new("ip").args(["netns", "add"]).arg(&name))?;
        let path = path_of(&name);
        match File::open(&path) {
            Ok(file) => Ok(Namespace {
                role,
                name,
                fd: Arc::new(file.into()),
            }),
            Err(e) => {
                if let Err(del) = delete(&name) {
                    eprintln!("apns lab: {del:#}");
                }
                Err(e).with_context(|| format!("opening {}", path.display()))
            }
        }
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn role(&self) -> Role {
        self.role
    }

    /// Moves the calling thread (only it) into this namespace.
    fn enter(&self) -> io::Result<()> {
        setns(self.fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("setns into network namespace {}: {e}", self.name),
            )
        })
    }

    /// Runs `f` on a fresh thread inside this namespace and returns its result; a panic in `f`
    /// is passed on to the caller. Sockets made by `f` stay in the namespace wherever they are
    /// used afterwards.
    pub(super) fn run_on_thread<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        thread::scope(|scope| {
            let worker = thread::Builder::new()
                .name(format!("lab-{}", self.role))
                .spawn_scoped(scope, || -> io::Result<T> {
                    self.enter()?;
                    Ok(f())
                })?;
            worker
                .join()
                .unwrap_or_else(|payload| panic::resume_unwind(payload))
        })
    }

    /// A command whose child enters this namespace between fork and exec.
    pub(super) fn command(&self, program: &OsStr) -> Command {
        let mut cmd = Command::new(program);
        let fd = Arc::clone(&self.fd);
        // SAFETY: the closure runs in the forked child before exec, where only
        // async-signal-safe work is allowed: it makes one setns system call on an fd the parent
        // opened, and allocates nothing (nix's Errno converts to io::Error without allocating).
        unsafe {
            cmd.pre_exec(move || {
                setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
            });
        }
        cmd
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Err(e) = delete(&self.name) {
            eprintln!("apns lab: {e:#}");
        }
    }
}

/// The path of a named namespace.
pub fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

fn delete(name: &str) -> Result<()> {
    run(Command::new("ip").args(["netns", "delete"]).arg(name)).map(drop)
}

/// Deletes the lab namespaces whose owning process is gone (a crashed or killed run).
/// Problems are printed: a sweep that fails must not stop a new lab.
pub(super) fn sweep_stale() {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => {
            eprintln!("apns lab: cannot list {NETNS_DIR} to sweep stale labs: {e}");
            return;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(pid) = owner_pid(name) else { continue };
        if is_alive(pid) {
            continue;
        }
        match delete(name) {
            Ok(()) => eprintln!("apns lab: removed stale namespace {name} (pid {pid} is gone)"),
            // Another lab (in this or another process) may have swept it first.
            Err(_) if !entry.path().exists() => {}
            Err(e) => eprintln!("apns lab: cannot remove stale namespace {name}: {e:#}"),
        }
    }
}

/// Whether `pid` is a running process of our pid namespace. A pid above pid_max never exists;
/// a zombie (killed, not yet reaped) counts as gone. A reused pid keeps a stale lab alive:
/// harmless, a later sweep removes it. When in doubt (unreadable /proc), alive.
fn is_alive(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) state …`: comm may hold anything, so read after the last ')'.
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().chars().next()),
            Some(Some('Z' | 'X'))
        ),
        Err(e) => e.kind() != io::ErrorKind::NotFound,
    }
}

/// The pid in `apnslab-<pid>-…`, or `None` for a name that is not a lab's.
fn owner_pid(name: &str) -> Option<u64> {
    let rest = name.strip_prefix(NETNS_PREFIX)?;
    let (pid, _) = rest.split_once('-')?;
    pid.parse().ok()
}

/// Runs `cmd` to completion (at most 30 s) and returns its standard output. The error names
/// the command line, its exit status and its standard error.
pub fn run(cmd: &mut Command) -> Result<String> {
    run_bounded(cmd, None)
}

/// `run` with `input` written to the command's standard input (e.g. `nft -f -`).
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> Result<String> {
    run_bounded(cmd, Some(input))
}

fn run_bounded(cmd: &mut Command, input: Option<&[u8]>) -> Result<String> {
    let line = command_line(cmd);
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting `{line}`"))?;
    let pid = Pid::from_raw(i32::try_from(child.id()).context("child pid out of range")?);
    let stdin = child.stdin.take();
    let (done, result) = mpsc::channel::<io::Result<Output>>();
    let output = thread::scope(|scope| {
        if let (Some(mut pipe), Some(input)) = (stdin, input) {
            // A command that exits without reading its input breaks the pipe: its exit status
            // and stderr tell more than the write error would.
            scope.spawn(move || pipe.write_all(input));
        }
        scope.spawn(move || done.send(child.wait_with_output()));
        match result.recv_timeout(RUN_TIMEOUT) {
            Ok(output) => output.map_err(anyhow::Error::from),
            Err(_) => {
                // Unblocks the waiting thread, which the scope joins.
                let _ = kill(pid, Signal::SIGKILL);
                Err(anyhow::anyhow!("timed out after {RUN_TIMEOUT:?}, killed"))
            }
        }
    })
    .with_context(|| format!("running `{line}`"))?;
    if !output.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).with_context(|| format!("`{line}` printed non-UTF-8 output"))
}

pub(super) fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}
