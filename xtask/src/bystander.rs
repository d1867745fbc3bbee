//! A bystander: an `apns-agent run` that the tests did not start, running through the whole
//! suite as the operator's own agent would on a live gateway. The suite must pass beside it,
//! and the leftover check must not count it (it is none of the tests' business).
//!
//! It runs in a network namespace of its own (`apns-bystander-<pid>`, one veth pair) with a
//! pin directory of its own, entered with `nsenter --net` (not `ip netns exec`, whose private
//! mount namespace the agent refuses), and is stopped, unloaded and removed at the end, even
//! when the suite fails. Leftovers of a crashed earlier run are swept first.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::util::{describe, output, step, target_dir};

const PREFIX: &str = "apns-bystander-";
/// How long the bystander may take to attach.
const READY: Duration = Duration::from_secs(30);

pub struct Bystander {
    agent: PathBuf,
    namespace: String,
    pins: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Bystander {
    /// Starts `agent` (a built apns-agent binary) in a namespace of its own.
    pub fn start(agent: &Path) -> Result<Bystander> {
        sweep(agent);
        let name = format!("{PREFIX}{}", std::process::id());
        let mut bystander = Bystander {
            agent: agent.to_path_buf(),
            pins: Path::new("/sys/fs/bpf").join(&name),
            log: target_dir().join(format!("{name}.log")),
            namespace: name,
            child: None,
        };
        // On any error below, dropping `bystander` removes what was made so far.
        let ns = bystander.namespace.clone();
        output(Command::new("ip").args(["netns", "add", &ns]))?;
        for args in [
            &["link", "add", "by0", "type", "veth", "peer", "name", "by1"][..],
            &["link", "set", "lo", "up"],
            &["link", "set", "by0", "up"],
            &["link", "set", "by1", "up"],
        ] {
            output(Command::new("ip").args(["-n", &ns]).args(args))?;
        }
        let log = fs::File::create(&bystander.log)
            .with_context(|| format!("creating {}", bystander.log.display()))?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{ns}"))
            .arg(agent)
            .arg("--pin-dir")
            .arg(&bystander.pins)
            .args(["run", "--iface", "by0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        step(format!("starting a bystander agent: {}", describe(&cmd)));
        bystander.child = Some(
            cmd.spawn()
                .with_context(|| format!("could not start `{}`", describe(&cmd)))?,
        );
        let deadline = Instant::now() + READY;
        while !bystander
            .pins
            .join("links")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some())
        {
            if let Some(child) = bystander.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "the bystander agent exited ({status}); its log: {}",
                        fs::read_to_string(&bystander.log).unwrap_or_default()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!("the bystander agent did not attach within {READY:?}");
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(bystander)
    }

    /// Whether it still runs (the suite must not have stopped it).
    pub fn still_running(&mut self) -> Result<()> {
        match self.child.as_mut().map(Child::try_wait).transpose()? {
            Some(None) => Ok(()),
            Some(Some(status)) => bail!(
                "the bystander agent ended during the tests ({status}); its log: {}",
                fs::read_to_string(&self.log).unwrap_or_default()
            ),
            None => bail!("the bystander agent never started"),
        }
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM: the agent leaves its datapath (fail-static); the unload below removes it.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
        remove(&self.agent, &self.namespace, &self.pins);
        let _ = fs::remove_file(&self.log);
    }
}

/// Unloads the bystander's datapath, deletes its namespace and state files.
fn remove(agent: &Path, namespace: &str, pins: &Path) {
    if pins.exists() {
        let _ = Command::new(agent)
            .arg("--pin-dir")
            .arg(pins)
            .arg("unload")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let _ = fs::remove_file(Path::new("/var/lib/apns-agent").join(format!("{namespace}.json")));
    let _ = Command::new("ip")
        .args(["netns", "del", namespace])
        .stderr(Stdio::null())
        .status();
}

/// Removes the bystanders of earlier runs whose xtask is gone.
fn sweep(agent: &Path) {
    let Ok(entries) = fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let dead = name
            .strip_prefix(PREFIX)
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new("/proc").join(pid.to_string()).exists());
        if dead {
            remove(agent, &name, &Path::new("/sys/fs/bpf").join(&name));
        }
    }
}
