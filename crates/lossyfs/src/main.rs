//! `runnel-lossyfs`: see the library documentation for the semantics.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use fuser::{MountOption, SessionACL, SessionUnmounter};
use parking_lot::Mutex;

use runnel_lossyfs::control::{self, Command, Response};
use runnel_lossyfs::fs::{DirSync, LossyFs, State};

#[derive(Parser)]
#[command(name = "runnel-lossyfs", about = "A FUSE filesystem that simulates power loss")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve MNT in the foreground until SIGTERM/SIGINT/SIGHUP or an outside unmount.
    Mount {
        /// Directory with the durable state.
        #[arg(long)]
        backing: PathBuf,
        /// Where to mount (created if missing).
        #[arg(long)]
        mountpoint: PathBuf,
        /// Unix socket for `drop` and `stats`.
        #[arg(long)]
        control: PathBuf,
        /// A new entry survives a power loss only once its parent directory was fsynced.
        #[arg(long)]
        strict_dir_sync: bool,
        /// Mount with mount(2) directly instead of through `fusermount3 -o auto_unmount`; a
        /// SIGKILLed process then leaves the mount behind (`fusermount3 -u MNT`).
        #[arg(long)]
        no_auto_unmount: bool,
    },
    /// Simulate a power loss: discard every unsynced change. Prints what was dropped (JSON).
    Drop {
        #[arg(long)]
        control: PathBuf,
    },
    /// Print counters (JSON).
    Stats {
        #[arg(long)]
        control: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Mount { backing, mountpoint, control, strict_dir_sync, no_auto_unmount } => {
            let dir_sync = if strict_dir_sync { DirSync::Strict } else { DirSync::Lenient };
            mount(&backing, &mountpoint, &control, dir_sync, !no_auto_unmount)
        }
        Cmd::Drop { control } => client(&control, Command::Drop),
        Cmd::Stats { control } => client(&control, Command::Stats),
    }
}

fn client(socket: &Path, command: Command) -> anyhow::Result<()> {
    let response = control::request(socket, command).with_context(|| format!("control socket {}", socket.display()))?;
    let json = match response {
        Response::Dropped(report) => serde_json::to_string(&report)?,
        Response::Stats(stats) => serde_json::to_string(&stats)?,
        Response::Error(e) => bail!("runnel-lossyfs: {e}"),
    };
    println!("{json}");
    Ok(())
}

enum Event {
    Signal(i32),
    SessionEnded(io::Result<()>),
}

/// Unmounts on every exit path, so that an error or panic in this process never leaves a mount
/// behind that blocks the runner's cleanup.
struct MountGuard {
    unmounter: SessionUnmounter,
    mountpoint: PathBuf,
    /// The kernel already ended the session: the mountpoint may belong to someone else now.
    gone: bool,
}

impl MountGuard {
    fn unmount(&mut self) {
        if self.gone {
            return;
        }
        // umount(2) ourselves rather than through fuser: with auto_unmount, fuser only closes
        // its socket to fusermount3, which unmounts nothing while this process still serves.
        match umount2(&self.mountpoint, 0) {
            Ok(()) => {}
            // Not mounted (any more): nothing to do.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                // A process still has files open or its cwd inside: detach now, the kernel
                // finishes when they let go (or when this process exits and closes /dev/fuse).
                eprintln!("runnel-lossyfs: {} is busy; detaching lazily", self.mountpoint.display());
                if let Err(e) = umount2(&self.mountpoint, libc::MNT_DETACH) {
                    eprintln!("runnel-lossyfs: lazy unmount: {e}");
                }
            }
            Err(e) => {
                // EPERM without CAP_SYS_ADMIN: fuser goes through fusermount3 -u.
                eprintln!("runnel-lossyfs: umount: {e}; trying fusermount3");
                if let Err(e) = self.unmounter.unmount() {
                    eprintln!("runnel-lossyfs: unmount: {e}");
                }
            }
        }
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        self.unmount();
    }
}

