//! The cluster under test: the project's own Compose file (deploy/compose/compose-N.yml) brought up
//! under a project name of the run's, with an override that puts each node's data directory on
//! its own power-loss filesystem over a size-capped tmpfs. Everything it creates — containers,
//! network, volumes, mounts, processes — is removed by [`Cluster::teardown`], which also runs when
//! the value is dropped (a failed or interrupted run cleans up too).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::host::{self, LossyFs};

/// The node's unprivileged user in the image (deploy/image/Dockerfile).
const NODE_UID: &str = "10001";

pub struct ClusterSpec {
    pub nodes: usize,
    /// deploy/compose/compose-<nodes>.yml.
    pub compose_file: PathBuf,
    pub image: String,
    /// Where mounts, logs and the history go (created; removed on teardown unless `keep`).
    pub work_dir: PathBuf,
    pub lossyfs_binary: PathBuf,
    /// Size of each node's data tmpfs.
    pub disk_bytes: u64,
    /// The node's free-space watermark (RUNNEL_MIN_FREE_BYTES).
    pub min_free_bytes: u64,
    /// The planted bug: nodes acknowledge without fsync (RUNNEL_UNSAFE_SKIP_FSYNC).
    pub skip_fsync: bool,
    /// Run the nodes under libfaketime (the image must carry it: `scripts/image.sh --chaos`), each
    /// reading its clock offset from a file the runner rewrites (clock-skew faults).
    pub faketime: bool,
    /// First three octets of the private network (RUNNEL_NET in the Compose file).
    pub net: String,
    pub project: String,
}

pub struct Node {
    pub id: u64,
    pub ip: String,
    pub service: String,
    /// The tmpfs that is this node's disk.
    pub disk: PathBuf,
    /// Durable state of the power-loss filesystem (inside `disk`).
    pub backing: PathBuf,
    /// The node's clock offset for libfaketime (`+0`, `+1h`, `-10m`, ...).
    pub clock_file: PathBuf,
    pub fs: Option<LossyFs>,
}

pub struct Cluster {
    pub spec: ClusterSpec,
    pub nodes: Vec<Node>,
    /// Container id per node id: Compose creates each once, `docker kill`/`start` keep it.
    containers: std::collections::BTreeMap<u64, String>,
    override_file: PathBuf,
    torn_down: bool,
}

impl Cluster {
    /// Mounts every node's storage and starts the containers; returns once every container runs.
    pub fn up(spec: ClusterSpec) -> Result<Cluster> {
        std::fs::create_dir_all(&spec.work_dir).with_context(|| format!("creating {}", spec.work_dir.display()))?;
        let override_file = spec.work_dir.join("compose-override.yml");
        let mut cluster =
            Cluster { nodes: Vec::new(), containers: Default::default(), override_file, spec, torn_down: false };
        // Any error from here on tears down what was made (Drop).
        for i in 1..=cluster.spec.nodes as u64 {
            let disk = cluster.spec.work_dir.join(format!("node{i}"));
            host::mount_tmpfs(&disk, cluster.spec.disk_bytes)?;
            let backing = disk.join("durable");
            std::fs::create_dir_all(&backing)?;
            host::run("chown", &[&format!("{NODE_UID}:{NODE_UID}"), &backing.to_string_lossy()])?;
            let mountpoint = cluster.spec.work_dir.join("mnt").join(format!("node{i}"));
            let fs = LossyFs::mount(
                &cluster.spec.lossyfs_binary,
                &backing,
                &mountpoint,
                &cluster.spec.work_dir.join(format!("node{i}.lossyfs.sock")),
                &cluster.spec.work_dir.join(format!("node{i}.lossyfs.log")),
            )?;
            let clock_dir = cluster.spec.work_dir.join("clock").join(format!("node{i}"));
            std::fs::create_dir_all(&clock_dir)?;
            let clock_file = clock_dir.join("offset");
            std::fs::write(&clock_file, "+0\n")?;
            cluster.nodes.push(Node {
                id: i,
                ip: format!("{}.{}", cluster.spec.net, 10 + i),
                service: format!("node{i}"),
                disk,
                backing,
                clock_file,
                fs: Some(fs),
            });
        }
        cluster.write_override()?;
        cluster.compose(&["up", "-d", "--no-color"])?;
        for i in 1..=cluster.spec.nodes as u64 {
            let out = cluster.compose(&["ps", "-q", &format!("node{i}")])?;
            let c = out.trim().to_string();
            if c.is_empty() {
                bail!("node {i} has no container after docker-compose up");
            }
            cluster.containers.insert(i, c);
        }
        Ok(cluster)
    }

    fn write_override(&self) -> Result<()> {
        let mut y = String::from("version: \"2.4\"\nservices:\n");
        for n in &self.nodes {
            let Some(fs) = &n.fs else { continue };
            y.push_str(&format!(
                "  {svc}:\n    image: {image}\n    volumes:\n      - {mnt}:/data\n",
                svc = n.service,
                image = self.spec.image,
                mnt = fs.mountpoint.display(),
            ));
            if self.spec.faketime {
                let dir = n.clock_file.parent().unwrap_or(&n.clock_file);
                y.push_str(&format!("      - {}:/faketime:ro\n", dir.display()));
            }
            y.push_str(&format!(
                "    environment:\n      RUNNEL_MIN_FREE_BYTES: \"{free}\"\n      RUNNEL_UNSAFE_SKIP_FSYNC: \"{skip}\"\n",
                free = self.spec.min_free_bytes,
                skip = self.spec.skip_fsync,
            ));
            if self.spec.faketime {
                // Only the wall clock moves: tokio's timers and Raft's timeouts use the monotonic
                // clock, as they must. The offset file is re-read every second.
                y.push_str(
                    "      LD_PRELOAD: /usr/lib/faketime/libfaketime.so.1\n      \
                     FAKETIME_TIMESTAMP_FILE: /faketime/offset\n      FAKETIME_CACHE_DURATION: \"1\"\n      \
                     FAKETIME_DONT_FAKE_MONOTONIC: \"1\"\n",
                );
            }
        }
        std::fs::write(&self.override_file, y).with_context(|| format!("writing {}", self.override_file.display()))
    }

