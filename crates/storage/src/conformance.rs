//! The contract every [`Engine`] must meet, as a suite both implementations run in their tests.

use crate::{Engine, Keyspace, WriteBatch};

fn put(e: &dyn Engine, ks: Keyspace, k: &[u8], v: &[u8]) {
    let mut b = WriteBatch::new();
    b.put(ks, k.to_vec(), v.to_vec());
    e.write(b).expect("write");
}

/// Runs every check against a fresh, empty engine from `make`.
pub fn run_all(make: &dyn Fn() -> Box<dyn Engine>) {
    reads_see_writes(&*make());
    keyspaces_are_separate(&*make());
    scan_is_ordered_bounded_and_limited(&*make());
    last_in_range_finds_the_greatest_key(&*make());
    batches_are_atomic_and_ordered(&*make());
    delete_range_is_half_open(&*make());
}

fn reads_see_writes(e: &dyn Engine) {
    assert_eq!(e.get(Keyspace::Log, b"a").unwrap(), None);
    put(e, Keyspace::Log, b"a", b"1");
    assert_eq!(e.get(Keyspace::Log, b"a").unwrap(), Some(b"1".to_vec()));
    put(e, Keyspace::Log, b"a", b"2");
    assert_eq!(e.get(Keyspace::Log, b"a").unwrap(), Some(b"2".to_vec()));
    e.sync().unwrap();
    assert_eq!(e.get(Keyspace::Log, b"a").unwrap(), Some(b"2".to_vec()));
}

fn keyspaces_are_separate(e: &dyn Engine) {
    put(e, Keyspace::Log, b"k", b"log");
    put(e, Keyspace::State, b"k", b"state");
    assert_eq!(e.get(Keyspace::Log, b"k").unwrap(), Some(b"log".to_vec()));
    assert_eq!(e.get(Keyspace::State, b"k").unwrap(), Some(b"state".to_vec()));
    assert_eq!(e.get(Keyspace::Index, b"k").unwrap(), None);
    assert_eq!(e.get(Keyspace::TimeIndex, b"k").unwrap(), None);
    put(e, Keyspace::TimeIndex, b"k", b"time");
    assert_eq!(e.get(Keyspace::TimeIndex, b"k").unwrap(), Some(b"time".to_vec()));
    assert_eq!(e.get(Keyspace::Index, b"k").unwrap(), None);
    for ks in Keyspace::ALL {
        assert_eq!(e.scan(ks, b"k", b"l", 10).unwrap().len(), usize::from(ks != Keyspace::Index));
    }
}

fn scan_is_ordered_bounded_and_limited(e: &dyn Engine) {
    for i in [5u8, 1, 3, 9, 7] {
        put(e, Keyspace::Index, &[i], &[i * 10]);
    }
    let all = e.scan(Keyspace::Index, &[0], &[255], 100).unwrap();
    assert_eq!(all.iter().map(|(k, _)| k[0]).collect::<Vec<_>>(), vec![1, 3, 5, 7, 9]);
    let mid = e.scan(Keyspace::Index, &[3], &[7], 100).unwrap();
    assert_eq!(mid.iter().map(|(k, _)| k[0]).collect::<Vec<_>>(), vec![3, 5]);
    let lim = e.scan(Keyspace::Index, &[0], &[255], 2).unwrap();
    assert_eq!(lim.len(), 2);
    assert_eq!(lim[1], (vec![3], vec![30]));
    assert!(e.scan(Keyspace::Index, &[7], &[7], 10).unwrap().is_empty());
}

fn last_in_range_finds_the_greatest_key(e: &dyn Engine) {
    for i in [2u8, 4, 6] {
        put(e, Keyspace::Index, &[1, i], &[i]);
    }
    put(e, Keyspace::Index, &[2, 0], &[0]);
    assert_eq!(e.last_in_range(Keyspace::Index, &[1], &[2]).unwrap(), Some((vec![1, 6], vec![6])));
    assert_eq!(e.last_in_range(Keyspace::Index, &[1, 0], &[1, 5]).unwrap(), Some((vec![1, 4], vec![4])));
    assert_eq!(e.last_in_range(Keyspace::Index, &[1, 0], &[1, 2]).unwrap(), None);
    assert_eq!(e.last_in_range(Keyspace::Index, &[3], &[4]).unwrap(), None);
}

