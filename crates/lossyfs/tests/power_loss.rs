//! Real kernel FUSE tests of `runnel-lossyfs`: they start the binary on a temporary backing
//! directory and mountpoint, use the mount with ordinary file operations, and simulate power
//! losses through the control socket. They need root and /dev/fuse.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use runnel_lossyfs::{request, Command as Ctl, PowerLossReport, Response, Stats};

const BIN: &str = env!("CARGO_BIN_EXE_runnel-lossyfs");

/// A running `runnel-lossyfs mount`. Dropping it kills the process and unmounts, also when the
/// test failed half-way.
struct Mount {
    child: Option<Child>,
    mnt: PathBuf,
    backing: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    tmpfs: bool,
    _tmp: tempfile::TempDir,
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_mounted(mnt: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/self/mounts").expect("read /proc/self/mounts");
    let mnt = mnt.to_str().expect("utf-8 path");
    mounts.lines().any(|line| line.split(' ').nth(1) == Some(mnt))
}

impl Mount {
    fn start() -> Mount {
        Mount::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Mount {
        Mount::start_full(extra, None)
    }

    /// With the backing directory on a tmpfs of `bytes`: a small disk that can fill up.
    fn start_on_tmpfs(bytes: u64) -> Mount {
        Mount::start_full(&[], Some(bytes))
    }

    fn start_full(extra: &[&str], tmpfs: Option<u64>) -> Mount {
        assert!(Path::new("/dev/fuse").exists(), "these tests need /dev/fuse");
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = fs::canonicalize(tmp.path()).expect("canonicalize");
        let (backing, mnt) = (root.join("backing"), root.join("mnt"));
        fs::create_dir(&backing).expect("mkdir backing");
        fs::create_dir(&mnt).expect("mkdir mnt");
        if let Some(bytes) = tmpfs {
            let status = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
                .arg(&backing)
                .status()
                .expect("mount tmpfs");
            assert!(status.success(), "mounting a tmpfs failed");
        }
        let socket = root.join("control.sock");
        let log = root.join("lossyfs.log");
        let child = Command::new(BIN)
            .arg("mount")
            .arg("--backing")
            .arg(&backing)
            .arg("--mountpoint")
            .arg(&mnt)
            .arg("--control")
            .arg(&socket)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"))
            .spawn()
            .expect("start runnel-lossyfs");
        let mut m = Mount { child: Some(child), mnt, backing, socket, log, tmpfs: tmpfs.is_some(), _tmp: tmp };
        wait_for("the mount", Duration::from_secs(30), || {
            if let Some(status) = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("runnel-lossyfs exited with {status}: {}", m.log());
            }
            request(&m.socket, Ctl::Stats).is_ok() && is_mounted(&m.mnt)
        });
        m
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    fn backing(&self, rel: &str) -> PathBuf {
        self.backing.join(rel)
    }

    fn power_loss(&self) -> PowerLossReport {
        match request(&self.socket, Ctl::Drop).expect("drop request") {
            Response::Dropped(report) => report,
            other => panic!("unexpected answer {other:?}"),
        }
    }

    fn stats(&self) -> Stats {
        match request(&self.socket, Ctl::Stats).expect("stats request") {
            Response::Stats(stats) => stats,
            other => panic!("unexpected answer {other:?}"),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Gracefully first: the process unmounts before it exits.
            if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: plain kill(2) on our own child.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(15);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&self.mnt).stderr(Stdio::null()).status();
        }
        if self.tmpfs {
            let _ = Command::new("umount").arg("-l").arg(&self.backing).status();
        }
    }
}

fn write_file(path: &Path, data: &[u8], fsync: bool) {
    let mut f = File::create(path).expect("create");
    f.write_all(data).expect("write");
    if fsync {
        f.sync_all().expect("fsync");
    }
}

fn fsync_dir(path: &Path) {
    File::open(path).expect("open dir").sync_all().expect("fsync dir");
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn unsynced_append_is_lost_and_synced_data_stays() {
    let m = Mount::start();
    let p = m.path("wal");
    let mut f = OpenOptions::new().create(true).append(true).open(&p).unwrap();
    f.write_all(b"AAAA").unwrap();
    f.sync_all().unwrap();
    f.write_all(b"BBBB").unwrap();
    // Read-your-writes through the mount; only the durable part is in the backing directory.
    assert_eq!(read(&p), b"AAAABBBB");
    assert_eq!(fs::metadata(&p).unwrap().len(), 8);
    assert_eq!(read(&m.backing("wal")), b"AAAA");

    let report = m.power_loss();
    assert_eq!(report.dirty_bytes, 4);
    assert_eq!(report.files_reverted, 1);
    assert_eq!(report.entries_removed, 0, "an fsynced file keeps its name: {report:?}");
    assert_eq!(read(&p), b"AAAA");

    // The handle outlived the power loss: its appends go to the durable end of file, and
    // fdatasync counts as well; close does not.
    f.write_all(b"CC").unwrap();
    f.sync_data().unwrap();
    f.write_all(b"DD").unwrap();
    drop(f);
    assert_eq!(read(&p), b"AAAACCDD");
    m.power_loss();
    assert_eq!(read(&p), b"AAAACC");

    let stats = m.stats();
    assert_eq!(stats.bytes_written, 12);
    assert_eq!(stats.bytes_synced, 6);
    assert_eq!(stats.fsyncs, 2);
    assert_eq!(stats.bytes_dropped, 6);
    assert_eq!(stats.power_losses, 2);
    assert_eq!(stats.dirty_bytes, 0);
}

#[test]
fn new_entries_follow_the_lenient_model() {
    let m = Mount::start();
    // Fsynced file, parent never fsynced: the file's fsync makes its name durable.
    write_file(&m.path("synced"), b"s", true);
    // Nothing fsynced: gone.
    write_file(&m.path("unsynced"), b"u", false);
    // File and directory fsynced: survives.
    fs::create_dir(m.path("d")).unwrap();
    write_file(&m.path("d/both"), b"b", true);
    // Name made durable by the directory fsync, data never fsynced: comes back empty.
    write_file(&m.path("d/name_only"), b"n", false);
    fsync_dir(&m.path("d"));
    // New directories with nothing fsynced: gone with their contents.
    fs::create_dir_all(m.path("e/f")).unwrap();
    write_file(&m.path("e/f/g"), b"g", false);
    // A file fsynced deep in new directories keeps its ancestors.
    fs::create_dir_all(m.path("x/y")).unwrap();
    write_file(&m.path("x/y/z"), b"z", true);
    assert_eq!(read(&m.path("unsynced")), b"u");
    assert_eq!(m.stats().pending_entries, 4, "unsynced, e, e/f, e/f/g");

    let report = m.power_loss();
    assert_eq!(report.removed, vec!["e".to_string(), "unsynced".to_string()]);
    assert_eq!(report.entries_removed, 4);
    assert_eq!(read(&m.path("synced")), b"s");
    assert!(!m.path("unsynced").exists());
    assert!(!m.backing("unsynced").exists());
    assert_eq!(read(&m.path("d/both")), b"b");
    assert_eq!(read(&m.path("d/name_only")), b"");
    assert!(!m.path("e").exists());
    assert_eq!(read(&m.path("x/y/z")), b"z");
    let mut names: Vec<String> =
        fs::read_dir(&m.mnt).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["d", "synced", "x"]);
    // The name is free again.
    write_file(&m.path("unsynced"), b"again", true);
    assert_eq!(read(&m.path("unsynced")), b"again");
}

#[test]
fn strict_mode_needs_the_parent_directory_fsync() {
    let m = Mount::start_with(&["--strict-dir-sync"]);
    write_file(&m.path("file_only"), b"f", true);
    fs::create_dir(m.path("d")).unwrap();
    write_file(&m.path("d/inner"), b"i", true);
    fsync_dir(&m.path("d"));
    let report = m.power_loss();
    // d's own name lives in the root, which was never fsynced.
    assert_eq!(report.removed, vec!["d".to_string(), "file_only".to_string()]);
    assert!(!m.path("file_only").exists());
    assert!(!m.path("d").exists());

    write_file(&m.path("file"), b"f", true);
    fs::create_dir(m.path("d")).unwrap();
    write_file(&m.path("d/inner"), b"i", true);
    fsync_dir(&m.path("d"));
    fsync_dir(&m.mnt);
    let report = m.power_loss();
    assert_eq!(report.entries_removed, 0, "{report:?}");
    assert_eq!(read(&m.path("file")), b"f");
    assert_eq!(read(&m.path("d/inner")), b"i");
}

#[test]
fn unsynced_truncate_and_overwrite_are_reverted() {
    let m = Mount::start();
    let p = m.path("sst");
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    write_file(&p, &data, true);
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();

    f.set_len(1000).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().len(), 1000);
    f.set_len(5000).unwrap();
    let shrunk_then_grown = read(&p);
    assert_eq!(&shrunk_then_grown[..1000], &data[..1000]);
    assert!(shrunk_then_grown[1000..].iter().all(|&b| b == 0), "old bytes must not reappear");
    m.power_loss();
    assert_eq!(read(&p), data);

