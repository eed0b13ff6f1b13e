//! The control socket: a Unix stream socket that takes one command per connection.
//!
//! The client writes one line, `drop` or `stats`; the server answers with one line of JSON, a
//! [`Response`], and closes the connection. `drop` (the power loss) is answered only after the
//! state was reverted and the kernel's caches were invalidated.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fuser::{INodeNo, Notifier};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::fs::{Invalidation, PowerLossReport, State, Stats};

/// A request on the control socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Simulate a power loss.
    Drop,
    Stats,
}

impl Command {
    fn word(self) -> &'static str {
        match self {
            Command::Drop => "drop",
            Command::Stats => "stats",
        }
    }

    fn parse(line: &str) -> Option<Command> {
        match line.trim() {
            "drop" => Some(Command::Drop),
            "stats" => Some(Command::Stats),
            _ => None,
        }
    }
}

/// The answer to a [`Command`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Dropped(PowerLossReport),
    Stats(Stats),
    Error(String),
}

/// How long one client may take to send its command: a stuck client must not block the next.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Bind the control socket, replacing a stale socket file left by a crashed instance but never
/// one that still has a live server behind it.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("another runnel-lossyfs serves {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    UnixListener::bind(path)
}

/// Serve the control socket until the listener fails. `notifier` invalidates the kernel's caches
/// after a power loss (None in tests without a mount).
pub fn serve(listener: UnixListener, state: Arc<Mutex<State>>, notifier: Option<Notifier>) {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                if let Err(e) = handle(stream, &state, notifier.as_ref()) {
                    eprintln!("runnel-lossyfs: control connection: {e}");
                }
            }
            Err(e) => {
                eprintln!("runnel-lossyfs: control socket: {e}");
                return;
            }
        }
    }
}

fn handle(stream: UnixStream, state: &Mutex<State>, notifier: Option<&Notifier>) -> io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new((&stream).take(1024)).read_line(&mut line)?;
    let response = match Command::parse(&line) {
        Some(Command::Stats) => Response::Stats(state.lock().stats()),
        Some(Command::Drop) => {
            let (report, invalidations) = state.lock().power_loss();
            // Outside the lock: an invalidation can wait for a request the session thread is
            // serving, and that request needs the lock.
            if let Some(n) = notifier {
                invalidate(n, &invalidations);
            }
            eprintln!(
                "runnel-lossyfs: power loss: dropped {} dirty bytes in {} files, removed {} entries {:?}",
                report.dirty_bytes, report.files_reverted, report.entries_removed, report.removed
            );
            Response::Dropped(report)
        }
        None => Response::Error(format!("unknown command {:?}", line.trim())),
    };
    let mut out = serde_json::to_string(&response).map_err(io::Error::other)?;
    out.push('\n');
    (&stream).write_all(out.as_bytes())
}

fn invalidate(notifier: &Notifier, invalidations: &[Invalidation]) {
    for inv in invalidations {
        // Failures only mean the kernel had nothing cached (ENOENT is already ignored by fuser).
        let res = match inv {
            Invalidation::Inode(ino) => notifier.inval_inode(INodeNo(*ino), 0, 0),
            Invalidation::Entry { parent, name } => notifier.inval_entry(INodeNo(*parent), name),
        };
        if let Err(e) = res {
            eprintln!("runnel-lossyfs: cache invalidation {inv:?}: {e}");
        }
    }
}

/// Send `command` to the server at `socket` and wait for its answer.
pub fn request(socket: &Path, command: Command) -> io::Result<Response> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    stream.write_all(format!("{}\n", command.word()).as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
