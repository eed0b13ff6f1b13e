//! Consumer groups with real processes: members sharing partitions, a member killed, durable and
//! ephemeral subscriptions, stale-generation commits, coordinator failover.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use runnel_client::{v1, Client, Consumer, ConsumerConfig, ErrorCode, Record};
use runnel_tests::{runnel_bin, wait_for, Cluster};

/// A `runnel consume --group` process printing JSON lines to a file.
struct Member {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Member {
    fn start(dir: &std::path::Path, name: &str, bootstrap: &str, args: &[&str]) -> Member {
        let out = dir.join(format!("{name}.out"));
        let err = dir.join(format!("{name}.err"));
        let child = Command::new(runnel_bin())
            .args(["consume", "--output", "json"])
            .args(args)
            .env("RUNNEL_BOOTSTRAP", bootstrap)
            // Joins, rebalances and commit failures: what to read when a group test fails.
            .env("RUNNEL_LOG", std::env::var("RUNNEL_MEMBER_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap())
            .spawn()
            .expect("spawn runnel consume");
        Member { child, out, err }
    }

    /// (partition, offset, value) of every line printed so far.
    fn printed(&self) -> Vec<(u32, u64, String)> {
        printed_in(&self.out)
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            // What the member logged is the first thing to read when a group test fails.
            let log = std::fs::read_to_string(&self.err).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("----- {} (last {} lines) -----", self.err.display(), tail.len());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

fn printed_in(path: &std::path::Path) -> Vec<(u32, u64, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // Only complete lines: the process may be writing the last one.
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            (
                v["partition"].as_u64().unwrap() as u32,
                v["offset"].as_u64().unwrap(),
                v["value"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn produce_values(client: &Client, topic: &str, partitions: u32, values: std::ops::Range<usize>) {
    for i in values {
        let p = (i as u32) % partitions;
        // No timestamp: the leader stamps its clock (a 1970 timestamp would be past retention.ms at once).
        let r = Record { value: format!("v{i}").into(), ..Default::default() };
        client.produce(topic, p, vec![r], runnel_client::Acks::All).await.expect("produce");
    }
}

/// member id → partitions, once the group is stable with `members` members.
async fn stable_assignment(
    client: &Client,
    group: &str,
    members: usize,
    timeout: Duration,
) -> BTreeMap<String, Vec<u32>> {
    let last_seen = std::sync::Mutex::new(String::new());
    let last_seen = &last_seen;
    wait_for(timeout, &format!("group '{group}' stable with {members} members"), || async move {
        let d = match client.describe_group(group).await {
            Ok(d) => d,
            Err(e) => {
                eprintln!("describe group: {e}");
                return None;
            }
        };
        if d.state != "stable" || d.members.len() != members {
            let now =
                format!("group '{group}': {} with {} member(s), generation {}", d.state, d.members.len(), d.generation);
            let mut last = last_seen.lock().unwrap();
            if *last != now {
                eprintln!("{now}");
                *last = now;
            }
            return None;
        }
        let a: BTreeMap<String, Vec<u32>> = d
            .members
            .iter()
            .map(|m| (m.member_id.clone(), m.assignment.iter().map(|tp| tp.partition).collect()))
            .collect();
        let total: usize = a.values().map(Vec::len).sum();
        (total == 6).then_some(a)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_share_six_partitions_and_the_survivors_take_over_a_killed_one_without_skipping() {
    let cluster = Cluster::start(3);
    cluster.wait_ready(Duration::from_secs(60)).await;
    let client = Client::connect(&cluster.addrs()).await.unwrap();
    client.create_topic("orders", 6, 3, Default::default()).await.unwrap();
    cluster.wait_leaders("orders", Duration::from_secs(30)).await;
    produce_values(&client, "orders", 6, 0..300).await;

    let bootstrap = cluster.addrs().join(",");
    let args = ["orders", "--group", "billing", "--from-beginning", "--session-timeout-ms", "3000"];
    let mut members: Vec<Member> =
        (0..3).map(|i| Member::start(cluster.dir(), &format!("member{i}"), &bootstrap, &args)).collect();

    // Three members, two partitions each.
    let a = stable_assignment(&client, "billing", 3, Duration::from_secs(90)).await;
    assert!(a.values().all(|p| p.len() == 2), "each member gets two partitions: {a:?}");

    // Everything produced so far gets printed (by someone), then kill one member.
    wait_for(Duration::from_secs(60), "the first 300 records printed", || async {
        let seen: BTreeSet<String> = members.iter().flat_map(|m| m.printed()).map(|(_, _, v)| v).collect();
        (seen.len() == 300).then_some(())
    })
    .await;
    members[0].kill9();
    let killed = Instant::now();
    produce_values(&client, "orders", 6, 300..600).await;

    // The two survivors take its partitions: 3 each, within the session timeout plus a rebalance.
    let a = stable_assignment(&client, "billing", 2, Duration::from_secs(3 + 10)).await;
    let takeover = killed.elapsed();
    assert!(a.values().all(|p| p.len() == 3), "the survivors get three partitions each: {a:?}");
    eprintln!("takeover after kill -9 of a member: {takeover:?} (session timeout 3 s)");

    // No record is skipped: every value produced is printed by some member (the dead one may have
    // printed some that are printed again: at least once).
    let dead = members[0].printed();
    wait_for(Duration::from_secs(60), "all 600 records printed", || async {
        let seen: BTreeSet<String> =
            members[1..].iter().flat_map(|m| m.printed()).chain(dead.iter().cloned()).map(|(_, _, v)| v).collect();
        (seen.len() == 600).then_some(())
    })
    .await;
    // Per partition, offsets are printed in order by each member and none is missing.
    let mut by_partition: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    for (p, o, _) in members.iter().flat_map(|m| m.printed()).chain(dead) {
        by_partition.entry(p).or_default().insert(o);
    }
    for (p, offsets) in &by_partition {
        assert_eq!(offsets.len() as u64, offsets.last().unwrap() + 1, "partition {p}: a gap in {offsets:?}");
    }

    // Commits follow the printing: the group ends with every partition committed to its end.
    let committed = wait_for(Duration::from_secs(30), "committed offsets reach the end of every partition", || async {
        let c = client.committed_offsets("billing", &[]).await.ok()?;
        (c.len() == 6 && c.values().all(|o| *o == 100)).then_some(c)
    })
    .await;

    // The offsets survive the coordinator's death: another replica of its partition takes over.
    drop(members);
    let coordinator = client.describe_group("billing").await.unwrap().coordinator;
    let offsets_topic = client.metadata(&["__consumer_offsets".to_string()]).await.unwrap();
    assert!(
        offsets_topic.topics[0].partitions.iter().all(|p| p.replicas.len() == 3),
        "the offsets topic is replicated on all three nodes: {:?}",
        offsets_topic.topics[0].partitions
    );
    let mut cluster = cluster;
    cluster.kill9(coordinator);
    let after = wait_for(Duration::from_secs(30), "a new coordinator answers with the committed offsets", || async {
        match client.committed_offsets("billing", &[]).await {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("offsets not readable yet: {e}");
                None
            }
        }
    })
    .await;
    assert_eq!(after, committed, "committed offsets are durable across a coordinator failover");
    assert_ne!(client.describe_group("billing").await.unwrap().coordinator, coordinator);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_consumer_resumes_after_its_commit_and_an_ephemeral_one_starts_at_latest() {
    let cluster = Cluster::start(1);
    cluster.wait_ready(Duration::from_secs(60)).await;
    let client = Client::connect(&cluster.addrs()).await.unwrap();
    client.create_topic("events", 2, 1, Default::default()).await.unwrap();
    cluster.wait_leaders("events", Duration::from_secs(30)).await;
    produce_values(&client, "events", 2, 0..10).await;
    let bootstrap = cluster.addrs().join(",");

    // `--max-records N` commits exactly what it printed; the next run continues right after.
    let run = |n: &str| {
        let out = Command::new(runnel_bin())
            .args(["consume", "events", "--group", "audit", "--from-beginning", "--output", "json"])
            .args(["--max-records", n, "--timeout-ms", "3000"])
            .env("RUNNEL_BOOTSTRAP", &bootstrap)
            .output()
            .expect("run runnel consume");
        assert!(out.status.success(), "consume failed: {}", String::from_utf8_lossy(&out.stderr));
        let path = cluster.dir().join("run.out");
        std::fs::write(&path, &out.stdout).unwrap();
        printed_in(&path).into_iter().map(|(_, _, v)| v).collect::<Vec<_>>()
    };
    let first = run("4");
    assert_eq!(first.len(), 4);
    let second = run("100");
    assert_eq!(second.len(), 6, "the restarted member continues after its committed offsets: {second:?}");
    let all: BTreeSet<String> = first.iter().chain(&second).cloned().collect();
    assert_eq!(all.len(), 10, "no record twice, none skipped: {first:?} then {second:?}");
    assert!(run("100").is_empty(), "everything was committed");

    // An ephemeral subscription (no group) starts at the latest offset and stores nothing.
    let mut eph =
        Consumer::subscribe(client.clone(), ConsumerConfig::default(), &["events".to_string()]).await.unwrap();
    produce_values(&client, "events", 2, 10..14).await;
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < 4 && Instant::now() < deadline {
        got.extend(
            eph.poll(Duration::from_millis(500))
                .await
                .unwrap()
                .into_iter()
                .map(|r| String::from_utf8(r.value.to_vec()).unwrap()),
        );
    }
    got.sort();
    assert_eq!(got, ["v10", "v11", "v12", "v13"], "only records produced after it subscribed");
    assert!(eph.commit().await.is_err(), "an ephemeral consumer has no group to commit to");
    let groups: Vec<String> = client.list_groups().await.unwrap().into_iter().map(|g| g.group).collect();
    assert_eq!(groups, ["audit"], "the ephemeral consumer left no group behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_from_a_stale_generation_or_a_non_member_are_rejected() {
    let cluster = Cluster::start(1);
    cluster.wait_ready(Duration::from_secs(60)).await;
    let client = Client::connect(&cluster.addrs()).await.unwrap();
    client.create_topic("t", 2, 1, Default::default()).await.unwrap();
    cluster.wait_leaders("t", Duration::from_secs(30)).await;
    let join = |member: &str| v1::JoinGroupRequest {
        group: "g".into(),
        member_id: member.into(),
        client_id: "test".into(),
        topics: vec!["t".into()],
        session_timeout_ms: 5000,
        rebalance_timeout_ms: 5000,
        assignor: "range".into(),
        owned: vec![],
    };
    let a = client.join_group(join("")).await.unwrap();
    assert_eq!((a.generation, a.assignment.len()), (1, 2));
    let offsets = BTreeMap::from([(("t".to_string(), 0), 5u64)]);
    client.commit_offsets("g", &a.member_id, 1, &offsets).await.unwrap();

    // A second member joins: the group rebalances to generation 2 once the first rejoins.
    let (b, a2) = tokio::join!(client.join_group(join("")), async {
        wait_for(Duration::from_secs(10), "the first member is told to rejoin", || async {
            let e = client.heartbeat("g", &a.member_id, 1).await.err()?;
            (e.code() == Some(ErrorCode::RebalanceInProgress)).then_some(())
        })
        .await;
        client.join_group(join(&a.member_id)).await
    });
    let (b, a2) = (b.unwrap(), a2.unwrap());
    assert_eq!((a2.generation, b.generation), (2, 2));
    assert_eq!(a2.assignment.len() + b.assignment.len(), 2);

    // Generation 1 is over: its commits are refused, and the stored offset is untouched.
    let stale = client.commit_offsets("g", &a.member_id, 1, &BTreeMap::from([(("t".to_string(), 0), 9u64)])).await;
    assert_eq!(stale.unwrap_err().code(), Some(ErrorCode::IllegalGeneration));
    let outsider = client.commit_offsets("g", "nobody", 2, &offsets).await;
    assert_eq!(outsider.unwrap_err().code(), Some(ErrorCode::UnknownMember));
    let admin = client.commit_offsets("g", "", -1, &offsets).await;
    assert!(admin.is_err(), "no commits from outside the group while it has members");
    assert_eq!(client.committed_offsets("g", &[]).await.unwrap()[&("t".to_string(), 0)], 5);
    assert_eq!(client.delete_group("g").await.unwrap_err().code(), Some(ErrorCode::GroupNotEmpty));

    // Once both leave, an admin reset works, and the group can be deleted.
    client.leave_group("g", &a2.member_id).await.unwrap();
    client.leave_group("g", &b.member_id).await.unwrap();
    wait_for(Duration::from_secs(10), "the group is empty", || async {
        (client.describe_group("g").await.ok()?.state == "empty").then_some(())
    })
    .await;
    client.commit_offsets("g", "", -1, &BTreeMap::from([(("t".to_string(), 1), 3u64)])).await.unwrap();
    assert_eq!(client.committed_offsets("g", &[]).await.unwrap().len(), 2);
    client.delete_group("g").await.unwrap();
    assert_eq!(client.describe_group("g").await.unwrap_err().code(), Some(ErrorCode::UnknownGroup));
}