    f.write_all_at(b"XXXX", 50_000).unwrap();
    assert_eq!(
        &read(&p)[49_998..50_006],
        &[data[49_998], data[49_999], b'X', b'X', b'X', b'X', data[50_004], data[50_005]]
    );
    m.power_loss();
    // The handle stayed open across the power loss and reads the durable content.
    let mut via_handle = vec![0u8; 8];
    f.read_exact_at(&mut via_handle, 49_998).unwrap();
    assert_eq!(via_handle, &data[49_998..50_006]);
    assert_eq!(read(&p), data);

    // O_TRUNC is a truncation like any other.
    drop(File::create(&p).unwrap());
    assert_eq!(fs::metadata(&p).unwrap().len(), 0);
    m.power_loss();
    assert_eq!(read(&p), data);

    // A synced truncation stays.
    f.set_len(10).unwrap();
    f.sync_all().unwrap();
    m.power_loss();
    assert_eq!(read(&p), &data[..10]);
}

#[test]
fn renames_and_unlinks_are_durable_at_once() {
    let m = Mount::start();
    write_file(&m.path("a"), b"old", true);
    fs::rename(m.path("a"), m.path("b")).unwrap();
    m.power_loss();
    assert!(!m.path("a").exists());
    assert_eq!(read(&m.path("b")), b"old");

    // RocksDB's CURRENT: write a temporary file, fsync it, rename it over the old one.
    write_file(&m.path("CURRENT"), b"MANIFEST-000001\n", true);
    write_file(&m.path("000002.dbtmp"), b"MANIFEST-000002\n", true);
    fs::rename(m.path("000002.dbtmp"), m.path("CURRENT")).unwrap();
    m.power_loss();
    assert_eq!(read(&m.path("CURRENT")), b"MANIFEST-000002\n");
    assert!(!m.path("000002.dbtmp").exists());

    // A never-fsynced file renamed: the name is durable, the data is not.
    write_file(&m.path("fresh"), b"data", false);
    fs::rename(m.path("fresh"), m.path("renamed")).unwrap();
    let report = m.power_loss();
    assert_eq!(report.entries_removed, 0, "{report:?}");
    assert_eq!(read(&m.path("renamed")), b"");

    fs::remove_file(m.path("b")).unwrap();
    m.power_loss();
    assert!(!m.path("b").exists());

    // A renamed directory keeps its synced contents; unsynced new files in it still go.
    fs::create_dir(m.path("dir1")).unwrap();
    write_file(&m.path("dir1/f"), b"x", true);
    fs::rename(m.path("dir1"), m.path("dir2")).unwrap();
    write_file(&m.path("dir2/g"), b"unsynced", false);
    let report = m.power_loss();
    assert_eq!(report.removed, vec!["dir2/g".to_string()]);
    assert!(!m.path("dir1").exists());
    assert_eq!(read(&m.path("dir2/f")), b"x");
    assert!(!m.path("dir2/g").exists());
}

