//! The metadata group's state machine: the pure [`ClusterState`] behind openraft.
//!
//! The state lives in memory and is rebuilt on restart by re-applying the (never purged) metadata
//! log up to the persisted commit point. Every applied change is published on a watch channel;
//! brokers act only on what this channel shows, i.e. only on committed metadata.

use std::io;
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use runnel_meta::{ClusterState, MetaResponse};
use tokio::sync::{watch, Mutex};

use crate::{codec, MetaTypes};

/// A committed view of the metadata, as of `applied_index`.
#[derive(Debug, Clone, Default)]
pub struct MetaView {
    pub state: ClusterState,
    pub applied_index: u64,
}

struct Inner {
    state: ClusterState,
    last_applied: Option<LogIdOf<MetaTypes>>,
    membership: StoredMembershipOf<MetaTypes>,
    snapshot: Option<(SnapshotMetaOf<MetaTypes>, Vec<u8>)>,
}

#[derive(Clone)]
pub struct MetaStateMachine {
    inner: Arc<Mutex<Inner>>,
    tx: Arc<watch::Sender<Arc<MetaView>>>,
}

impl Default for MetaStateMachine {
    fn default() -> Self {
        Self::new()
    }
}

impl MetaStateMachine {
    pub fn new() -> Self {
        let (tx, _) = watch::channel(Arc::new(MetaView::default()));
        Self {
            inner: Arc::new(Mutex::new(Inner {
                state: ClusterState::default(),
                last_applied: None,
                membership: Default::default(),
                snapshot: None,
            })),
            tx: Arc::new(tx),
        }
    }

    /// Follow the committed metadata.
    pub fn subscribe(&self) -> watch::Receiver<Arc<MetaView>> {
        self.tx.subscribe()
    }

    pub fn current(&self) -> Arc<MetaView> {
        self.tx.borrow().clone()
    }

    fn publish(&self, inner: &Inner) {
        let view = MetaView {
            state: inner.state.clone(),
            applied_index: inner.last_applied.as_ref().map(|l| l.index).unwrap_or(0),
        };
        self.tx.send_replace(Arc::new(view));
    }
}

/// A snapshot is the cluster state, then its security part (users, ACLs, quotas), then the
/// brokers' other listeners; each trailing part only when it, or a later one, is not empty. A
/// cluster that never used them keeps the snapshot format of earlier versions byte for byte.
fn encode_snapshot(inner: &Inner) -> io::Result<Vec<u8>> {
    let enc = |e: codec::CodecError| io::Error::other(e.to_string());
    let state = &inner.state;
    let mut out = codec::encode(state).map_err(enc)?;
    if !state.security.is_empty() || !state.listeners.is_empty() {
        out.extend(codec::encode(&state.security).map_err(enc)?);
    }
    if !state.listeners.is_empty() {
        out.extend(codec::encode(&state.listeners).map_err(enc)?);
    }
    Ok(out)
}

fn decode_snapshot(bytes: &[u8]) -> io::Result<ClusterState> {
    let (mut state, used): (ClusterState, usize) =
        codec::decode_prefix(bytes).map_err(|e| io::Error::other(format!("metadata snapshot: {e}")))?;
    let mut rest = &bytes[used..];
    if !rest.is_empty() {
        let (security, used) =
            codec::decode_prefix(rest).map_err(|e| io::Error::other(format!("metadata snapshot, security: {e}")))?;
        state.security = security;
        rest = &rest[used..];
    }
    if !rest.is_empty() {
        state.listeners =
            codec::decode(rest).map_err(|e| io::Error::other(format!("metadata snapshot, listeners: {e}")))?;
    }
    Ok(state)
}

impl RaftSnapshotBuilder<MetaTypes> for MetaStateMachine {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<MetaTypes, Vec<u8>>, io::Error> {
        let mut inner = self.inner.lock().await;
        let data = encode_snapshot(&inner)?;
        let meta =
            SnapshotMetaOf::<MetaTypes> { last_log_id: inner.last_applied, last_membership: inner.membership.clone() };
        inner.snapshot = Some((meta.clone(), data.clone()));
        Ok(SnapshotOf::<MetaTypes, Vec<u8>> { meta, snapshot: data })
    }
}

