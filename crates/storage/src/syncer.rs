use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use crate::{Engine, Result, StorageError};

/// Called once the writes made before the request are durable (or with the sync error).
pub type SyncCallback = Box<dyn FnOnce(Result<()>) + Send + 'static>;

/// Group commit: a dedicated thread turns every pending "make my writes durable" request from any
/// Raft group into one `Engine::sync` and then runs all their callbacks.
///
/// While one fsync is in flight, new requests queue up and share the next one, so the number of
/// fsyncs per second is bounded by the disk, not by the number of groups or producers.
pub struct GroupSyncer {
    tx: Option<Sender<SyncCallback>>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<SyncStats>,
    /// Set in task mode (see [`GroupSyncer::spawn_task`]).
    task: Option<tokio::sync::mpsc::UnboundedSender<SyncCallback>>,
}

/// Counters for benchmarks and the ADR: how many requests each fsync served.
#[derive(Default, Debug)]
pub struct SyncStats {
    pub syncs: AtomicU64,
    pub requests: AtomicU64,
}

/// Upper bound on callbacks served by one sync, so a flood cannot starve the first waiters.
const MAX_REQUESTS_PER_SYNC: usize = 4096;

impl GroupSyncer {
    pub fn start(engine: Arc<dyn Engine>) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded::<SyncCallback>();
        let stats = Arc::new(SyncStats::default());
        let st = stats.clone();
        let thread =
            std::thread::Builder::new().name("runnel-group-sync".into()).spawn(move || run(engine, rx, st)).ok();
        Self { tx: Some(tx), thread, stats, task: None }
    }

    /// A planted bug for the chaos suite (`unsafe_skip_fsync`): every request is answered "durable"
    /// at once and nothing is synced, so writes are acknowledged while still in the page cache.
    pub fn start_without_fsync() -> Self {
        let (tx, rx) = crossbeam_channel::unbounded::<SyncCallback>();
        let stats = Arc::new(SyncStats::default());
        let st = stats.clone();
        let thread = std::thread::Builder::new()
            .name("runnel-group-sync".into())
            .spawn(move || {
                while let Ok(cb) = rx.recv() {
                    st.requests.fetch_add(1, Ordering::Relaxed);
                    cb(Ok(()));
                }
            })
            .ok();
        Self { tx: Some(tx), thread, stats, task: None }
    }

    /// Group commit on a tokio task instead of a thread, each sync taking `fsync_latency` of (possibly
    /// simulated) time: the simulator's model of a disk. Requests that arrive while a sync is "in
    /// flight" share the next one, and a crash in between loses exactly the writes not yet synced.
    /// Must be called inside a tokio runtime.
    pub fn spawn_task(engine: Arc<dyn Engine>, fsync_latency: std::time::Duration) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<SyncCallback>();
        let stats = Arc::new(SyncStats::default());
        let st = stats.clone();
        tokio::spawn(async move {
            let mut pending = Vec::new();
            while let Some(first) = rx.recv().await {
                pending.push(first);
                tokio::time::sleep(fsync_latency).await;
                while let Ok(cb) = rx.try_recv() {
                    pending.push(cb);
                }
                let result = engine.sync();
                st.syncs.fetch_add(1, Ordering::Relaxed);
                st.requests.fetch_add(pending.len() as u64, Ordering::Relaxed);
                for cb in pending.drain(..) {
                    cb(result.clone());
                }
            }
        });
        Self { tx: None, thread: None, stats, task: Some(tx) }
    }

    /// Requests durability of every write made before this call; `cb` runs on the sync thread.
    pub fn request(&self, cb: SyncCallback) {
        if let Some(task) = &self.task {
            if let Err(e) = task.send(cb) {
                (e.0)(Err(StorageError::Closed));
            }
            return;
        }
        match &self.tx {
            Some(tx) => {
                if let Err(e) = tx.send(cb) {
                    (e.into_inner())(Err(StorageError::Closed));
                }
            }
            None => cb(Err(StorageError::Closed)),
        }
    }

    /// Waits until every write made before this call is durable.
    pub async fn sync(&self) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.request(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        rx.await.unwrap_or(Err(StorageError::Closed))
    }

    pub fn stats(&self) -> &SyncStats {
        &self.stats
    }
}

fn run(engine: Arc<dyn Engine>, rx: Receiver<SyncCallback>, stats: Arc<SyncStats>) {
    let mut pending: Vec<SyncCallback> = Vec::new();
    while let Ok(first) = rx.recv() {
        pending.push(first);
        while pending.len() < MAX_REQUESTS_PER_SYNC {
            match rx.try_recv() {
                Ok(cb) => pending.push(cb),
                Err(_) => break,
            }
        }
        let result = engine.sync();
        if let Err(e) = &result {
            tracing::error!(error = %e, "WAL sync failed; the affected writes are not durable");
        }
        stats.syncs.fetch_add(1, Ordering::Relaxed);
        stats.requests.fetch_add(pending.len() as u64, Ordering::Relaxed);
        for cb in pending.drain(..) {
            cb(result.clone());
        }
    }
}

impl Drop for GroupSyncer {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