#[test]
fn append_loop_keeps_exactly_the_synced_prefix() {
    let m = Mount::start();
    let p = m.path("log");
    let mut f = OpenOptions::new().create(true).append(true).open(&p).unwrap();
    fsync_dir(&m.mnt);
    let mut all = Vec::new();
    let mut synced = Vec::new();
    for i in 0..500 {
        let record = format!("record {i} {}\n", "x".repeat(i % 37));
        f.write_all(record.as_bytes()).unwrap();
        all.extend_from_slice(record.as_bytes());
        if i % 7 == 6 {
            f.sync_data().unwrap();
            synced = all.clone();
        }
    }
    assert!(synced.len() < all.len(), "the loop must end with unsynced records");
    assert_eq!(read(&p), all);
    let stats = m.stats();
    assert_eq!(stats.dirty_bytes, (all.len() - synced.len()) as u64);
    assert_eq!(stats.bytes_written, all.len() as u64);

    let report = m.power_loss();
    assert_eq!(report.dirty_bytes, (all.len() - synced.len()) as u64);
    assert_eq!(read(&p), synced);

    // A new handle appends at the durable end of file.
    drop(f);
    let mut f = OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"tail\n").unwrap();
    f.sync_all().unwrap();
    m.power_loss();
    let mut expected = synced.clone();
    expected.extend_from_slice(b"tail\n");
    assert_eq!(read(&p), expected);
}

