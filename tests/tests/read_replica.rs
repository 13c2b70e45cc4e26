//! Read replicas (contract §10): the service over a primary of its own and a real streaming replica
//! of it (`pg_basebackup -R`, `standby.signal`). Reads go to the replica, proven by what a replica
//! whose replay is paused cannot have; a record is found right after its 201 whatever the lag;
//! writes, the sequencer and proofs stay on the primary; a replica that stops replaying is left
//! for the primary and taken back once it catches up; a replica that is down costs the primary
//! reads, never an answer.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use ds_server::telemetry::{CATALOGUE, Emitted};
use ds_tests::cluster::Cluster;
use ds_tests::{fixtures, http_client, test_config, until};
use serde_json::{Value, json};
use std::net::SocketAddr;

/// A primary and its streaming replica, both running, and the service over them.
struct Setup {
    primary: Cluster,
    replica: Cluster,
    addr: SocketAddr,
    metrics_addr: SocketAddr,
    client: reqwest::Client,
}

async fn setup(max_lag_ms: &str) -> Setup {
    let primary = Cluster::init("primary").unwrap();
    primary.start().unwrap();
    let replica = Cluster::replica_of(&primary).unwrap();
    replica.start().unwrap();
    assert_eq!(
        replica
            .psql("postgres", "SELECT pg_is_in_recovery()")
            .unwrap(),
        "t"
    );
    let running = ds_server::start(
        test_config(
            &primary.url("127.0.0.1", "postgres", "sslmode=disable"),
            &[
                (
                    "DATASTORAGE_DATABASE_READ_URL",
                    &replica.url("127.0.0.1", "postgres", "sslmode=disable"),
                ),
                ("DATASTORAGE_DB_READ_MAX_LAG_MS", max_lag_ms),
                ("DATASTORAGE_RATE_LIMIT_WRITES_PER_SECOND", "0"),
                ("DATASTORAGE_DB_WAIT_TIMEOUT_MS", "2000"),
            ],
        )
        .unwrap(),
    )
    .await
    .unwrap();
    running.wait_until_started().await.unwrap();
    let metrics_addr = running.metrics_addr;
    let (addr, _state) = running.spawn();
    let s = Setup {
        primary,
        replica,
        addr,
        metrics_addr,
        client: http_client(),
    };
    until("the replica is usable", || async {
        s.replica_status().await == "up"
    })
    .await;
    s
}

