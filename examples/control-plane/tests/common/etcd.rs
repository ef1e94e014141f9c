//! Real etcd processes for tests: [`EtcdCluster::start`] runs `members` etcd 3.4
//! processes on free loopback ports, each with its own data dir in a temporary
//! directory, and waits until every member answers a read through [`EtcdStore`] (which
//! requires a leader). Dropping the cluster SIGKILLs every member and reaps it.
//!
//! [`require_etcd`] follows the house rule: without an etcd binary the test skips with
//! a one-line reason, unless `TWINE_REQUIRE_REALSYS=1`, where it fails instead.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use twine_control::store::{EtcdStore, Store};

/// How long a member may take to answer after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The etcd binary, or `None` (after printing why the test skips) if there is none.
/// Panics instead of skipping under `TWINE_REQUIRE_REALSYS=1`.
pub fn require_etcd() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("etcd"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin/etcd")])
        .find(|p| p.is_file());
    if found.is_none() {
        let reason = "no etcd binary (install etcd 3.4+, e.g. /usr/bin/etcd)";
        if std::env::var("TWINE_REQUIRE_REALSYS").is_ok_and(|v| v == "1") {
            panic!("TWINE_REQUIRE_REALSYS=1 but the real system is not usable: {reason}");
        }
        eprintln!("skipped: {reason}");
    }
    found
}

/// Ports handed out by this process, so two clusters of one test binary never share
/// one even if the kernel offers it again.
static USED_PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Picks `n` free loopback ports: binds port 0 (all listeners open at once, so the
/// kernel gives distinct ports), then releases them.
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let mut used = USED_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let used = used.get_or_insert_with(HashSet::new);
    let mut listeners = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < n {
        let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
        let port = l.local_addr()?.port();
        listeners.push(l);
        if used.insert(port) {
            ports.push(port);
        }
    }
    Ok(ports)
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A running etcd cluster of real processes.
pub struct EtcdCluster {
    binary: PathBuf,
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    // Last, so the members are killed before their data dirs go.
    dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `members` members and waits until each answers (20 s at most).
    pub async fn start(members: usize) -> Result<EtcdCluster> {
        let binary = require_etcd().context("no etcd binary")?;
        let dir = tempfile::Builder::new().prefix("twine-etcd-").tempdir()?;
        let ports = free_ports(2 * members)?;
        let token = format!(
            "twine-test-{}-{}",
            std::process::id(),
            dir.path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let members: Vec<Member> = (0..members)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                data_dir: dir.path().join(format!("m{i}.data")),
                log: dir.path().join(format!("m{i}.log")),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            binary,
            members,
            initial_cluster,
            token,
            dir,
        };
        for i in 0..cluster.members.len() {
            cluster.spawn(i)?;
        }
        for i in 0..cluster.members.len() {
            cluster.wait_ready(i).await?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let m = &self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&m.log)
            .with_context(|| format!("opening {}", m.log.display()))?;
        let child = Command::new(&self.binary)
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// Waits until member `i` serves a read (which needs a leader).
    async fn wait_ready(&mut self, i: usize) -> Result<()> {
        let endpoint = self.endpoint(i);
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(child) = self.members[i].child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "etcd member {i} exited with {status} before answering; log:\n{}",
                    log_tail(&self.members[i].log)
                );
            }
            match EtcdStore::connect(std::slice::from_ref(&endpoint), Duration::from_secs(2)).await
            {
                Ok(store) => match store.get("/", false, None).await {
                    Ok(_) => return Ok(()),
                    Err(e) => last = e.to_string(),
                },
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "etcd member {i} at {endpoint} did not answer within {START_TIMEOUT:?} ({last}); log:\n{}",
            log_tail(&self.members[i].log)
        )
    }

    /// Member `i`'s client URL.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client_port)
    }

    /// Every member's client URL, comma-separated.
    pub fn endpoints(&self) -> String {
        (0..self.members.len())
            .map(|i| self.endpoint(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client URLs as a list (what [`EtcdStore::connect`] takes).
    pub fn endpoint_list(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// Connects an [`EtcdStore`] to every member.
    pub async fn store(&self) -> Result<EtcdStore> {
        Ok(EtcdStore::connect(&self.endpoint_list(), Duration::from_secs(5)).await?)
    }

    /// Member `i`'s process id, if it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// The temporary directory holding the data dirs and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// SIGKILLs member `i` and reaps it.
    pub fn kill(&mut self, i: usize) -> Result<()> {
        if let Some(mut child) = self.members[i].child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts member `i` again from its data dir (etcd ignores the initial-cluster flags
    /// when the data dir exists) and waits until it answers.
    pub async fn restart(&mut self, i: usize) -> Result<()> {
        self.kill(i)?;
        self.spawn(i)?;
        self.wait_ready(i).await
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
