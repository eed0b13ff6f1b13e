//! `runnel-lossyfs`: a FUSE filesystem that simulates power loss, for chaos tests.
//!
//! `kill -9` of a process never loses data that sits in the page cache, so it cannot show
//! whether a program fsyncs what it must. This filesystem keeps everything that was not made
//! durable in memory, and on command throws it away as a power cut would. A chaos runner puts a
//! Runnel node's data directory on it, SIGKILLs the node, sends `drop`, and restarts the node:
//! the node then sees exactly what it had fsynced.
//!
//! # Usage
//!
//! ```text
//! runnel-lossyfs mount --backing DIR --mountpoint MNT --control SOCKET [--strict-dir-sync] [--no-auto-unmount]
//! runnel-lossyfs drop  --control SOCKET     # power loss; prints a JSON report
//! runnel-lossyfs stats --control SOCKET     # counters; prints JSON
//! ```
//!
//! `drop` prints one line such as
//! `{"dirty_bytes":9,"files_reverted":2,"entries_removed":2,"removed":["d"]}` ([`PowerLossReport`]);
//! `stats` prints [`Stats`]. The control protocol is one line in (`drop` or `stats`), one line of
//! JSON out ([`control`]); a Rust runner can call [`control::request`] directly.
//!
//! `mount` runs in the foreground until SIGTERM, SIGINT or SIGHUP (then it unmounts, lazily if
//! the mount is busy) or until the filesystem is unmounted from outside. The mount is ready when
//! the control socket answers. Must run as root (it mounts with `allow_other` so that other users,
//! e.g. uid 10001 in a container the mountpoint is bind-mounted into, can use it, and with
//! `default_permissions` so the kernel checks permissions against the attributes of the backing
//! files). `DIR` must be writable by those users if they are to create files in the root.
//! By default the mount goes through `fusermount3 -o auto_unmount`, which unmounts even if this
//! process is SIGKILLed; with `--no-auto-unmount` it calls mount(2) itself and a crash leaves a
//! dead mount behind: clean it up with `fusermount3 -u MNT` (or `umount -l MNT`).
//!
//! `DIR` holds the durable state: what survived the last power loss plus everything synced since.
//! A power loss changes it only by removing entries that were not durable. Change it from outside
//! only while no file has unsynced changes and nothing uses the mount (e.g. right after a `drop`,
//! with the node stopped): edits of file contents are then seen at once.
//!
//! # What is durable, and what a power loss (`drop`) discards
//!
//! File data:
//! - Writes, truncations (ftruncate, `O_TRUNC`) and size changes (fallocate without
//!   `FALLOC_FL_KEEP_SIZE`) are held in memory per file, as written extents on top of the backing
//!   file. Reads see them (read-your-writes, like a page cache), through every handle.
//! - They become durable only on fsync or fdatasync of that file (or a write on an `O_SYNC` /
//!   `O_DSYNC` handle): then the extents and the size are written to the backing file and the
//!   backing file is fsynced. Close, flush, release and `sync_file_range` make nothing durable.
//! - A power loss discards all of it for every file, including files that are still open: later
//!   reads through those handles return the durable content, and `O_APPEND` writes continue at
//!   the durable end of file.
//! - Space: a write or fallocate that grows files by more than the backing filesystem has free
//!   (counting what all unsynced growth will need) fails with ENOSPC, as on a real filesystem,
//!   rather than the later fsync.
//!
//! New entries (files, directories, symlinks) in the default, lenient model:
//! - An entry created since the last fsync of its parent directory, and not fsynced itself since
//!   it was created, is removed by a power loss (a removed directory takes its contents along).
//! - Fsyncing an entry (fsync of a file, fsync of a directory) makes its own name durable *and*
//!   its ancestors' names: on ext4 and XFS an fsync commits the journal up to that point, so a
//!   file that was fsynced does not vanish because its new parent directory was never fsynced.
//! - Fsyncing a directory makes the names of all entries in it durable.
//! - A name that is durable while the data is not survives with the durable data: a new file
//!   whose directory was fsynced but not the file itself comes back empty.
//!
//! With `--strict-dir-sync` (the letter of POSIX): a new entry survives only once its parent
//! directory was fsynced after its creation; fsyncing a file makes its data durable, not its
//! name, and fsyncing a directory does not make the directory's own name durable.
//!
//! # Simplifications
//!
//! - Rename, unlink and rmdir are applied to the backing directory at once and are durable at
//!   once, and a renamed entry's name is durable from then on (in the lenient model its
//!   ancestors' too; its data still needs an fsync):
//!   a power loss never undoes a rename or brings an unlinked file back. A rename of a new,
//!   never-synced file over an old one therefore leaves the new name with the new file's durable
//!   (possibly empty) content, as on ext4 without `auto_da_alloc`.
//! - Metadata changes (chmod, chown, utimes) are durable at once. Modification times of files
//!   with unsynced data are those of the backing file.
//! - There are no torn writes and no reordering: a power loss keeps every fsynced byte and
//!   drops every unsynced one. (Real disks may also persist some unsynced data; programs must
//!   survive both, this filesystem only tests the "lost" side.)
//! - If writing to the backing file fails during an fsync, the fsync fails, the unsynced data
//!   stays in memory and the backing file may hold part of it.
//! - Hard links are not supported (EPERM), nor are device nodes, FIFOs and sockets. Extended
//!   attributes are not supported (ENOSYS).
//! - POSIX and flock locks are handled by the kernel locally (the filesystem does not implement
//!   them), which is what a single-host process like RocksDB needs.
//! - File I/O bypasses the kernel page cache (direct I/O), so `mmap` with `MAP_SHARED` fails
//!   with ENODEV (`MAP_PRIVATE` works). RocksDB's default options do not mmap.
//! - statfs reports the backing filesystem's figures: space that unsynced data will need is not
//!   shown as used (but is enforced, see above).
//! - Unsynced data is held in memory, so it must fit: a few hundred MB between fsyncs is fine.
//! - Requests are served by one thread; a few MB/s is the expected load.

pub mod control;
pub mod fs;
pub mod overlay;

pub use control::{request, Command, Response};
pub use fs::{DirSync, PowerLossReport, Stats};
