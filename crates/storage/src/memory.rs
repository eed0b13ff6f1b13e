use std::collections::BTreeMap;
use std::ops::Bound;

use parking_lot::Mutex;

use crate::{Engine, Keyspace, Result, StorageError, WriteBatch, WriteOp};

type Tree = BTreeMap<(Keyspace, Vec<u8>), Vec<u8>>;

/// In-memory engine for the simulator and fast tests. It keeps the durable image (what the last
/// `sync` covered) apart from the live one, so [`MemEngine::crash`] can drop unsynced writes the way
/// a power cut does.
#[derive(Default)]
pub struct MemEngine {
    inner: Mutex<MemInner>,
}

#[derive(Default)]
struct MemInner {
    live: Tree,
    durable: Tree,
    /// Writes since the last sync, in order; a crash keeps a prefix of them (chosen by caller).
    unsynced: Vec<WriteBatch>,
    closed: bool,
}

fn apply(tree: &mut Tree, batch: &WriteBatch) {
    for op in &batch.ops {
        match op {
            WriteOp::Put { ks, key, value } => {
                tree.insert((*ks, key.clone()), value.clone());
            }
            WriteOp::Delete { ks, key } => {
                tree.remove(&(*ks, key.clone()));
            }
            WriteOp::DeleteRange { ks, from, to } => {
                let doomed: Vec<_> = tree
                    .range((Bound::Included((*ks, from.clone())), Bound::Excluded((*ks, to.clone()))))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in doomed {
                    tree.remove(&k);
                }
            }
        }
    }
}

impl MemEngine {
    pub fn new() -> Self {
        Self::default()
    }

    /// Simulates a crash: keeps what was synced plus the first `keep_unsynced` unsynced batches
    /// (a real disk may have persisted some of them), drops the rest.
    pub fn crash(&self, keep_unsynced: usize) {
        let mut g = self.inner.lock();
        let kept: Vec<WriteBatch> = g.unsynced.drain(..).take(keep_unsynced).collect();
        let mut durable = g.durable.clone();
        for b in &kept {
            apply(&mut durable, b);
        }
        g.durable = durable.clone();
        g.live = durable;
    }

    pub fn unsynced_batches(&self) -> usize {
        self.inner.lock().unsynced.len()
    }

    /// Makes further calls fail, as a dead disk would.
    pub fn close(&self) {
        self.inner.lock().closed = true;
    }
}

impl Engine for MemEngine {
    fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let g = self.inner.lock();
        if g.closed {
            return Err(StorageError::Closed);
        }
        Ok(g.live.get(&(ks, key.to_vec())).cloned())
    }

    fn scan(&self, ks: Keyspace, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let g = self.inner.lock();
        if g.closed {
            return Err(StorageError::Closed);
        }
        if from >= to {
            return Ok(vec![]);
        }
        Ok(g.live
            .range((Bound::Included((ks, from.to_vec())), Bound::Excluded((ks, to.to_vec()))))
            .take(limit)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    fn last_in_range(&self, ks: Keyspace, from: &[u8], to: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let g = self.inner.lock();
        if g.closed {
            return Err(StorageError::Closed);
        }
        if from >= to {
            return Ok(None);
        }
        Ok(g.live
            .range((Bound::Included((ks, from.to_vec())), Bound::Excluded((ks, to.to_vec()))))
            .next_back()
            .map(|((_, k), v)| (k.clone(), v.clone())))
    }

    fn write(&self, batch: WriteBatch) -> Result<()> {
        let mut g = self.inner.lock();
        if g.closed {
            return Err(StorageError::Closed);
        }
        apply(&mut g.live, &batch);
        g.unsynced.push(batch);
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        let mut g = self.inner.lock();
        if g.closed {
            return Err(StorageError::Closed);
        }
        let pending: Vec<WriteBatch> = g.unsynced.drain(..).collect();
        for b in &pending {
            apply(&mut g.durable, b);
        }
        Ok(())
    }
}