fn batches_are_atomic_and_ordered(e: &dyn Engine) {
    let mut b = WriteBatch::new();
    b.put(Keyspace::Log, b"x".to_vec(), b"1".to_vec());
    b.put(Keyspace::Log, b"x".to_vec(), b"2".to_vec());
    b.put(Keyspace::State, b"y".to_vec(), b"3".to_vec());
    b.delete(Keyspace::State, b"y".to_vec());
    e.write(b).unwrap();
    assert_eq!(e.get(Keyspace::Log, b"x").unwrap(), Some(b"2".to_vec()));
    assert_eq!(e.get(Keyspace::State, b"y").unwrap(), None);
}

fn delete_range_is_half_open(e: &dyn Engine) {
    for i in 0u8..6 {
        put(e, Keyspace::Log, &[i], &[i]);
    }
    let mut b = WriteBatch::new();
    b.delete_range(Keyspace::Log, vec![1], vec![4]);
    e.write(b).unwrap();
    let left = e.scan(Keyspace::Log, &[0], &[255], 100).unwrap();
    assert_eq!(left.iter().map(|(k, _)| k[0]).collect::<Vec<_>>(), vec![0, 4, 5]);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    #[cfg(feature = "rocksdb")]
    use crate::RocksEngine;
    use crate::{GroupSyncer, MemEngine};

    #[test]
    fn mem_engine_conforms() {
        run_all(&|| Box::new(MemEngine::new()));
    }

    #[cfg(feature = "rocksdb")]
    #[test]
    fn rocks_engine_conforms() {
        let dirs = std::sync::Mutex::new(Vec::new());
        run_all(&|| {
            let d = tempfile::tempdir().unwrap();
            let e = RocksEngine::open(d.path()).unwrap();
            dirs.lock().unwrap().push(d);
            Box::new(e)
        });
    }

    #[test]
    fn mem_crash_drops_only_unsynced_writes() {
        let e = MemEngine::new();
        put(&e, Keyspace::Log, b"a", b"synced");
        e.sync().unwrap();
        put(&e, Keyspace::Log, b"b", b"kept-by-luck");
        put(&e, Keyspace::Log, b"c", b"lost");
        e.crash(1);
        assert_eq!(e.get(Keyspace::Log, b"a").unwrap(), Some(b"synced".to_vec()));
        assert_eq!(e.get(Keyspace::Log, b"b").unwrap(), Some(b"kept-by-luck".to_vec()));
        assert_eq!(e.get(Keyspace::Log, b"c").unwrap(), None);
    }

    #[cfg(feature = "rocksdb")]
    #[test]
    fn rocks_data_survives_reopen() {
        let d = tempfile::tempdir().unwrap();
        {
            let e = RocksEngine::open(d.path()).unwrap();
            put(&e, Keyspace::Log, b"k", b"v");
            e.sync().unwrap();
        }
        let e = RocksEngine::open(d.path()).unwrap();
        assert_eq!(e.get(Keyspace::Log, b"k").unwrap(), Some(b"v".to_vec()));
    }

    #[tokio::test]
    async fn group_syncer_answers_every_request_and_shares_syncs() {
        let e: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let syncer = GroupSyncer::start(e.clone());
        let mut waits = Vec::new();
        for i in 0..200u32 {
            put(&*e, Keyspace::Log, &i.to_be_bytes(), b"v");
            let (tx, rx) = tokio::sync::oneshot::channel();
            syncer.request(Box::new(move |r| {
                let _ = tx.send(r);
            }));
            waits.push(rx);
        }
        for w in waits {
            w.await.unwrap().unwrap();
        }
        let st = syncer.stats();
        let syncs = st.syncs.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(st.requests.load(std::sync::atomic::Ordering::Relaxed), 200);
        assert!((1..=200).contains(&syncs));
    }
}
