//! `runnel dev` plus the command line, as the README shows them, and the errors users see.

use std::io::Write;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use runnel_tests::{free_port, runnel_bin, wait_for, Cluster};

struct Dev {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_dev() -> Dev {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(runnel_bin())
        .args(["dev", "--listen", &addr, "--data-dir"])
        .arg(dir.path().join("data"))
        // Not `runnel dev`'s 9092: tests run side by side.
        .env("RUNNEL_KAFKA_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn runnel dev");
    let a = addr.clone();
    wait_for(Duration::from_secs(60), "runnel dev answers metadata with a controller", || {
        let a = a.clone();
        async move { Cluster::metadata_from(&a).await.filter(|m| m.controller_id.is_some() && !m.brokers.is_empty()) }
    })
    .await;
    Dev { child, addr, _dir: dir }
}

fn cli(addr: &str, args: &[&str], stdin: Option<&str>) -> Output {
    cli_as(addr, &[], args, stdin)
}

/// `cli` with extra environment (credentials).
fn cli_as(addr: &str, env: &[(&str, &str)], args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(runnel_bin());
    cmd.args(args).env("RUNNEL_BOOTSTRAP", addr).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.envs(env.iter().copied());
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().expect("spawn runnel cli");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    // Bounded: a CLI that never exits fails the test with its arguments instead of hanging CI.
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.expect("cli output"),
        Err(_) => {
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
            panic!("`runnel {}` did not exit within 60 s", args.join(" "));
        }
    }
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}\nstdout: {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn fails_with(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success: {}", String::from_utf8_lossy(&out.stdout));
    for n in needles {
        assert!(err.contains(n), "stderr should mention '{n}': {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_node_and_cli_round_trip() {
    let dev = start_dev().await;
    let a = dev.addr.as_str();

    ok(&cli(a, &["topic", "create", "greetings", "--partitions", "3", "--replication-factor", "1"], None));
    let list = ok(&cli(a, &["topic", "list"], None));
    assert!(list.contains("greetings"), "{list}");

    let input = "alice:hello\nbob:hi\nalice:how are you\ncarol:hey\nbob:bye\nalice:bye\n";
    ok(&cli(a, &["produce", "greetings", "--key-separator", ":"], Some(input)));

    let out = ok(&cli(
        a,
        &["consume", "greetings", "--from-beginning", "--max-records", "6", "--print-key", "--timeout-ms", "10000"],
        None,
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    // Every line comes back once, and each key's values in the order they were produced.
    for key in ["alice", "bob", "carol"] {
        let sent: Vec<&str> =
            input.lines().filter(|l| l.starts_with(&format!("{key}:"))).map(|l| &l[key.len() + 1..]).collect();
        let got: Vec<String> = lines
            .iter()
            .filter(|l| l.starts_with(key))
            .map(|l| l[key.len()..].trim_start_matches([':', '\t', ' ']).to_string())
            .collect();
        assert_eq!(got, sent, "values of key {key} in {out}");
    }

    let json = ok(&cli(a, &["topic", "describe", "greetings", "--output", "json"], None));
    assert!(json.trim_start().starts_with('{') || json.trim_start().starts_with('['), "{json}");
    assert!(json.contains("greetings"));
    let info = ok(&cli(a, &["cluster", "info"], None));
    assert!(info.contains(a), "cluster info should list the broker address: {info}");

    // Delete: the topic disappears, and producing to it names the missing topic.
    ok(&cli(a, &["topic", "delete", "greetings"], None));
    let list = ok(&cli(a, &["topic", "list", "--output", "json"], None));
    assert!(!list.contains("greetings"), "{list}");
    fails_with(&cli(a, &["produce", "greetings"], Some("late\n")), &["greetings"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_errors_that_name_what_was_wrong() {
    let dev = start_dev().await;
    let a = dev.addr.as_str();

    fails_with(
        &cli(a, &["topic", "create", "wide", "--partitions", "1", "--replication-factor", "3"], None),
        &["replication factor 3", "1"],
    );
    fails_with(
        &cli(a, &["topic", "create", "bad name", "--partitions", "1", "--replication-factor", "1"], None),
        &["bad name"],
    );
    fails_with(&cli(a, &["produce", "nosuch"], Some("x\n")), &["nosuch"]);
    ok(&cli(
        a,
        &[
            "topic",
            "create",
            "small",
            "--partitions",
            "1",
            "--replication-factor",
            "1",
            "--config",
            "max.record.bytes=100",
        ],
        None,
    ));
    fails_with(
        &cli(a, &["topic", "create", "small", "--partitions", "1", "--replication-factor", "1"], None),
        &["small", "exists"],
    );
    fails_with(
        &cli(
            a,
            &[
                "topic",
                "create",
                "cfg",
                "--partitions",
                "1",
                "--replication-factor",
                "1",
                "--config",
                "max.record.bytes=lots",
            ],
            None,
        ),
        &["max.record.bytes", "lots"],
    );
    let big = format!("{}\n", "x".repeat(200));
    fails_with(&cli(a, &["produce", "small"], Some(&big)), &["max.record.bytes", "100"]);
    ok(&cli(a, &["produce", "small"], Some("fits\n")));
    fails_with(
        &cli(a, &["consume", "small", "--partition", "0", "--offset", "99", "--max-records", "1"], None),
        &["99", "[0, 1]"],
    );
    fails_with(
        &cli(a, &["consume", "small", "--partition", "7", "--from-beginning", "--max-records", "1"], None),
        &["partition 7"],
    );

    // The record that was accepted is still there after all the refusals.
    let out =
        ok(&cli(a, &["consume", "small", "--from-beginning", "--max-records", "1", "--timeout-ms", "10000"], None));
    assert_eq!(out.trim(), "fits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_configs_and_seek_by_time_from_the_cli() {
    let dev = start_dev().await;
    let a = dev.addr.as_str();
    ok(&cli(a, &["topic", "create", "cfgd", "--partitions", "1", "--replication-factor", "1"], None));

    let text = ok(&cli(a, &["topic", "describe-config", "cfgd"], None));
    assert!(text.contains("retention.ms") && text.contains("604800000") && text.contains("default"), "{text}");
    fails_with(
        &cli(a, &["topic", "alter-config", "cfgd", "--set", "retention.ms=soon"], None),
        &["retention.ms", "soon"],
    );
    fails_with(&cli(a, &["topic", "alter-config", "cfgd", "--set", "colour=blue"], None), &["colour", "unknown"]);
    fails_with(&cli(a, &["topic", "alter-config", "cfgd"], None), &["nothing to change"]);
    fails_with(&cli(a, &["topic", "alter-config", "nosuch", "--set", "retention.ms=1"], None), &["nosuch"]);
    ok(&cli(
        a,
        &["topic", "alter-config", "cfgd", "--set", "cleanup.policy=compact", "--set", "retention.ms=-1"],
        None,
    ));
    let json = ok(&cli(a, &["topic", "describe-config", "cfgd", "--output", "json"], None));
    assert!(
        json.contains("\"cleanup.policy\": \"compact\"") || json.contains("\"cleanup.policy\":\"compact\""),
        "{json}"
    );
    assert!(json.contains("overridden"), "{json}");
    // Compacted: a record without a key is refused, naming why.
    fails_with(&cli(a, &["produce", "cfgd"], Some("keyless\n")), &["no key", "compact"]);
    ok(&cli(a, &["produce", "cfgd", "--key-separator", ":"], Some("a:1\nb:2\n")));

    // The CLI stamps records with the current time: all of them are after 2000, none after 2100.
    let out = ok(&cli(
        a,
        &["consume", "cfgd", "--from-timestamp", "2000-01-01T00:00:00Z", "--max-records", "2", "--timeout-ms", "10000"],
        None,
    ));
    assert_eq!(out.lines().collect::<Vec<_>>(), vec!["1", "2"], "{out}");
    let out = ok(&cli(a, &["consume", "cfgd", "--from-timestamp", "4102444800000", "--timeout-ms", "1000"], None));
    assert!(out.trim().is_empty(), "nothing is that recent: {out}");
    fails_with(&cli(a, &["consume", "cfgd", "--from-timestamp", "yesterday"], None), &["yesterday", "RFC 3339"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn benchmarks_report_every_record_they_sent_and_read() {
    // Not a speed test: the reports must account for every record (speeds go in the notes).
    let dev = start_dev().await;
    let json = |out: &Output| -> serde_json::Value { serde_json::from_str(&ok(out)).expect("a JSON report") };
    let produced = json(&cli(
        &dev.addr,
        &["bench", "produce", "--topic", "bt", "--partitions", "3", "--replication-factor", "1", "--records", "3000"]
            .iter()
            .chain(&["--quiet", "--output", "json"])
            .copied()
            .collect::<Vec<_>>(),
        None,
    ));
    assert_eq!((produced["records"].as_u64(), produced["errors"].as_u64()), (Some(3000), Some(0)), "{produced}");
    assert!(produced["latency_ms_max"].as_f64().unwrap() >= produced["latency_ms_p50"].as_f64().unwrap());

    // Two readers share the three partitions; together they read all 3000.
    let consumed = json(&cli(
        &dev.addr,
        &["bench", "consume", "--topic", "bt", "--consumers", "2", "--quiet", "--output", "json"],
        None,
    ));
    assert_eq!((consumed["records"].as_u64(), consumed["consumers"].as_u64()), (Some(3000), Some(2)), "{consumed}");
    assert_eq!(consumed["bytes"].as_u64(), Some(3000 * 100));

    // End to end through a two-member group, starting at the topic's end: exactly the new records.
    let e2e = json(&cli(
        &dev.addr,
        &["bench", "e2e", "--topic", "bt", "--replication-factor", "1", "--records", "2000", "--rate", "1000"]
            .iter()
            .chain(&["--consumers", "2", "--quiet", "--output", "json"])
            .copied()
            .collect::<Vec<_>>(),
        None,
    ));
    assert_eq!(
        (e2e["consumed"].as_u64(), e2e["missing"].as_u64(), e2e["produce_errors"].as_u64()),
        (Some(2000), Some(0), Some(0)),
        "{e2e}"
    );
    // The bench removes its group when done.
    let groups = ok(&cli(&dev.addr, &["group", "list"], None));
    assert!(!groups.contains("bench-e2e"), "{groups}");
}

/// `runnel certs` makes a CA and certificates; a node started with them serves TLS only, and the
/// CLI reaches it with `--tls-ca`. A node listening beyond loopback without TLS refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_from_the_cli_secure_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let c = certs.to_str().unwrap();
    ok(&cli("unused:1", &["certs", "ca", "--dir", c], None));
    ok(&cli(
        "unused:1",
        &["certs", "node", "--dir", c, "--id", "1", "--host", "127.0.0.1", "--host", "localhost"],
        None,
    ));
    ok(&cli("unused:1", &["certs", "client", "--dir", c, "--name", "alice"], None));
    use std::os::unix::fs::PermissionsExt;
    for key in ["ca.key", "node-1.key", "client-alice.key"] {
        let mode = std::fs::metadata(certs.join(key)).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{key} must be readable by its owner only (mode {mode:o})");
    }
    fails_with(&cli("unused:1", &["certs", "ca", "--dir", c], None), &["ca.pem", "never overwritten"]);
    fails_with(
        &cli("unused:1", &["certs", "node", "--dir", c, "--id", "2", "--host", "bad host!"], None),
        &["'bad host!'", "neither an IP address nor a DNS name"],
    );

    // A TLS node (runnel dev reads the same RUNNEL_TLS_* settings).
    let addr = format!("127.0.0.1:{}", free_port());
    let mut node = Command::new(runnel_bin())
        .args(["dev", "--listen", &addr, "--data-dir"])
        .arg(dir.path().join("data"))
        // Not `runnel dev`'s 9092: tests run side by side.
        .env("RUNNEL_KAFKA_LISTEN", "127.0.0.1:0")
        .env("RUNNEL_TLS_CA_FILE", certs.join("ca.pem"))
        .env("RUNNEL_TLS_CERT_FILE", certs.join("node-1.pem"))
        .env("RUNNEL_TLS_KEY_FILE", certs.join("node-1.key"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn runnel dev");
    let ca = certs.join("ca.pem").display().to_string();
    let info = wait_for(Duration::from_secs(60), "the TLS node answers `cluster info --tls-ca`", || {
        let (addr, ca) = (addr.clone(), ca.clone());
        async move {
            let out = cli(&addr, &["cluster", "info", "--tls-ca", &ca], None);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            // Until the node has registered itself as a broker its address is not listed yet.
            (out.status.success() && text.contains(&addr)).then_some(text)
        }
    })
    .await;
    assert!(info.contains("Controller: node 1"), "{info}");
    let out = cli(&addr, &["cluster", "info"], None);
    assert!(!out.status.success(), "a plaintext client must not be served by a TLS node");
    let _ = node.kill();
    let _ = node.wait();

    // Beyond loopback without TLS: refused at start, naming the setting and the way out.
    let port = free_port();
    let out = Command::new(runnel_bin())
        .args(["start", "--node-id", "1", "--listen", &format!("0.0.0.0:{port}")])
        .args(["--advertise", &format!("127.0.0.1:{port}"), "--voters", &format!("1=127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.path().join("open"))
        .output()
        .expect("runnel start");
    fails_with(&out, &["'listen'", "0.0.0.0", "insecure"]);
}

/// Users, rules, quotas and tokens from the command line, on a `runnel dev` that requires
/// authentication, as docs/SECURITY.md shows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_rules_quotas_and_tokens_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut node = Command::new(runnel_bin())
        .args(["dev", "--listen", &addr, "--data-dir"])
        .arg(dir.path().join("data"))
        // Not `runnel dev`'s 9092: tests run side by side.
        .env("RUNNEL_KAFKA_LISTEN", "127.0.0.1:0")
        .env("RUNNEL_REQUIRE_AUTH", "true")
        .env("RUNNEL_SUPERUSERS", "User:admin")
        .env("RUNNEL_BOOTSTRAP_USER", "admin:admin-password-1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn runnel dev");
    let admin = [("RUNNEL_USER", "admin"), ("RUNNEL_PASSWORD", "admin-password-1")];
    let bob = [("RUNNEL_USER", "bob"), ("RUNNEL_PASSWORD", "bob-password-1")];
    wait_for(Duration::from_secs(60), "admin can log in", || {
        let addr = addr.clone();
        async move { cli_as(&addr, &admin, &["whoami"], None).status.success().then_some(()) }
    })
    .await;
    assert_eq!(ok(&cli_as(&addr, &admin, &["whoami"], None)).trim(), "User:admin (superuser)");
    fails_with(&cli(&addr, &["topic", "list"], None), &["requires authentication", "--user"]);
    fails_with(
        &cli_as(&addr, &[("RUNNEL_USER", "admin"), ("RUNNEL_PASSWORD", "wrong")], &["topic", "list"], None),
        &["AUTHENTICATION_FAILED", "unknown user or wrong password"],
    );

    ok(&cli_as(&addr, &admin, &["user", "create", "bob", "--password-stdin"], Some("bob-password-1\n")));
    let users = ok(&cli_as(&addr, &admin, &["user", "list"], None));
    assert!(users.contains("bob") && users.contains("SCRAM-SHA-512"), "{users}");
    for t in ["orders.eu", "secret"] {
        ok(&cli_as(&addr, &admin, &["topic", "create", t, "--partitions", "1", "--replication-factor", "1"], None));
    }
    ok(&cli_as(
        &addr,
        &admin,
        &[
            "acl",
            "add",
            "--principal",
            "User:bob",
            "--operation",
            "write",
            "--operation",
            "read",
            "--topic",
            "orders.",
            "--prefixed",
        ],
        None,
    ));
    let rules = ok(&cli_as(&addr, &admin, &["acl", "list", "--principal", "User:bob", "--output", "json"], None));
    let rules: serde_json::Value = serde_json::from_str(&rules).unwrap();
    assert_eq!(rules.as_array().map(Vec::len), Some(2), "{rules}");
    fails_with(
        &cli_as(&addr, &admin, &["acl", "add", "--principal", "bob", "--operation", "read", "--topic", "x"], None),
        &["'bob'", "User:"],
    );

    // Bob writes and reads what the rule allows, and nothing else.
    ok(&cli_as(&addr, &bob, &["produce", "orders.eu"], Some("one\ntwo\n")));
    let read = ok(&cli_as(&addr, &bob, &["consume", "orders.eu", "--from-beginning", "--max-records", "2"], None));
    assert_eq!(read, "one\ntwo\n");
    // The producer looks the topic up first: refused already there, as Kafka's metadata request is.
    fails_with(
        &cli_as(&addr, &bob, &["produce", "secret"], Some("x\n")),
        &["AUTHORIZATION_FAILED", "User:bob may not describe topic 'secret'"],
    );
    let listed = ok(&cli_as(&addr, &bob, &["topic", "list"], None));
    assert!(listed.contains("orders.eu") && !listed.contains("secret"), "{listed}");

    ok(&cli_as(
        &addr,
        &admin,
        &["quota", "set", "--principal", "User:bob", "--produce-bytes-per-sec", "1000000"],
        None,
    ));
    let quotas = ok(&cli_as(&addr, &admin, &["quota", "list"], None));
    assert!(quotas.contains("User:bob") && quotas.contains("1000000"), "{quotas}");

    // A token stands in for the password, until the user is deleted.
    let token = ok(&cli_as(&addr, &bob, &["token", "create"], None)).trim().to_string();
    assert_eq!(ok(&cli(&addr, &["whoami", "--token", &token], None)).trim(), "User:bob");
    ok(&cli_as(&addr, &admin, &["user", "delete", "bob"], None));
    fails_with(&cli(&addr, &["whoami", "--token", &token], None), &["'bob'", "no longer exists"]);
    let _ = node.kill();
    let _ = node.wait();
}