fn umount2(path: &Path, flags: i32) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: c_path is a valid NUL-terminated string that outlives the call.
    let rc = unsafe { libc::umount2(c_path.as_ptr(), flags) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn mount(
    backing: &Path,
    mountpoint: &Path,
    socket: &Path,
    dir_sync: DirSync,
    auto_unmount: bool,
) -> anyhow::Result<()> {
    // Before any thread exists, so that every thread inherits the mask and only the signal
    // thread below receives these signals.
    let signals = signals::block().context("blocking signals")?;

    let backing = std::fs::canonicalize(backing).with_context(|| format!("backing directory {}", backing.display()))?;
    std::fs::create_dir_all(mountpoint).with_context(|| format!("creating mountpoint {}", mountpoint.display()))?;
    let mountpoint = std::fs::canonicalize(mountpoint)?;
    if mountpoint.starts_with(&backing) {
        bail!("the mountpoint must not be inside the backing directory");
    }
    let state = Arc::new(Mutex::new(
        State::new(backing.clone(), dir_sync).with_context(|| format!("backing directory {}", backing.display()))?,
    ));

    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName("runnel-lossyfs".into()),
        MountOption::Subtype("runnel-lossyfs".into()),
        MountOption::DefaultPermissions,
        MountOption::RW,
        MountOption::NoSuid,
        MountOption::NoDev,
    ];
    if auto_unmount {
        config.mount_options.push(MountOption::AutoUnmount);
    }
    config.acl = SessionACL::All;
    config.n_threads = Some(1);
    let mut session = fuser::Session::new(LossyFs::new(state.clone()), &mountpoint, &config)
        .with_context(|| format!("mounting {}", mountpoint.display()))?;
    let mut guard = MountGuard { unmounter: session.unmount_callable(), mountpoint: mountpoint.clone(), gone: false };
    let notifier = session.notifier();

    // Bound only now: a control socket that answers means the mount is live.
    let listener = control::bind(socket).with_context(|| format!("control socket {}", socket.display()))?;
    let _socket_file = RemoveOnDrop(socket.to_path_buf());

    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || control::serve(listener, state, Some(notifier)))?;
    let session_tx = tx.clone();
    std::thread::Builder::new().name("session".into()).spawn(move || {
        let _ = session_tx.send(Event::SessionEnded(session.run()));
    })?;
    std::thread::Builder::new().name("signals".into()).spawn(move || loop {
        match signals::wait(&signals) {
            Ok(sig) => {
                if tx.send(Event::Signal(sig)).is_err() {
                    return;
                }
            }
            Err(e) => {
                eprintln!("runnel-lossyfs: waiting for signals: {e}");
                return;
            }
        }
    })?;

    eprintln!(
        "runnel-lossyfs: serving {} (durable state in {}), control socket {}",
        mountpoint.display(),
        backing.display(),
        socket.display()
    );
    match rx.recv() {
        Ok(Event::Signal(sig)) => {
            eprintln!("runnel-lossyfs: signal {sig}: unmounting {}", mountpoint.display());
            guard.unmount();
            guard.gone = true;
            // The session ends when the kernel closes the connection; with a lazy unmount that
            // waits for the last open file, so do not wait forever: exiting closes /dev/fuse,
            // which aborts the connection.
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Event::SessionEnded(Err(e))) => eprintln!("runnel-lossyfs: session: {e}"),
                Ok(_) => {}
                Err(_) => eprintln!("runnel-lossyfs: session still busy after unmount; exiting"),
            }
            Ok(())
        }
        Ok(Event::SessionEnded(res)) => {
            guard.gone = true;
            eprintln!("runnel-lossyfs: {} was unmounted", mountpoint.display());
            res.context("FUSE session")
        }
        Err(_) => bail!("all event sources ended"),
    }
}

mod signals {
    use std::io;

    pub struct Set(libc::sigset_t);

    /// Block SIGINT, SIGTERM and SIGHUP in the calling thread (and threads it spawns later).
    pub fn block() -> io::Result<Set> {
        // SAFETY: sigemptyset and sigaddset initialise a set we own; pthread_sigmask only changes
        // the calling thread's mask and accepts a null pointer for the old mask.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::sigaddset(&mut set, sig);
            }
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            Ok(Set(set))
        }
    }

    /// Wait for one of the blocked signals.
    pub fn wait(set: &Set) -> io::Result<i32> {
        let mut sig = 0;
        // SAFETY: `set` is an initialised sigset_t and `sig` a valid place for the result.
        let rc = unsafe { libc::sigwait(&set.0, &mut sig) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(sig)
    }
}