impl Setup {
    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("http://{}{path}", self.addr))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn write(&self, n: u32, correlation: &str) -> i64 {
        let mut record = fixtures::execution(n);
        record["correlationId"] = json!(correlation);
        let r = self
            .client
            .post(format!("http://{}/api/v1/audit/execution", self.addr))
            .json(&record)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let body: Value = r.json().await.unwrap();
        body["id"].as_i64().unwrap()
    }

    /// The ids the list answers for a correlation id.
    async fn listed(&self, correlation: &str) -> Vec<i64> {
        let (status, body) = self
            .get(&format!(
                "/api/v1/audit/records?correlationId={correlation}"
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        body["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect()
    }

    /// `/readyz`'s `readReplica.status` (the service stays ready whatever it is).
    async fn replica_status(&self) -> String {
        let (status, body) = self.get("/readyz").await;
        assert_eq!(status, 200, "{body}");
        body["dependencies"]["readReplica"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn metrics(&self) -> String {
        self.client
            .get(format!("http://{}/metrics", self.metrics_addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of the series `series` (name and labels as exposed), 0 when absent.
    async fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    fn pause_replay(&self) {
        self.replica
            .psql("postgres", "SELECT pg_wal_replay_pause()")
            .unwrap();
        // Paused for sure: replay stops at once or at its next record.
        for _ in 0..2000 {
            if self
                .replica
                .psql("postgres", "SELECT pg_get_wal_replay_pause_state()")
                .unwrap()
                == "paused"
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("replay did not pause");
    }

    fn resume_replay(&self) {
        self.replica
            .psql("postgres", "SELECT pg_wal_replay_resume()")
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_the_replica_and_a_record_is_found_right_after_its_201_whatever_the_lag() {
    // A bound the test never reaches: the paused replica stays the one that is read.
    let s = setup("600000").await;
    let trail = "rr-2026-12-01-replic";
    let first = s.write(1, trail).await;
    until("the replica has the first record", || async {
        s.listed(trail).await == [first]
    })
    .await;

    s.pause_replay();
    let second = s.write(2, trail).await;
    // By id: the replica does not have it, the primary answers.
    let (status, body) = s.get(&format!("/api/v1/audit/execution/{second}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], second);
    // The list and the trail come from the replica, which cannot have it.
    assert_eq!(s.listed(trail).await, [first]);
    let (_, t) = s.get(&format!("/api/v1/audit/trail/{trail}")).await;
    assert_eq!(t["records"].as_array().unwrap().len(), 1, "{t}");
    assert!(
        s.metric("datastorage_db_replica_fallbacks_total{reason=\"not_found\"}")
            .await
            >= 1.0
    );
    assert!(
        s.metric("datastorage_db_reads_total{pool=\"replica\"}")
            .await
            >= 3.0
    );

    // The sequencer and the checkpoints go on on the primary; proofs are the primary's.
    let primary_size = |s: &Setup| {
        s.primary
            .psql("postgres", "SELECT max(tree_size) FROM tlog_checkpoints")
            .unwrap()
            .parse::<u64>()
            .unwrap_or(0)
    };
    until("a checkpoint covers the second record", || async {
        primary_size(&s) >= 2
    })
    .await;
    let note = s
        .client
        .get(format!("http://{}/api/v1/log/checkpoint", s.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let size: u64 = note.lines().nth(1).unwrap().parse().unwrap();
    assert!(size >= 2, "{note}");
    let (status, proof) = s
        .get(&format!(
            "/api/v1/log/proof/inclusion?kind=execution&id={second}"
        ))
        .await;
    assert_eq!(status, 200, "{proof}");
    assert!(proof["treeSize"].as_u64().unwrap() >= 2, "{proof}");

    // An export reads one copy throughout: the replica's, with its own (older) checkpoint.
    let replica_size: u64 = s
        .replica
        .psql(
            "postgres",
            "SELECT coalesce(max(tree_size), 0) FROM tlog_checkpoints",
        )
        .unwrap()
        .parse()
        .unwrap();
    assert!(replica_size < primary_size(&s));
    let export = s
        .client
        .get(format!("http://{}/api/v1/audit/export", s.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(export.status(), 200);
    assert_eq!(
        export.headers()["x-log-tree-size"].to_str().unwrap(),
        replica_size.to_string()
    );
    let lines = export.text().await.unwrap().lines().count() as u64;
    assert_eq!(lines, replica_size);

    s.resume_replay();
    until("the replica replays the second record", || async {
        s.listed(trail).await == [second, first]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_stops_replaying_is_left_for_the_primary_until_it_catches_up() {
    let s = setup("300").await;
    let trail = "rr-2026-12-01-stopsr";
    s.pause_replay();
    let id = s.write(1, trail).await;
    until("the lagging replica is left", || async {
        s.replica_status().await == "unusable"
    })
    .await;
    let (_, ready) = s.get("/readyz").await;
    let reason = ready["dependencies"]["readReplica"]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reason.contains("behind the primary"), "{reason}");
    // Never a stale answer once it is left: the primary has the record.
    assert_eq!(s.listed(trail).await, [id]);
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("datastorage_db_replica_usable 0"),
        "{metrics}"
    );
    assert!(
        s.metric("datastorage_db_replica_lag_seconds").await >= 0.3,
        "{metrics}"
    );
    assert!(
        s.metric("datastorage_db_replica_fallbacks_total{reason=\"unusable\"}")
            .await
            >= 1.0
    );
    // Every metric of the read replica is emitted, with the labels the catalogue gives it.
    for m in CATALOGUE
        .iter()
        .filter(|m| matches!(m.emitted, Emitted::ReadReplica))
    {
        let series: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with(m.name) && !l.starts_with('#'))
            .collect();
        assert!(!series.is_empty(), "{} is not emitted", m.name);
        for line in series {
            for label in m.labels {
                assert!(line.contains(&format!("{label}=\"")), "{line}");
            }
        }
    }
    for state in ["idle", "in_use"] {
        assert!(
            metrics.contains(&format!(
                "datastorage_db_pool_connections{{pool=\"replica\",state=\"{state}\"}}"
            )),
            "{metrics}"
        );
    }

    s.resume_replay();
    until("the replica is taken back", || async {
        s.replica_status().await == "up"
    })
    .await;
    let before = s
        .metric("datastorage_db_reads_total{pool=\"replica\"}")
        .await;
    assert_eq!(s.listed(trail).await, [id]);
    assert!(
        s.metric("datastorage_db_reads_total{pool=\"replica\"}")
            .await
            > before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_is_down_costs_the_primary_reads_never_an_answer() {
    let s = setup("1000").await;
    let trail = "rr-2026-12-01-downrp";
    let mut ids = vec![s.write(1, trail).await];
    until("the replica has the record", || async {
        s.listed(trail).await == ids
    })
    .await;
    s.replica.stop("immediate").unwrap();
    // At once, whether or not a check noticed yet: every read and write is answered.
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for n in 2..12 {
        ids.insert(0, s.write(n, trail).await);
        for path in [
            format!("/api/v1/audit/execution/{}", ids[0]),
            format!("/api/v1/audit/records?correlationId={trail}"),
            format!("/api/v1/audit/trail/{trail}"),
            "/api/v1/audit/export?limit=5".to_owned(),
        ] {
            *statuses.entry(s.get(&path).await.0).or_default() += 1;
        }
        let search = s
            .client
            .post(format!("http://{}/api/v1/audit/search", s.addr))
            .json(&json!({"query": "pod restarted", "limit": 3}))
            .send()
            .await
            .unwrap();
        *statuses.entry(search.status().as_u16()).or_default() += 1;
    }
    assert_eq!(statuses, [(200, 50)].into_iter().collect());
    assert_eq!(
        s.listed(trail).await,
        ids,
        "every acknowledged write is read"
    );
    assert_eq!(s.replica_status().await, "unusable");

    s.replica.start().unwrap();
    until("the replica is taken back", || async {
        s.replica_status().await == "up"
    })
    .await;
    until("the replica serves every record again", || async {
        s.listed(trail).await == ids
    })
    .await;
    let before = s
        .metric("datastorage_db_reads_total{pool=\"replica\"}")
        .await;
    s.listed(trail).await;
    assert!(
        s.metric("datastorage_db_reads_total{pool=\"replica\"}")
            .await
            > before
    );
}
