//! What the runner does on the Docker host: run commands, mount the size-capped tmpfs each node's
//! data lives on, and run the power-loss filesystem (`runnel-lossyfs`) over it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Runs `program args`, failing with its stderr when it exits non-zero; returns its stdout.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    run_env(program, args, &[])
}

/// [`run`] with extra environment variables.
pub fn run_env(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().with_context(|| format!("starting {program}"))?;
    if !out.status.success() {
        bail!("{program} {} failed ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

/// Whether `path` is a mount point (an entry of /proc/self/mounts).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else { return false };
    let want = path.to_string_lossy();
    mounts.lines().any(|l| l.split_whitespace().nth(1) == Some(want.as_ref()))
}

/// A tmpfs of `bytes` at `dir`: the node's "disk". Its size cap is what a full-disk fault fills.
pub fn mount_tmpfs(dir: &Path, bytes: u64) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir_s = dir.to_string_lossy();
    run("mount", &["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs", &dir_s])?;
    Ok(())
}

/// Unmounts `dir` if it is mounted, lazily if it is busy (cleanup must not stop at one mount).
pub fn unmount(dir: &Path) {
    if !is_mounted(dir) {
        return;
    }
    let dir_s = dir.to_string_lossy().into_owned();
    if run("umount", &[&dir_s]).is_err() {
        let _ = run("umount", &["-l", &dir_s]);
    }
}

/// Free bytes on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> Result<u64> {
    let st = rustix::fs::statvfs(path).with_context(|| format!("statvfs {}", path.display()))?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// One node's power-loss filesystem: a `runnel-lossyfs` process serving `mountpoint` over the
/// durable state in `backing`.
pub struct LossyFs {
    pub mountpoint: PathBuf,
    control: PathBuf,
    binary: PathBuf,
    child: Option<Child>,
}

impl LossyFs {
    pub fn mount(binary: &Path, backing: &Path, mountpoint: &Path, control: &Path, log: &Path) -> Result<Self> {
        std::fs::create_dir_all(mountpoint).with_context(|| format!("creating {}", mountpoint.display()))?;
        let log = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(binary)
            .arg("mount")
            .arg("--backing")
            .arg(backing)
            .arg("--mountpoint")
            .arg(mountpoint)
            .arg("--control")
            .arg(control)
            // RocksDB fsyncs the directory of every file it creates: hold it to that.
            .arg("--strict-dir-sync")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut fs = Self {
            mountpoint: mountpoint.to_path_buf(),
            control: control.to_path_buf(),
            binary: binary.to_path_buf(),
            child: Some(child),
        };
        let mp = fs.mountpoint.clone();
        let ctl = fs.control.clone();
        let mounted = wait_until(Duration::from_secs(10), "the power-loss filesystem to mount", || {
            is_mounted(&mp) && ctl.exists()
        });
        if let Err(e) = mounted {
            fs.stop();
            return Err(e);
        }
        Ok(fs)
    }

    /// Power loss: everything written but not fsync'd is gone. Returns what the filesystem says it
    /// dropped.
    pub fn drop_unsynced(&self) -> Result<String> {
        let binary = self.binary.to_string_lossy();
        let control = self.control.to_string_lossy();
        Ok(run(&binary, &["drop", "--control", &control])?.trim().to_string())
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM unmounts; a process that does not go within 5 s is killed and the mount
            // removed by hand.
            let _ = run("kill", &["-TERM", &child.id().to_string()]);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if is_mounted(&self.mountpoint) {
            let mp = self.mountpoint.to_string_lossy().into_owned();
            if run("fusermount3", &["-u", &mp]).is_err() {
                let _ = run("umount", &["-l", &mp]);
            }
        }
    }
}

impl Drop for LossyFs {
    fn drop(&mut self) {
        self.stop();
    }
}