    /// Runs docker-compose on this cluster's project.
    pub fn compose(&self, args: &[&str]) -> Result<String> {
        let file = self.spec.compose_file.to_string_lossy().into_owned();
        let over = self.override_file.to_string_lossy().into_owned();
        let mut all = vec!["-p", &self.spec.project, "-f", &file, "-f", &over];
        all.extend_from_slice(args);
        host::run_env("docker-compose", &all, &[("RUNNEL_NET", &self.spec.net)])
    }

    /// The container id of node `id`.
    pub fn container(&self, id: u64) -> Result<String> {
        self.containers.get(&id).cloned().with_context(|| format!("node {id} has no container"))
    }

    pub fn node(&self, id: u64) -> Result<&Node> {
        self.nodes.iter().find(|n| n.id == id).with_context(|| format!("no node {id}"))
    }

    pub fn bootstrap(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("{}:9292", n.ip)).collect()
    }

    /// The host pid of node `id`'s process (0 when the container is not running).
    pub fn pid(&self, id: u64) -> Result<u32> {
        let c = self.container(id)?;
        let out = host::run("docker", &["inspect", "-f", "{{.State.Pid}}", &c])?;
        out.trim().parse().with_context(|| format!("pid of node {id}: '{}'", out.trim()))
    }

    pub fn docker(&self, verb: &str, id: u64) -> Result<()> {
        let c = self.container(id)?;
        host::run("docker", &[verb, &c])?;
        Ok(())
    }

    pub fn kill(&self, id: u64) -> Result<()> {
        let c = self.container(id)?;
        host::run("docker", &["kill", "-s", "KILL", &c])?;
        // `docker kill` returns before the container is reaped; the filesystem must see no more
        // writes from it before a power loss is applied.
        host::wait_until(Duration::from_secs(20), &format!("node {id} to stop"), || self.running(id) == Some(false))
    }

    /// Whether node `id`'s container runs (None: unknown).
    pub fn running(&self, id: u64) -> Option<bool> {
        let c = self.container(id).ok()?;
        let out = host::run("docker", &["inspect", "-f", "{{.State.Running}}", &c]).ok()?;
        Some(out.trim() == "true")
    }

    pub fn paused(&self, id: u64) -> bool {
        let Ok(c) = self.container(id) else { return false };
        host::run("docker", &["inspect", "-f", "{{.State.Paused}}", &c]).is_ok_and(|o| o.trim() == "true")
    }

    /// How many times Docker restarted node `id` after its process exited by itself.
    pub fn restarts(&self, id: u64) -> u64 {
        let Ok(c) = self.container(id) else { return 0 };
        host::run("docker", &["inspect", "-f", "{{.RestartCount}}", &c])
            .ok()
            .and_then(|o| o.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Runs `iptables args` inside node `id`'s network namespace (the image has no iptables; the
    /// host's runs in the container's namespace).
    pub fn iptables(&self, id: u64, args: &[&str]) -> Result<()> {
        let pid = self.pid(id)?;
        if pid == 0 {
            bail!("node {id} is not running");
        }
        let ns = format!("--net=/proc/{pid}/ns/net");
        let mut all = vec![ns.as_str(), "iptables", "-w"];
        all.extend_from_slice(args);
        host::run("nsenter", &all)?;
        Ok(())
    }

    /// Saves every container's log into the work directory (before teardown removes them).
    pub fn save_logs(&self) {
        for n in &self.nodes {
            if let Ok(c) = self.container(n.id) {
                if let Ok(out) = std::process::Command::new("docker").args(["logs", "--timestamps", &c]).output() {
                    let mut all = out.stdout;
                    all.extend_from_slice(&out.stderr);
                    let _ = std::fs::write(self.spec.work_dir.join(format!("node{}.log", n.id)), all);
                }
            }
        }
    }

    /// Removes containers, network and volumes, then unmounts and removes every node's storage.
    pub fn teardown(&mut self, keep_work_dir: bool) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        // Paused containers cannot be killed by `down`.
        for n in &self.nodes {
            if self.paused(n.id) {
                let _ = self.docker("unpause", n.id);
            }
        }
        if let Err(e) = self.compose(&["down", "-v", "--remove-orphans", "-t", "5"]) {
            tracing::warn!(error = %e, "docker-compose down");
        }
        for n in &mut self.nodes {
            if let Some(mut fs) = n.fs.take() {
                fs.stop();
            }
            host::unmount(&n.disk);
        }
        if !keep_work_dir {
            let _ = std::fs::remove_dir_all(&self.spec.work_dir);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.teardown(true);
    }
}

/// The path of `relative` in the repository this crate is built from.
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(relative)
}
