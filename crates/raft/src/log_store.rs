//! openraft log storage for one group on the node's shared engine.
//!
//! Keys are `(group id, log index)` in [`Keyspace::Log`] and `(group id, name)` in
//! [`Keyspace::State`]. Appends are written (visible at once) and then handed to the node's
//! [`GroupSyncer`]: openraft hears that they are flushed only after the shared WAL fsync that
//! covers them, which is what lets many groups share one fsync.

use std::fmt::Debug;
use std::io;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::alias::{LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader, RaftTypeConfig};
use runnel_storage::keys::{group_end, group_key, key_suffix, state_key};
use runnel_storage::{Engine, GroupSyncer, Keyspace, WriteBatch};
use runnel_types::GroupId;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec;

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";

/// Longest run of entries one read returns; openraft asks again for the rest.
const MAX_ENTRIES_PER_READ: usize = 4096;

pub struct LogStore<C: RaftTypeConfig> {
    group: GroupId,
    engine: Arc<dyn Engine>,
    syncer: Arc<GroupSyncer>,
    _c: PhantomData<C>,
}

impl<C: RaftTypeConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        Self { group: self.group, engine: self.engine.clone(), syncer: self.syncer.clone(), _c: PhantomData }
    }
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl<C: RaftTypeConfig> LogStore<C> {
    pub fn new(group: GroupId, engine: Arc<dyn Engine>, syncer: Arc<GroupSyncer>) -> Self {
        Self { group, engine, syncer, _c: PhantomData }
    }

    fn get_state<T: DeserializeOwned>(&self, name: &str) -> io::Result<Option<T>> {
        match self.engine.get(Keyspace::State, &state_key(self.group, name))? {
            Some(b) => Ok(Some(codec::decode(&b).map_err(io_err)?)),
            None => Ok(None),
        }
    }

    fn put_state<T: Serialize>(&self, name: &str, v: &T) -> io::Result<()> {
        let mut b = WriteBatch::new();
        b.put(Keyspace::State, state_key(self.group, name), codec::encode(v).map_err(io_err)?);
        Ok(self.engine.write(b)?)
    }

    /// Removes every log entry and state key of this group (the group was deleted).
    /// Adds the deletion of this group's log and Raft state to `b`. Written together with the
    /// state machine's deletion in one batch: a crash must never leave one without the other (a
    /// state machine whose index points into a deleted log; found by the simulator, seed 401201).
    pub fn destroy_into(&self, b: &mut WriteBatch) {
        b.delete_range(Keyspace::Log, group_key(self.group, 0), group_end(self.group));
        for name in [VOTE, COMMITTED, PURGED] {
            b.delete(Keyspace::State, state_key(self.group, name));
        }
    }
}

impl<C> RaftLogReader<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(x) => group_key(self.group, x.saturating_add(1)),
            Bound::Excluded(x) => group_key(self.group, *x),
            Bound::Unbounded => group_end(self.group),
        };
        let rows = self.engine.scan(Keyspace::Log, &group_key(self.group, start), &end, MAX_ENTRIES_PER_READ)?;
        let mut out = Vec::with_capacity(rows.len());
        for (k, v) in rows {
            let entry: C::Entry = codec::decode(&v).map_err(io_err)?;
            // Trust boundary: the key we stored under must be the index inside the entry.
            let idx = key_suffix(&k);
            if idx != Some(entry.index()) {
                return Err(io_err(format!(
                    "group {}: log key index {idx:?} holds entry with index {}",
                    self.group,
                    entry.index()
                )));
            }
            out.push(entry);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<C>>, io::Error> {
        self.get_state(VOTE)
    }
}

impl<C> RaftLogStorage<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let last_purged: Option<LogIdOf<C>> = self.get_state(PURGED)?;
        let last = self.engine.last_in_range(Keyspace::Log, &group_key(self.group, 0), &group_end(self.group))?;
        let last_log_id = match last {
            Some((_, v)) => {
                let e: C::Entry = codec::decode(&v).map_err(io_err)?;
                Some(e.log_id())
            }
            None => last_purged.clone(),
        };
        Ok(LogState { last_purged_log_id: last_purged, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<C>) -> Result<(), io::Error> {
        self.put_state(VOTE, vote)?;
        // A vote must be durable before it is acted on (granting it twice would break election safety).
        Ok(self.syncer.sync().await?)
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        // Not synced: losing it only means re-learning the commit point from the leader.
        self.put_state(COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, io::Error> {
        Ok(self.get_state::<Option<LogIdOf<C>>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut b = WriteBatch::new();
        for e in entries {
            b.put(Keyspace::Log, group_key(self.group, e.index()), codec::encode(&e).map_err(io_err)?);
        }
        // Written now (so reads see the entries when this returns), durable after the shared sync.
        self.engine.write(b)?;
        self.syncer.request(Box::new(move |r| callback.io_completed(r.map_err(io::Error::from))));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let from = match &last_log_id {
            Some(id) => id.index() + 1,
            None => 0,
        };
        tracing::debug!(group = self.group, from, "truncating the log");
        let mut b = WriteBatch::new();
        b.delete_range(Keyspace::Log, group_key(self.group, from), group_end(self.group));
        Ok(self.engine.write(b)?)
    }

    async fn purge(&mut self, log_id: LogIdOf<C>) -> Result<(), io::Error> {
        let mut b = WriteBatch::new();
        b.put(Keyspace::State, state_key(self.group, PURGED), codec::encode(&log_id).map_err(io_err)?);
        b.delete_range(Keyspace::Log, group_key(self.group, 0), group_key(self.group, log_id.index() + 1));
        Ok(self.engine.write(b)?)
    }
}