#[test]
fn large_unsynced_file_reads_back_and_syncs() {
    let m = Mount::start();
    let p = m.path("big");
    let chunk: Vec<u8> = (0..65_536u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let mut f = File::create(&p).unwrap();
    for _ in 0..64 {
        f.write_all(&chunk).unwrap();
    }
    let mut back = Vec::new();
    File::open(&p).unwrap().read_to_end(&mut back).unwrap();
    assert_eq!(back.len(), 64 * chunk.len());
    assert!(back.chunks(chunk.len()).all(|c| c == chunk.as_slice()));
    f.sync_all().unwrap();
    assert_eq!(m.stats().dirty_bytes, 0);
    m.power_loss();
    assert_eq!(read(&p), back);
}

#[test]
fn posix_locks_work_like_on_a_local_filesystem() {
    // RocksDB locks its LOCK file with fcntl(F_SETLK). The filesystem does not implement locks,
    // so the kernel keeps them itself; OFD locks show that they are enforced.
    let m = Mount::start();
    let a = OpenOptions::new().create(true).truncate(false).read(true).write(true).open(m.path("LOCK")).unwrap();
    let b = OpenOptions::new().read(true).write(true).open(m.path("LOCK")).unwrap();
    let lock = |l_type: i32| libc::flock {
        l_type: l_type as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    let fcntl = |file: &File, cmd: i32, l_type: i32| {
        // SAFETY: a valid open descriptor and a valid flock structure.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &lock(l_type)) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error().raw_os_error())
        }
    };
    assert_eq!(fcntl(&a, libc::F_SETLK, libc::F_WRLCK), Ok(()));
    // An OFD lock has another owner than this process's lock, so it conflicts.
    assert_eq!(fcntl(&b, libc::F_OFD_SETLK, libc::F_WRLCK), Err(Some(libc::EAGAIN)));
    assert_eq!(fcntl(&a, libc::F_SETLK, libc::F_UNLCK), Ok(()));
    assert_eq!(fcntl(&b, libc::F_OFD_SETLK, libc::F_WRLCK), Ok(()));
}

#[test]
fn other_users_create_files_they_own() {
    let m = Mount::start();
    fs::set_permissions(&m.mnt, fs::Permissions::from_mode(0o777)).unwrap();
    write_file(&m.path("root_only"), b"r", true);
    let status = Command::new("sh")
        .arg("-c")
        .arg("echo hi > f && mkdir d && echo x > d/g && cat f >/dev/null && ! (echo no >> root_only) 2>/dev/null")
        .current_dir(&m.mnt)
        .uid(10001)
        .gid(10001)
        .status()
        .unwrap();
    assert!(status.success(), "the commands as uid 10001 failed: {status}");
    for rel in ["f", "d", "d/g"] {
        let meta = fs::metadata(m.backing(rel)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (10001, 10001), "{rel}");
    }
    assert_eq!(read(&m.path("root_only")), b"r");
}

#[test]
fn statfs_reports_the_backing_filesystem() {
    let m = Mount::start();
    let mounted = rustix::fs::statvfs(&m.mnt).unwrap();
    let backing = rustix::fs::statvfs(&m.backing).unwrap();
    assert_eq!(mounted.f_blocks * mounted.f_frsize, backing.f_blocks * backing.f_frsize);
    assert_eq!(mounted.f_files, backing.f_files);
}

#[test]
fn cli_prints_stats_and_drop_reports_as_json() {
    let m = Mount::start();
    write_file(&m.path("f"), b"0123456789", false);
    let run = |cmd: &str| {
        let out = Command::new(BIN).arg(cmd).arg("--control").arg(&m.socket).output().unwrap();
        assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let stats: Stats = serde_json::from_str(&run("stats")).unwrap();
    assert_eq!((stats.dirty_bytes, stats.dirty_files, stats.pending_entries), (10, 1, 1));
    let report: PowerLossReport = serde_json::from_str(&run("drop")).unwrap();
    assert_eq!(report.dirty_bytes, 10);
    assert_eq!(report.removed, vec!["f".to_string()]);
    assert!(!m.path("f").exists());
}

fn send_sigterm(m: &Mount) {
    let pid = libc::pid_t::try_from(m.child.as_ref().expect("running").id()).unwrap();
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
}

fn wait_exit(m: &mut Mount) -> std::process::ExitStatus {
    let child = m.child.as_mut().expect("running");
    let mut status = None;
    wait_for("runnel-lossyfs to exit", Duration::from_secs(30), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    m.child = None;
    status.unwrap()
}

#[test]
fn sigterm_unmounts() {
    let mut m = Mount::start();
    write_file(&m.path("f"), b"x", true);
    send_sigterm(&m);
    let status = wait_exit(&mut m);
    assert!(status.success(), "{status}: {}", m.log());
    assert!(!is_mounted(&m.mnt), "still mounted after SIGTERM");
    assert!(!m.socket.exists(), "control socket left behind");
    assert_eq!(read(&m.backing("f")), b"x");
}

#[test]
fn sigterm_unmounts_a_busy_mount() {
    let mut m = Mount::start();
    let open = File::create(m.path("held")).unwrap();
    send_sigterm(&m);
    // The mount disappears at once (lazy unmount) although a file is still open on it...
    wait_for("the lazy unmount", Duration::from_secs(10), || !is_mounted(&m.mnt));
    // ...and the process exits once that file is closed.
    drop(open);
    let status = wait_exit(&mut m);
    assert!(status.success(), "{status}: {}", m.log());
    assert!(m.log().contains("busy"), "{}", m.log());
}

#[test]
fn sigkill_leaves_no_mount_behind() {
    // auto_unmount: fusermount3 unmounts when the process dies without cleaning up.
    let mut m = Mount::start();
    let mut child = m.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    wait_for("fusermount3 to unmount", Duration::from_secs(10), || !is_mounted(&m.mnt));
}

#[test]
fn a_full_disk_fails_the_write_not_the_fsync() {
    let m = Mount::start_on_tmpfs(1 << 20);
    let mounted = rustix::fs::statvfs(&m.mnt).unwrap();
    assert_eq!(mounted.f_blocks * mounted.f_frsize, 1 << 20, "statfs shows the backing tmpfs");

    let p = m.path("wal");
    let mut f = File::create(&p).unwrap();
    let chunk = vec![7u8; 64 * 1024];
    let err = loop {
        if let Err(e) = f.write_all(&chunk) {
            break e;
        }
        assert!(fs::metadata(&p).unwrap().len() <= 2 << 20, "unsynced writes never hit ENOSPC");
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    let accepted = fs::metadata(&p).unwrap().len();
    assert!(accepted >= 512 << 10, "ENOSPC came too early, after {accepted} bytes");
    // What was accepted fits: the fsync succeeds and makes all of it durable.
    f.sync_all().unwrap();
    assert_eq!(fs::metadata(m.backing("wal")).unwrap().len(), accepted);
    let report = m.power_loss();
    assert_eq!(report.dirty_bytes, 0);
    let back = read(&p);
    assert_eq!(back.len() as u64, accepted);
    assert!(back.iter().all(|&b| b == 7));
}