impl RaftStateMachine<MetaTypes> for MetaStateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<MetaTypes>>, StoredMembershipOf<MetaTypes>), io::Error> {
        let inner = self.inner.lock().await;
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<MetaTypes>, io::Error>> + Unpin + OptionalSend,
    {
        let mut inner = self.inner.lock().await;
        let mut answers = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            inner.last_applied = Some(entry.log_id);
            let resp = match &entry.payload {
                EntryPayload::Blank => MetaResponse::Done,
                EntryPayload::Normal(cmd) => inner.state.apply(cmd),
                EntryPayload::Membership(m) => {
                    inner.membership = StoredMembershipOf::<MetaTypes>::new(Some(entry.log_id), m.clone());
                    MetaResponse::Done
                }
            };
            if let Some(r) = responder {
                answers.push((r, resp));
            }
        }
        // Publish first, answer second: a proposer that reads the view after its answer (e.g.
        // CreateTopic returning the new topic) must see its own change.
        self.publish(&inner);
        for (r, resp) in answers {
            r.send(resp);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMetaOf<MetaTypes>, snapshot: Vec<u8>) -> Result<(), io::Error> {
        let state = decode_snapshot(&snapshot)?;
        let mut inner = self.inner.lock().await;
        inner.state = state;
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.snapshot = Some((meta.clone(), snapshot));
        self.publish(&inner);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<MetaTypes, Vec<u8>>>, io::Error> {
        let inner = self.inner.lock().await;
        Ok(inner
            .snapshot
            .as_ref()
            .map(|(meta, data)| SnapshotOf::<MetaTypes, Vec<u8>> { meta: meta.clone(), snapshot: data.clone() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_meta::MetaCommand;
    use runnel_security::scram::{Credentials, Mechanism};
    use std::collections::BTreeMap;

    fn inner(state: ClusterState) -> Inner {
        Inner { state, last_applied: None, membership: Default::default(), snapshot: None }
    }

    #[test]
    fn a_snapshot_without_security_keeps_the_old_format_and_one_with_it_round_trips() {
        let mut state = ClusterState::default();
        state.apply(&MetaCommand::AllocateProducerIds { count: 5 });
        let plain = encode_snapshot(&inner(state.clone())).unwrap();
        assert_eq!(plain, codec::encode(&state).unwrap(), "no security: the earlier format, byte for byte");
        assert_eq!(decode_snapshot(&plain).unwrap(), state);

        let credentials = vec![Credentials::new(Mechanism::ScramSha512, "pw", b"0123456789abcdef", 4096)];
        let r = state.apply(&MetaCommand::PutUser {
            name: "alice".into(),
            credentials,
            token_key: vec![9; 32],
            if_absent: false,
        });
        assert_eq!(r, MetaResponse::Done);
        let with = encode_snapshot(&inner(state.clone())).unwrap();
        let back = decode_snapshot(&with).unwrap();
        assert_eq!(back, state);
        assert!(back.security.users.contains_key("alice"));
        assert!(decode_snapshot(&with[..with.len() - 1]).is_err(), "a cut snapshot is refused");

        // Listeners follow the security part, which is then written even when empty.
        let mut only_listeners = ClusterState::default();
        let kafka = BTreeMap::from([("kafka".to_string(), "h:9092".to_string())]);
        only_listeners.apply(&MetaCommand::SetListeners { id: 1, listeners: kafka.clone() });
        let bytes = encode_snapshot(&inner(only_listeners.clone())).unwrap();
        assert_eq!(decode_snapshot(&bytes).unwrap(), only_listeners);
        state.apply(&MetaCommand::SetListeners { id: 2, listeners: kafka });
        let both = encode_snapshot(&inner(state.clone())).unwrap();
        let back = decode_snapshot(&both).unwrap();
        assert_eq!(back, state);
        assert_eq!(back.listeners[&2]["kafka"], "h:9092");
        assert!(decode_snapshot(&both[..both.len() - 1]).is_err(), "a cut snapshot is refused");
    }
}
