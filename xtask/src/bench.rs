//! `cargo xtask bench`: the service against its own baselines, measured in the same run.
//!
//! Starts a durable PostgreSQL (fsync on, synchronous commit) with pgvector and, for each table size,
//! a database pre-filled with COPY; measures pgbench baselines on that database (the raw single-row
//! INSERT of a record, the raw insert into the HNSW-indexed embeddings); runs the release service in
//! `deferred` then `inline` mode and drives it with `ds-bench load`; measures the embedding worker's
//! drain rate, the bare model, search latency and recall@10. Writes `target/bench/results.json` and
//! `target/bench/summary.txt` and prints the summary.

use crate::{Cluster, fetch_model, run, step};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BENCH_PORT: u16 = 55434;
const API: &str = "127.0.0.1:18080";
const METRICS: &str = "127.0.0.1:19090";

struct Options {
    sizes: Vec<u64>,
    seconds: f64,
    conns: Vec<usize>,
    worker_seconds: f64,
    /// `hnsw.ef_search` values the search benchmark sweeps (one service start each).
    ef: Vec<u32>,
    /// The shape of the pre-filled and query vectors (`ds-bench prefill --vectors`).
    vectors: String,
    /// Only the memory-before-admission measurement.
    bodies_only: bool,
    /// Records of the export `datastorage verify` is timed on.
    verify_leaves: u64,
    /// Open-loop write rate during the purge scenario, and the seconds of its baseline.
    purge_write_rate: f64,
    purge_baseline_seconds: f64,
}

/// `1,16,64` → `[1, 16, 64]`.
fn comma_list<T>(s: &str) -> Result<Vec<T>>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    s.split(',')
        .map(|c| c.parse().map_err(anyhow::Error::from))
        .collect()
}

impl Options {
    fn parse(args: &[String]) -> Result<Options> {
        let mut o = Options {
            sizes: vec![0, 100_000, 1_000_000],
            seconds: 10.0,
            conns: vec![1, 16, 64],
            worker_seconds: 30.0,
            ef: vec![40, 100, 200, 400],
            vectors: "embedding".to_owned(),
            bodies_only: false,
            verify_leaves: 1_000_000,
            purge_write_rate: 2000.0,
            purge_baseline_seconds: 30.0,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || it.next().context(format!("{a} needs a value"));
            match a.as_str() {
                "--sizes" => {
                    o.sizes = value()?.split(',').map(parse_size).collect::<Result<_>>()?
                }
                "--seconds" => o.seconds = value()?.parse()?,
                "--worker-seconds" => o.worker_seconds = value()?.parse()?,
                "--conns" => o.conns = comma_list(value()?)?,
                "--ef" => o.ef = comma_list(value()?)?,
                "--bodies-only" => o.bodies_only = true,
                "--verify-leaves" => o.verify_leaves = parse_size(value()?)?,
                "--purge-write-rate" => o.purge_write_rate = value()?.parse()?,
                "--purge-baseline-seconds" => o.purge_baseline_seconds = value()?.parse()?,
                "--vectors" => match value()?.as_str() {
                    v @ ("embedding" | "isotropic") => o.vectors = v.to_owned(),
                    other => bail!("--vectors {other}: embedding or isotropic"),
                },
                other => bail!(
                    "unknown option {other}: --sizes 0,100k,1M --seconds 10 --conns 1,16,64 --worker-seconds 30 --ef 40,100,200,400 --vectors embedding|isotropic --verify-leaves 1M --purge-write-rate 2000 --purge-baseline-seconds 30 --bodies-only"
                ),
            }
        }
        Ok(o)
    }
}

fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim().to_ascii_lowercase();
    Ok(if let Some(k) = s.strip_suffix('k') {
        k.parse::<u64>()? * 1000
    } else if let Some(m) = s.strip_suffix('m') {
        m.parse::<u64>()? * 1_000_000
    } else {
        s.parse()?
    })
}

/// The machine the figures come from.
fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .trim()
        .to_owned();
    let mem_kb: u64 = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    json!({
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu_model": model,
        "memory_gib": mem_kb as f64 / 1024.0 / 1024.0,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "loadavg_at_start": read("/proc/loadavg").trim(),
    })
}

/// Busy and total jiffies of the whole machine (from /proc/stat).
fn machine_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let nums: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = nums.iter().sum();
    let idle = nums.get(3).copied().unwrap_or(0) + nums.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// CPU seconds and peak RSS (MiB) of a process.
fn process_usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    ((tick(11) + tick(12)) / 100.0, hwm_kb / 1024.0)
}

/// CPU seconds of every PostgreSQL process (backends, WAL writer, checkpointer...).
fn postgres_cpu_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .map(|pid| process_usage(pid).0)
        .sum()
}

/// One load point: `conns` connections, closed loop or a fixed `rate`, a share of recurring texts.
struct Scenario<'a> {
    name: &'a str,
    conns: usize,
    rate: Option<f64>,
    repeat_share: f64,
    target: &'a str,
    seconds: f64,
}

struct Bench {
    root: PathBuf,
    out: PathBuf,
    cluster: Cluster,
    model_dir: PathBuf,
    bin: PathBuf,
    /// The checkpoint signing key of this run, and its verifier key.
    log_key: PathBuf,
    verifier_key: String,
    /// While the log is off: the process holding the sequencer's lock.
    log_off: std::sync::Mutex<Option<Child>>,
}

struct Service {
    child: Child,
}

impl Service {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(self) -> Result<()> {
        // Drop sends SIGTERM and waits.
        Ok(())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Bench {
    fn ds_bench(&self, args: &[&str]) -> Result<Value> {
        let out = Command::new(self.bin.join("ds-bench"))
            .args(args)
            .stderr(Stdio::inherit())
            .output()
            .context("running ds-bench")?;
        if !out.status.success() {
            bail!("ds-bench {args:?} failed");
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// `psql` on database `db` of the bench cluster: no psqlrc, quiet, stop at the first error.
    fn psql(&self, db: &str) -> Command {
        let mut cmd = self.cluster.cmd("psql");
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args(["-p", &BENCH_PORT.to_string(), "-U", "postgres", "-d", db]);
        cmd
    }

    fn psql_in(&self, db: &str, sql: &str) -> Result<String> {
        let out = self.psql(db).args(["-At", "-c", sql]).output()?;
        if !out.status.success() {
            bail!(
                "psql: {sql}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// `ds-bench prefill | psql COPY`.
    fn copy(
        &self,
        db: &str,
        table: &str,
        columns: &str,
        rows: u64,
        model: &str,
        vectors: &str,
    ) -> Result<()> {
        let mut producer = Command::new(self.bin.join("ds-bench"))
            .args(["prefill", "--table", table, "--rows", &rows.to_string()])
            .args(["--model", model, "--vectors", vectors])
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = producer.stdout.take().context("prefill stdout")?;
        let status = self
            .psql(db)
            .args([
                "-c",
                &format!("COPY {table} ({columns}) FROM STDIN (FORMAT csv)"),
            ])
            .stdin(stdout)
            .status()?;
        if !producer.wait()?.success() || !status.success() {
            bail!("COPY into {table} failed");
        }
        Ok(())
    }

    fn start_service(&self, db: &str, mode: &str, tag: &str) -> Result<(Service, String)> {
        self.start_service_with(db, mode, tag, &[])
    }

    /// [`Bench::start_service`] with more `DATASTORAGE_*` settings.
    fn start_service_with(
        &self,
        db: &str,
        mode: &str,
        tag: &str,
        extra: &[(&str, String)],
    ) -> Result<(Service, String)> {
        let log = std::fs::File::create(self.out.join(format!("service-{tag}.log")))?;
        let child = Command::new(self.bin.join("datastorage"))
            .arg("serve")
            // No retention maintenance but where a scenario asks for it: the prefilled records are
            // past retention, and a purge would run under every other measurement.
            .env("DATASTORAGE_RETENTION_MAINTENANCE_INTERVAL_MS", "0")
            .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
            .env("DATASTORAGE_DATABASE_URL", self.cluster.url(db))
            .env("DATASTORAGE_LOG_SIGNING_KEY_FILE", &self.log_key)
            .env("DATASTORAGE_HTTP_ADDR", API)
            .env("DATASTORAGE_METRICS_ADDR", METRICS)
            .env("DATASTORAGE_EMBEDDING_LOCAL_MODEL_DIR", &self.model_dir)
            .env("DATASTORAGE_EMBEDDING_MODE", mode)
            // One client drives the whole load: the per-caller limits would measure themselves.
            .env("DATASTORAGE_RATE_LIMIT_WRITES_PER_SECOND", "0")
            .env("DATASTORAGE_RATE_LIMIT_SEARCHES_PER_SECOND", "0")
            .env("DATASTORAGE_LOG_FORMAT", "json")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the service")?;
        let mut service = Service { child };
        let model = self.ds_bench(&["ready", "--addr", API])?;
        if let Some(status) = service.child.try_wait()? {
            bail!("the service exited ({status}) while another answered on {API}: stop it first");
        }
        Ok((service, model.as_str().unwrap_or_default().to_owned()))
    }

    /// One load scenario with the service's CPU, peak RSS and the machine's CPU around it.
    fn load(&self, service: &Service, scenario: Scenario<'_>) -> Result<Value> {
        self.load_with(service, scenario, &[])
    }

    /// [`Bench::load`] with more `ds-bench load` options.
    fn load_with(
        &self,
        service: &Service,
        scenario: Scenario<'_>,
        extra: &[String],
    ) -> Result<Value> {
        let Scenario {
            name,
            conns,
            rate,
            repeat_share,
            target,
            seconds,
        } = scenario;
        let slug: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        let run_tag = format!(
            "{slug}-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos()
        );
        let (cpu0, _) = process_usage(service.pid());
        let (busy0, total0) = machine_jiffies();
        let pg0 = postgres_cpu_seconds();
        let wal0 = self.psql_in("postgres", "SELECT pg_current_wal_lsn()")?;
        let mut args = vec![
            "load".to_owned(),
            "--addr".into(),
            API.into(),
            "--target".into(),
            target.into(),
            "--conns".into(),
            conns.to_string(),
            "--seconds".into(),
            seconds.to_string(),
            "--repeat-share".into(),
            repeat_share.to_string(),
            "--run".into(),
            run_tag,
        ];
        if let Some(r) = rate {
            args.extend(["--rate".into(), r.to_string()]);
        }
        args.extend(extra.iter().cloned());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut result = self.ds_bench(&refs)?;
        let (cpu1, rss) = process_usage(service.pid());
        let (busy1, total1) = machine_jiffies();
        let pg1 = postgres_cpu_seconds();
        let secs = result["seconds"].as_f64().unwrap_or(seconds);
        // Everything the cluster wrote to its WAL meanwhile (the sequencer's and checkpoints' too),
        // per acknowledged record.
        let wal: f64 = self
            .psql_in(
                "postgres",
                &format!("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{wal0}')"),
            )?
            .parse()
            .unwrap_or(0.0);
        let acked = result["records_per_second"].as_f64().unwrap_or(0.0) * secs;
        result["wal_bytes_per_record"] = json!(wal / acked.max(1.0));
        result["scenario"] = json!(name);
        result["service_cpu_cores"] = json!((cpu1 - cpu0) / secs);
        // Backends that ended during the run are not counted: a lower bound.
        result["postgres_cpu_cores"] = json!((pg1 - pg0) / secs);
        result["service_peak_rss_mib"] = json!(rss);
        result["machine_cpu_busy"] =
            json!((busy1 - busy0) as f64 / (total1 - total0).max(1) as f64);
        step(&format!(
            "{name}: {:.0} records/s, p50 {:.1} ms, p99 {:.1} ms, errors {}",
            result["records_per_second"].as_f64().unwrap_or(0.0),
            result["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
            result["latency_ms"]["p99"].as_f64().unwrap_or(0.0),
            result["requests"].as_u64().unwrap_or(0) - result["ok"].as_u64().unwrap_or(0)
        ));
        Ok(result)
    }

    /// Peak RSS of the service while 200 requests with 2 MiB bodies arrive at once: with a body budget
    /// that holds them all (1 GiB: what the service did before the budget, every body buffered) and
    /// with the default budget (64 MiB), in the same run.
    fn bodies(&self) -> Result<Value> {
        let db = "bench_bodies";
        self.psql_in("postgres", &format!("DROP DATABASE IF EXISTS {db}"))?;
        self.psql_in("postgres", &format!("CREATE DATABASE {db}"))?;
        run(Command::new(self.bin.join("datastorage"))
            .arg("migrate")
            .env("DATASTORAGE_DATABASE_URL", self.cluster.url(db))
            .stdout(Stdio::null()))?;
        let mut out = Vec::new();
        for (label, budget) in [
            (
                "budget 1 GiB (every body held: as before the budget)",
                1usize << 30,
            ),
            ("default budget 64 MiB", 64 << 20),
        ] {
            step(&format!("200 concurrent 2 MiB bodies, {label}"));
            let (service, _) = self.start_service_with(
                db,
                "deferred",
                &format!("bodies-{budget}"),
                &[("DATASTORAGE_MAX_BODY_BUDGET_BYTES", budget.to_string())],
            )?;
            let (_, idle_peak) = process_usage(service.pid());
            let mut r = self.ds_bench(&["bodies", "--addr", API, "--conns", "200"])?;
            let (_, peak) = process_usage(service.pid());
            service.stop()?;
            r["label"] = json!(label);
            r["budget_bytes"] = json!(budget);
            r["peak_rss_before_mib"] = json!(idle_peak);
            r["peak_rss_mib"] = json!(peak);
            step(&format!(
                "{label}: peak RSS {idle_peak:.0} → {peak:.0} MiB, statuses {}",
                r["statuses"]
            ));
            out.push(r);
        }
        Ok(json!(out))
    }

    /// pgbench on `db` with a script of ds-bench's; transactions/s and mean latency.
    fn pgbench(&self, db: &str, script: &str, clients: usize, seconds: f64) -> Result<Value> {
        let file = self.out.join(format!("{script}.sql"));
        let text = Command::new(self.bin.join("ds-bench"))
            .args(["baseline", "--what", script])
            .output()?
            .stdout;
        std::fs::write(&file, text)?;
        if self.cluster.as_postgres {
            let _ = Command::new("chmod").arg("a+r").arg(&file).status();
        }
        let out = self
            .cluster
            .cmd("pgbench")
            .args(["-n", "-M", "prepared", "-h", "127.0.0.1"])
            .args(["-p", &BENCH_PORT.to_string(), "-U", "postgres"])
            .args(["-T", &format!("{}", seconds.round().max(1.0) as u64)])
            .args(["-c", &clients.to_string()])
            .args(["-j", &clients.min(2).to_string()])
            .arg("-f")
            .arg(&file)
            .arg(db)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "pgbench failed: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let value = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .and_then(|l| l.split('=').nth(1))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        };
        let r = json!({
            "script": script,
            "clients": clients,
            "rows_per_second": value("tps"),
            "latency_avg_ms": value("latency average"),
        });
        step(&format!(
            "pgbench {script} c{clients}: {:.0} rows/s, mean {:.1} ms",
            r["rows_per_second"].as_f64().unwrap_or(0.0),
            r["latency_avg_ms"].as_f64().unwrap_or(0.0)
        ));
        Ok(r)
    }

    fn wait_for_jobs(&self, db: &str, limit: Duration) -> Result<i64> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(100);
        loop {
            let pending: i64 = self
                .psql_in(
                    db,
                    "SELECT count(*) FROM embedding_jobs WHERE done_at IS NULL",
                )?
                .parse()?;
            if pending == 0 || started.elapsed() > limit {
                return Ok(pending);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// Turns the transparency log off or on (off: the raw insert baselines and the "log off"
    /// scenario): off, the trigger that queues inserted records is disabled and the sequencer's lock
    /// is held (no run, no sweep); on, what was written meanwhile is queued, so the log still gets
    /// every record, and the sequencer is let go.
    fn log_queue(&self, db: &str, on: bool) -> Result<()> {
        let mut holder = self
            .log_off
            .lock()
            .map_err(|_| anyhow::anyhow!("the log switch's lock is poisoned"))?;
        if on {
            self.psql_in(
                db,
                "ALTER TABLE audit_records ENABLE TRIGGER audit_records_enqueue; \
                 INSERT INTO tlog_queue (first_id, record_ids, kinds, leaf_hashes) \
                 SELECT min(r.id), array_agg(r.id), array_agg(r.kind), \
                        string_agg(COALESCE(r.leaf_hash, decode(repeat('00', 32), 'hex')), ''::bytea) \
                 FROM audit_records r \
                 WHERE NOT EXISTS (SELECT 1 FROM tlog_leaves l WHERE l.record_id = r.id) \
                   AND r.id NOT IN (SELECT unnest(record_ids) FROM tlog_queue) \
                 GROUP BY r.id / 10000",
            )?;
            // Then the sequencer runs again (its lock's holder ends, the lock with its connection):
            // its sweep finds every record queued.
            if let Some(mut h) = holder.take() {
                drop(h.stdin.take());
                h.wait()?;
            }
        } else {
            // What is queued is appended first: once the lock is held, nothing would.
            if holder.is_none() {
                self.wait_for_log(db, Duration::from_secs(600))?;
            }
            self.psql_in(
                db,
                "ALTER TABLE audit_records DISABLE TRIGGER audit_records_enqueue",
            )?;
            // No sequencer run and no sweep either: `ds-bench hold-sequencer` holds its lock.
            if holder.is_none() {
                let mut h = Command::new(self.bin.join("ds-bench"))
                    .args(["hold-sequencer", "--db-url", &self.cluster.url(db)])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()?;
                let mut line = String::new();
                std::io::BufReader::new(h.stdout.take().context("hold-sequencer's stdout")?)
                    .read_line(&mut line)?;
                if line.trim() != "held" {
                    bail!("ds-bench hold-sequencer did not take the lock");
                }
                *holder = Some(h);
            }
        }
        Ok(())
    }

    /// Waits until no record waits for the log (a running service's sequencer appends them);
    /// returns the seconds it took.
    fn wait_for_log(&self, db: &str, limit: Duration) -> Result<f64> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            let pending: i64 = self
                .psql_in(db, "SELECT count(*) FROM tlog_queue")?
                .parse()?;
            if pending == 0 {
                return Ok(started.elapsed().as_secs_f64());
            }
            if started.elapsed() > limit {
                bail!("{pending} records still wait for the transparency log after {limit:?}");
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// Integration lag (leaf inserted − record received) of the records received since `since`.
    fn integration_lag(&self, db: &str, since: &str) -> Result<Value> {
        let row = self.psql_in(
            db,
            &format!(
                "SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY lag), \
                        percentile_cont(0.99) WITHIN GROUP (ORDER BY lag), max(lag) \
                 FROM (SELECT extract(epoch FROM s.integrated_at - r.received_at) AS lag \
                       FROM tlog_leaves l JOIN audit_records r ON r.id = l.record_id \
                       CROSS JOIN LATERAL (SELECT integrated_at FROM tlog_segments \
                           WHERE first_leaf <= l.log_index ORDER BY first_leaf DESC LIMIT 1) s \
                       WHERE r.received_at >= '{since}') t"
            ),
        )?;
        let v: Vec<f64> = row
            .split('|')
            .map(|x| x.parse().unwrap_or(f64::NAN))
            .collect();
        Ok(json!({"records": v[0], "p50_s": v[1], "p99_s": v[2], "max_s": v[3]}))
    }

    /// The log with the inline service running: inclusion proof latency, the export through the
    /// API, and `datastorage verify` of that export against its signed checkpoint.
    fn log_reads(&self, db: &str) -> Result<Value> {
        self.wait_for_log(db, Duration::from_secs(600))?;
        step(&format!("{db}: inclusion proofs through the API"));
        let proofs =
            self.ds_bench(&["proofs", "--addr", API, "--db-url", &self.cluster.url(db)])?;
        step(&format!(
            "inclusion proof: p50 {:.2} ms, p99 {:.2} ms ({} of {} answered 200)",
            proofs["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
            proofs["latency_ms"]["p99"].as_f64().unwrap_or(0.0),
            proofs["ok"],
            proofs["proofs"]
        ));
        let file = self.out.join(format!("export-{db}.ndjson"));
        let export = self.ds_bench(&[
            "export",
            "--addr",
            API,
            "--out",
            &file.display().to_string(),
        ])?;
        let lines = export["lines"].as_u64().unwrap_or(0);
        let note = self.psql_in(
            db,
            &format!("SELECT note FROM tlog_checkpoints WHERE tree_size = {lines}"),
        )?;
        let checkpoint = self.out.join(format!("checkpoint-{db}.txt"));
        std::fs::write(&checkpoint, format!("{note}\n"))?;
        let verify = self.verify(&file, &checkpoint, &self.verifier_key, lines)?;
        let _ = std::fs::remove_file(&file);
        step(&format!(
            "export: {:.0} lines/s; verify: {:.0} records/s",
            export["lines_per_second"].as_f64().unwrap_or(0.0),
            verify["records_per_second"].as_f64().unwrap_or(0.0)
        ));
        Ok(json!({"inclusion_proofs": proofs, "export": export, "verify": verify}))
    }

    /// The list of records (contract §10) through the API, each query next to `EXPLAIN (ANALYZE,
    /// BUFFERS)` of the same statement, and a deep scroll.
    fn list(&self, db: &str) -> Result<Value> {
        step(&format!("{db}: the list of records through the API"));
        let list = self.ds_bench(&["list", "--addr", API, "--db-url", &self.cluster.url(db)])?;
        for q in list["queries"].as_array().into_iter().flatten() {
            step(&format!(
                "list {}: p50 {:.2} ms, p99 {:.2} ms through the API; PostgreSQL alone {:.2} ms",
                q["query"].as_str().unwrap_or(""),
                f(&q["latency_ms"]["p50"]),
                f(&q["latency_ms"]["p99"]),
                f(&q["explain_analyze"]["execution_ms"])
            ));
        }
        let d = &list["deep_scroll"];
        step(&format!(
            "deep scroll: {} pages, the last 10 {:.2} ms vs the first 10 {:.2} ms ({:.2}×)",
            d["pages"],
            f(&d["last_10_pages_mean_ms"]),
            f(&d["first_10_pages_mean_ms"]),
            f(&d["last_over_first"])
        ));
        Ok(list)
    }

    /// What the store holds on disk per record: the records' heap and each of their indexes (summed
    /// over the month partitions), the vectors and their HNSW index, the log's tables.
    fn storage(&self, db: &str) -> Result<Value> {
        let rows = self.psql_in(
            db,
            "SELECT 'records', (SELECT count(*) FROM audit_records) \
             UNION ALL SELECT 'heap audit_records', (SELECT coalesce(sum(pg_relation_size(i.inhrelid)), 0) \
                 FROM pg_inherits i WHERE i.inhparent = 'audit_records'::regclass) \
             UNION ALL SELECT 'index ' || c.relname, (SELECT coalesce(sum(pg_relation_size(i.inhrelid)), 0) \
                 FROM pg_inherits i WHERE i.inhparent = c.oid) \
                 FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid WHERE x.indrelid = 'audit_records'::regclass \
             UNION ALL SELECT 'heap embeddings', pg_relation_size('embeddings') \
             UNION ALL SELECT 'index embeddings_hnsw_384', pg_relation_size('embeddings_hnsw_384') \
             UNION ALL SELECT 'table+indexes audit_digests', pg_total_relation_size('audit_digests') \
             UNION ALL SELECT 'table+indexes tlog_segments', pg_total_relation_size('tlog_segments') \
             UNION ALL SELECT 'table+indexes tlog_leaves', pg_total_relation_size('tlog_leaves')",
        )?;
        let mut parts = serde_json::Map::new();
        for line in rows.lines() {
            if let Some((name, bytes)) = line.split_once('|') {
                parts.insert(name.to_owned(), json!(bytes.parse::<f64>().unwrap_or(0.0)));
            }
        }
        let records = parts.get("records").and_then(Value::as_f64).unwrap_or(0.0);
        let per_record: serde_json::Map<String, Value> = parts
            .iter()
            .filter(|(k, _)| *k != "records")
            .map(|(k, v)| {
                (
                    k.clone(),
                    json!(v.as_f64().unwrap_or(0.0) / records.max(1.0)),
                )
            })
            .collect();
        step(&format!(
            "storage per record: {}",
            per_record
                .iter()
                .map(|(k, v)| format!("{k} {:.0} B", v.as_f64().unwrap_or(0.0)))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        Ok(json!({"records": records, "bytes": parts, "bytes_per_record": per_record}))
    }

    /// `datastorage verify` of an export: its verdict and records per second, next to SHA-256 over
    /// the same bytes (`sha256sum`: the floor of any verifier that reads them).
    fn verify(&self, export: &Path, checkpoint: &Path, key: &str, lines: u64) -> Result<Value> {
        let t = Instant::now();
        let out = Command::new(self.bin.join("datastorage"))
            .arg("verify")
            .arg("--export")
            .arg(export)
            .arg("--checkpoint")
            .arg(checkpoint)
            .args(["--key", key])
            .output()?;
        let secs = t.elapsed().as_secs_f64();
        let verdict = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !out.status.success() {
            bail!(
                "datastorage verify failed ({}): {verdict} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let t = Instant::now();
        run(Command::new("sha256sum").arg(export).stdout(Stdio::null()))?;
        let sha = t.elapsed().as_secs_f64();
        Ok(json!({
            "records": lines,
            "seconds": secs,
            "records_per_second": lines as f64 / secs,
            "bytes": std::fs::metadata(export)?.len(),
            "sha256sum_seconds": sha,
            "verdict": verdict,
        }))
    }

    /// `datastorage verify` of an export of `leaves` records made by ds-bench (no database needed).
    fn verify_synthetic(&self, leaves: u64) -> Result<Value> {
        let dir = self.out.join("verify");
        step(&format!(
            "an export of {leaves} records for `datastorage verify`"
        ));
        self.ds_bench(&[
            "synthetic-export",
            "--leaves",
            &leaves.to_string(),
            "--dir",
            &dir.display().to_string(),
        ])?;
        let key = std::fs::read_to_string(dir.join("verifier-key.txt"))?;
        let r = self.verify(
            &dir.join("export.ndjson"),
            &dir.join("checkpoint.txt"),
            key.trim(),
            leaves,
        )?;
        let _ = std::fs::remove_dir_all(&dir);
        step(&format!(
            "verify: {leaves} records in {:.1} s = {:.0} records/s (sha256sum of the same {:.0} MiB: {:.1} s)",
            f(&r["seconds"]),
            f(&r["records_per_second"]),
            f(&r["bytes"]) / (1 << 20) as f64,
            f(&r["sha256sum_seconds"])
        ));
        Ok(r)
    }

    /// Write latency during a purge of the `size` prefilled records (all past the default
    /// retention, in the partition that also takes today's writes: purged row by row), next to the
    /// same open-loop load without a purge, in the same run. The purge is the service's own
    /// maintenance task with its default settings; the load lasts as long as the purge does.
    fn purge(&self, db: &str, size: u64, o: &Options) -> Result<Value> {
        let rate = o.purge_write_rate;
        let scenario = |name| Scenario {
            name,
            conns: 64,
            rate: Some(rate),
            repeat_share: 1.0,
            target: "write",
            seconds: o.purge_baseline_seconds,
        };
        step(&format!(
            "{db}: writes at {rate:.0}/s without a purge, then during the purge of {size} expired records"
        ));
        self.psql_in(db, "CHECKPOINT")?;
        let (service, _) = self.start_service_with(
            db,
            "deferred",
            &format!("{size}-purge-baseline"),
            &[("DATASTORAGE_RETENTION_MAINTENANCE_INTERVAL_MS", "0".into())],
        )?;
        let without = self.load(&service, scenario("writes without a purge"))?;
        service.stop()?;

        self.psql_in(db, "CHECKPOINT")?;
        let wal0 = self.psql_in(db, "SELECT pg_current_wal_lsn()")?;
        // The maintenance task's first run starts at start-up, with a purge due.
        let (service, _) = self.start_service_with(
            db,
            "deferred",
            &format!("{size}-purge"),
            &[(
                "DATASTORAGE_RETENTION_MAINTENANCE_INTERVAL_MS",
                "1000".into(),
            )],
        )?;
        let stop_file = self.out.join("purge-done");
        let _ = std::fs::remove_file(&stop_file);
        // Done when every expired record is named by a purge entry and no purge waits to be
        // carried out (the records are deleted once a checkpoint covers their entry).
        let progress_sql = "SELECT (SELECT COALESCE(sum((body->>'count')::bigint), 0) FROM log_entries WHERE kind = 'purge'), \
                            (SELECT count(*) FROM purge_pending), now()";
        let limit = Duration::from_secs(600 + size / 500);
        let (during, purged, done_at) =
            std::thread::scope(|scope| -> Result<(Value, u64, String)> {
                let load = scope.spawn(|| {
                    self.load_with(
                        &service,
                        Scenario {
                            seconds: limit.as_secs_f64(),
                            ..scenario("writes during the purge")
                        },
                        &["--stop-file".into(), stop_file.display().to_string()],
                    )
                });
                let started = Instant::now();
                let (purged, done_at) = loop {
                    let row = self.psql_in(db, progress_sql)?;
                    let v: Vec<&str> = row.split('|').collect();
                    let (named, pending): (u64, u64) = (v[0].parse()?, v[1].parse()?);
                    if (named >= size && pending == 0)
                        || started.elapsed() > limit
                        || load.is_finished()
                    {
                        break (named, v[2].to_owned());
                    }
                    std::thread::sleep(Duration::from_millis(500));
                };
                std::fs::write(&stop_file, b"")?;
                let during = load
                    .join()
                    .map_err(|_| anyhow::anyhow!("the load thread panicked"))??;
                Ok((during, purged, done_at))
            })?;
        service.stop()?;
        if purged < size {
            bail!("the purge named {purged} of the {size} expired records within {limit:?}");
        }
        // The prefilled records are ids 1..=size.
        let left: u64 = self
            .psql_in(
                db,
                &format!("SELECT count(*) FROM audit_records WHERE id <= {size}"),
            )?
            .parse()?;
        if left > 0 {
            bail!("{left} of the {size} expired records are still stored after the purge");
        }
        let row = self.psql_in(
            db,
            &format!(
                "SELECT extract(epoch FROM '{done_at}'::timestamptz - min(created_at)), count(*), \
                        pg_wal_lsn_diff(pg_current_wal_lsn(), '{wal0}') \
                 FROM log_entries WHERE kind = 'purge'"
            ),
        )?;
        let v: Vec<f64> = row
            .split('|')
            .map(|x| x.parse().unwrap_or(f64::NAN))
            .collect();
        let (seconds, entries, wal) = (v[0], v[1], v[2]);
        let p99 = |r: &Value| f(&r["latency_ms"]["p99"]);
        let errors = |r: &Value| f(&r["requests"]) - f(&r["ok"]);
        let ratio = p99(&during) / p99(&without);
        step(&format!(
            "purge of {purged} records: {seconds:.0} s ({:.0} records/s, {entries:.0} batches, {:.0} MiB of WAL with the writes); write p99 {:.1} ms during it vs {:.1} ms without ({ratio:.2}×; target ≤ 2×), p50 {:.1} vs {:.1} ms, not acknowledged {:.0} and {:.0}",
            purged as f64 / seconds,
            wal / f64::from(1 << 20),
            p99(&during),
            p99(&without),
            f(&during["latency_ms"]["p50"]),
            f(&without["latency_ms"]["p50"]),
            errors(&during),
            errors(&without),
        ));
        Ok(json!({
            "records": purged,
            "seconds": seconds,
            "records_per_second": purged as f64 / seconds,
            "batches": entries,
            "wal_bytes": wal,
            "write_rate": rate,
            "p99_during_over_without": ratio,
            "without": without,
            "during": during,
        }))
    }

    fn size(&self, size: u64, o: &Options, first: bool) -> Result<Value> {
        let db = format!("bench_{size}");
        let mut report = json!({ "records_prefilled": size });
        self.psql_in("postgres", &format!("DROP DATABASE IF EXISTS {db}"))?;
        self.psql_in("postgres", &format!("CREATE DATABASE {db}"))?;
        step(&format!("{db}: migrating"));
        run(Command::new(self.bin.join("datastorage"))
            .arg("migrate")
            .env("DATASTORAGE_DATABASE_URL", self.cluster.url(&db))
            .stdout(Stdio::null()))?;

        // Deferred mode first: its model id names the pre-filled vectors.
        let (service, model) = self.start_service(&db, "deferred", &format!("{size}-deferred"))?;
        if size > 0 {
            step(&format!("{db}: COPY {size} embeddings and records"));
            let t = Instant::now();
            self.psql_in(&db, "DROP INDEX embeddings_hnsw_384")?;
            self.copy(
                &db,
                "embeddings",
                "id, digest, model, embedding",
                size,
                &model,
                &o.vectors,
            )?;
            self.copy(
                &db,
                "audit_records",
                "id, received_at, kind, name, namespace, phase, correlation_id, message, created_at, content_digest, details, embedding_digest, embedding_id",
                size,
                &model,
                &o.vectors,
            )?;
            // The digests of the copied records (the service's writes insert theirs).
            self.psql_in(&db, "INSERT INTO audit_digests (content_digest, record_id, received_at) \
                               SELECT content_digest, id, received_at FROM audit_records; \
                               SELECT setval('embeddings_id_seq', (SELECT max(id) FROM embeddings)); \
                               SELECT setval('audit_records_id_seq', (SELECT max(id) FROM audit_records))")?;
            report["copy_seconds"] = json!(t.elapsed().as_secs_f64());
            step(&format!("{db}: building the HNSW index"));
            let t = Instant::now();
            self.psql_in(
                &db,
                "SET maintenance_work_mem = '3GB'; SET max_parallel_maintenance_workers = 2; \
                 CREATE INDEX embeddings_hnsw_384 ON embeddings \
                 USING hnsw ((embedding::vector(384)) vector_cosine_ops) WHERE vector_dims(embedding) = 384",
            )?;
            report["hnsw_build_seconds"] = json!(t.elapsed().as_secs_f64());
            // The COPY queued every record for the log: the running service's sequencer appends them.
            step(&format!(
                "{db}: the sequencer appends {size} records to the transparency log"
            ));
            // Appended while the index builds: the rate from the leaves' own insert times.
            self.wait_for_log(&db, Duration::from_secs(3600))?;
            let span: f64 = self
                .psql_in(
                    &db,
                    "SELECT extract(epoch FROM max(integrated_at) - min(integrated_at)) FROM tlog_segments",
                )?
                .parse()?;
            report["log_prefill"] =
                json!({"seconds": span, "leaves_per_second": size as f64 / span});
            step(&format!(
                "{db}: {size} leaves appended in {span:.0} s ({:.0}/s, alongside the index build)",
                size as f64 / span
            ));
            self.psql_in(&db, "VACUUM ANALYZE")?;
        }
        self.psql_in(&db, "CHECKPOINT")?;

        // Baselines on the same database and schema.
        self.psql_in(
            &db,
            "CREATE TABLE bench_centres (id int PRIMARY KEY, v vector(384))",
        )?;
        {
            let text = Command::new(self.bin.join("ds-bench"))
                .args(["baseline", "--what", "centres"])
                .output()?
                .stdout;
            let mut child = self
                .psql(&db)
                .args(["-c", "COPY bench_centres FROM STDIN (FORMAT csv)"])
                .stdin(Stdio::piped())
                .spawn()?;
            child.stdin.take().context("psql stdin")?.write_all(&text)?;
            if !child.wait()?.success() {
                bail!("loading the baseline's topic centres failed");
            }
        }
        self.psql_in(
            &db,
            "CREATE FUNCTION bench_vector() RETURNS vector LANGUAGE plpgsql VOLATILE AS $$ \
             DECLARE v vector; k int := floor(random() * 64)::int; BEGIN \
             SELECT l2_normalize(c.v + (SELECT array_agg(((random() - 0.5) * 0.17)::real)::vector(384) FROM generate_series(1, 384))) \
             INTO v FROM bench_centres c WHERE c.id = k; RETURN v; END $$",
        )?;
        let mut baselines = Vec::new();
        // The raw insert: PostgreSQL alone, without the log's queue trigger.
        self.log_queue(&db, false)?;
        for &c in &o.conns {
            baselines.push(self.pgbench(&db, "insert", c, o.seconds)?);
        }
        self.log_queue(&db, true)?;
        self.wait_for_log(&db, Duration::from_secs(600))?;
        for &c in o.conns.iter().filter(|&&c| c <= 16) {
            baselines.push(self.pgbench(&db, "hnsw", c, o.seconds)?);
        }
        self.psql_in(&db, "CHECKPOINT")?;
        report["baselines"] = json!(baselines);

        // The service, mode deferred.
        let mut scenarios = Vec::new();
        if first {
            let noop = self.load(
                &service,
                Scenario {
                    name: "noop c64 (generator ceiling)",
                    conns: 64,
                    rate: None,
                    repeat_share: 1.0,
                    target: "noop",
                    seconds: o.seconds,
                },
            )?;
            report["generator_ceiling"] = noop;
        }
        // Warm-up: the recurring texts get their vectors once.
        self.load(
            &service,
            Scenario {
                name: "warm-up",
                conns: 4,
                rate: None,
                repeat_share: 1.0,
                target: "write",
                seconds: 2.0,
            },
        )?;
        self.wait_for_jobs(&db, Duration::from_secs(120))?;
        for &c in &o.conns {
            scenarios.push(self.load(
                &service,
                Scenario {
                    name: &format!("deferred hot c{c}"),
                    conns: c,
                    rate: None,
                    repeat_share: 1.0,
                    target: "write",
                    seconds: o.seconds,
                },
            )?);
        }
        // The transparency log's cost on the write path: the same load with the log's queue off
        // and on (sequencer running), before any unique text keeps the embedding worker busy; and
        // the integration lag of the last run with the log on. Twelve runs in the order off, on,
        // on, off three times, each after a CHECKPOINT: a steady drift (the table growing, the
        // cache warming) weighs on both sides alike, and consecutive 8-s runs on two cores differ
        // by up to ±15%, now and then one stalls (a checkpoint's or autovacuum's I/O, either
        // side). The ratio is that of the medians, which one stalled run does not move; the ratio
        // of the means is printed beside it, with every run's figure and the CPU per acknowledged
        // write (service and PostgreSQL) of each side.
        let (mut off_runs, mut on_runs): (Vec<Value>, Vec<Value>) = (Vec::new(), Vec::new());
        let mut lag = Value::Null;
        let order = [false, true, true, false].repeat(3);
        for (run, &on) in order.iter().enumerate() {
            self.log_queue(&db, on)?;
            self.wait_for_log(&db, Duration::from_secs(600))?;
            self.psql_in(&db, "CHECKPOINT")?;
            let since = self.psql_in(&db, "SELECT now()")?;
            let result = self.load(
                &service,
                Scenario {
                    name: &format!(
                        "deferred hot c64 log {} #{}",
                        if on { "on" } else { "off" },
                        run + 1
                    ),
                    conns: 64,
                    rate: None,
                    repeat_share: 1.0,
                    target: "write",
                    seconds: o.seconds,
                },
            )?;
            if on {
                self.wait_for_log(&db, Duration::from_secs(600))?;
                if run == order.len() - 2 {
                    lag = self.integration_lag(&db, &since)?;
                }
                on_runs.push(result.clone());
            } else {
                off_runs.push(result.clone());
            }
            scenarios.push(result);
        }
        self.log_queue(&db, true)?;
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let rates = |runs: &[Value]| -> Vec<f64> {
            runs.iter().map(|r| f(&r["records_per_second"])).collect()
        };
        // CPU µs per acknowledged write, service and PostgreSQL, over all the side's runs.
        let cpu_per_write = |runs: &[Value], key: &str| -> f64 {
            let cpu: f64 = runs.iter().map(|r| f(&r[key]) * f(&r["seconds"])).sum();
            let writes: f64 = runs
                .iter()
                .map(|r| f(&r["records_per_second"]) * f(&r["seconds"]))
                .sum();
            1e6 * cpu / writes.max(1.0)
        };
        let (on_rates, off_rates) = (rates(&on_runs), rates(&off_runs));
        let ratio = median(&on_rates) / median(&off_rates);
        let mean_ratio = mean(&on_rates) / mean(&off_rates);
        let cpu = |runs: &[Value]| {
            json!({
                "service_us_per_write": cpu_per_write(runs, "service_cpu_cores"),
                "postgres_us_per_write": cpu_per_write(runs, "postgres_cpu_cores"),
            })
        };
        let (on_cpu, off_cpu) = (cpu(&on_runs), cpu(&off_runs));
        step(&format!(
            "log on / off: {ratio:.3}× by medians ({:.0} vs {:.0} writes/s), {mean_ratio:.3}× by means; CPU per write on {:.0}+{:.0} µs, off {:.0}+{:.0} µs (service+PostgreSQL); integration lag p50 {:.2} s, p99 {:.2} s",
            median(&on_rates),
            median(&off_rates),
            f(&on_cpu["service_us_per_write"]),
            f(&on_cpu["postgres_us_per_write"]),
            f(&off_cpu["service_us_per_write"]),
            f(&off_cpu["postgres_us_per_write"]),
            f(&lag["p50_s"]),
            f(&lag["p99_s"])
        ));
        report["log_write_cost"] = json!({
            "on_over_off": ratio,
            "on_over_off_by_means": mean_ratio,
            "on_records_per_second": on_rates,
            "off_records_per_second": off_rates,
            "on_cpu": on_cpu,
            "off_cpu": off_cpu,
            "integration_lag": lag,
        });
        scenarios.push(self.load(
            &service,
            Scenario {
                name: "deferred hot c64 @5000/s",
                conns: 64,
                rate: Some(5000.0),
                repeat_share: 1.0,
                target: "write",
                seconds: o.seconds,
            },
        )?);
        scenarios.push(self.load(
            &service,
            Scenario {
                name: "deferred hot batch50 c4",
                conns: 4,
                rate: None,
                repeat_share: 1.0,
                target: "batch",
                seconds: o.seconds,
            },
        )?);
        scenarios.push(self.load(
            &service,
            Scenario {
                name: "deferred unique c64",
                conns: 64,
                rate: None,
                repeat_share: 0.0,
                target: "write",
                seconds: o.seconds,
            },
        )?);
        // The worker: drain rate with no writes arriving.
        let before: i64 = self
            .psql_in(
                &db,
                "SELECT count(*) FROM embedding_jobs WHERE done_at IS NULL",
            )?
            .parse()?;
        let (cpu0, _) = process_usage(service.pid());
        let t = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(o.worker_seconds));
        let after: i64 = self
            .psql_in(
                &db,
                "SELECT count(*) FROM embedding_jobs WHERE done_at IS NULL",
            )?
            .parse()?;
        let (cpu1, _) = process_usage(service.pid());
        let secs = t.elapsed().as_secs_f64();
        let worker = json!({
            "jobs_before": before,
            "jobs_after": after,
            "seconds": secs,
            "records_per_second": (before - after) as f64 / secs,
            "service_cpu_cores": (cpu1 - cpu0) / secs,
        });
        step(&format!(
            "worker: {:.1} records embedded and indexed per second",
            worker["records_per_second"].as_f64().unwrap_or(0.0)
        ));
        report["worker"] = worker;
        service.stop()?;
        // The rest of the backlog is not this benchmark's business.
        self.psql_in(&db, "DELETE FROM embedding_jobs")?;

        // The service, mode inline.
        let (service, _) = self.start_service(&db, "inline", &format!("{size}-inline"))?;
        for &c in &o.conns {
            scenarios.push(self.load(
                &service,
                Scenario {
                    name: &format!("inline hot c{c}"),
                    conns: c,
                    rate: None,
                    repeat_share: 1.0,
                    target: "write",
                    seconds: o.seconds,
                },
            )?);
        }
        scenarios.push(self.load(
            &service,
            Scenario {
                name: "inline unique c16",
                conns: 16,
                rate: None,
                repeat_share: 0.0,
                target: "write",
                seconds: o.seconds,
            },
        )?);
        report["scenarios"] = json!(scenarios);
        let (_, rss) = process_usage(service.pid());
        report["inline_service_peak_rss_mib"] = json!(rss);
        report["log_reads"] = self.log_reads(&db)?;
        if size > 0 {
            report["list"] = self.list(&db)?;
            report["storage"] = self.storage(&db)?;
        }
        service.stop()?;
        if size > 0 {
            // One service per ef_search (a per-connection setting); the exact answers are computed
            // once per size and shared by the sweep.
            let exact = self.out.join(format!("exact-{size}.json"));
            let _ = std::fs::remove_file(&exact);
            let mut sweep = Vec::new();
            for &ef in &o.ef {
                step(&format!(
                    "{db}: search latency and recall@10, ef_search {ef}"
                ));
                let (service, model) = self.start_service_with(
                    &db,
                    "inline",
                    &format!("{size}-search-ef{ef}"),
                    &[("DATASTORAGE_SEARCH_EF_SEARCH", ef.to_string())],
                )?;
                let mut search = self.ds_bench(&[
                    "search",
                    "--addr",
                    API,
                    "--db-url",
                    &self.cluster.url(&db),
                    "--model",
                    &model,
                    "--exact-file",
                    &exact.display().to_string(),
                    "--vectors",
                    &o.vectors,
                ])?;
                service.stop()?;
                search["ef_search"] = json!(ef);
                step(&format!(
                    "search ef {ef}: p50 {:.1} ms, p99 {:.1} ms, recall@10 {:.3}",
                    search["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
                    search["latency_ms"]["p99"].as_f64().unwrap_or(0.0),
                    search["recall_at_10"].as_f64().unwrap_or(0.0)
                ));
                sweep.push(search);
            }
            report["search"] = json!(sweep);
            // Last: it deletes the prefilled records.
            report["purge"] = self.purge(&db, size, o)?;
        }
        Ok(report)
    }
}

pub fn bench(root: &Path, args: &[String]) -> Result<()> {
    let o = Options::parse(args)?;
    let model_dir = fetch_model(root)?;
    crate::ensure_local_postgres(root)?;
    step("cargo build --release -p ds-server -p ds-bench");
    run(Command::new("cargo").args(["build", "--release", "-p", "ds-server", "-p", "ds-bench"]))?;
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out)?;
    let cluster = Cluster::start_with(
        root,
        "pg-bench",
        BENCH_PORT,
        true,
        true,
        "-c shared_buffers=2GB -c max_wal_size=8GB -c checkpoint_timeout=15min -c max_parallel_maintenance_workers=2",
    )?;
    let log_key = out.join("log-signing-key");
    let _ = std::fs::remove_file(&log_key);
    let keygen = Command::new(root.join("target/release/datastorage"))
        .args(["log", "keygen", "--out"])
        .arg(&log_key)
        .output()
        .context("datastorage log keygen")?;
    if !keygen.status.success() {
        bail!("datastorage log keygen failed");
    }
    let b = Bench {
        root: root.to_owned(),
        out: out.clone(),
        cluster,
        model_dir,
        bin: root.join("target/release"),
        log_key,
        verifier_key: String::from_utf8_lossy(&keygen.stdout).trim().to_owned(),
        log_off: std::sync::Mutex::new(None),
    };
    let result = (|| -> Result<Value> {
        let machine = machine();
        if o.bodies_only {
            return Ok(json!({"machine": machine, "bodies": b.bodies()?, "sizes": []}));
        }
        step("the bare local model (batched, all cores)");
        let embed = b.ds_bench(&["embed", "--model-dir", &b.model_dir.display().to_string()])?;
        step(
            "how hard the vectors are for an index: the model's embeddings vs the generated shapes",
        );
        let structure = b.ds_bench(&[
            "structure",
            "--model-dir",
            &b.model_dir.display().to_string(),
        ])?;
        let commit = Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(&b.root)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let mut result = json!({
            "commit": commit,
            "machine": machine,
            "options": {"sizes": o.sizes, "seconds": o.seconds, "conns": o.conns, "worker_seconds": o.worker_seconds, "ef_search": o.ef, "vectors": o.vectors},
            "bare_model": embed,
            "vector_structure": structure,
            "sizes": [],
        });
        result["bodies"] = b.bodies()?;
        result["verify_synthetic"] = b.verify_synthetic(o.verify_leaves)?;
        for (i, &size) in o.sizes.iter().enumerate() {
            let report = b.size(size, &o, i == 0)?;
            if let Some(sizes) = result["sizes"].as_array_mut() {
                sizes.push(report);
            }
            // Written after every size: a long run that is stopped keeps what it measured.
            std::fs::write(
                out.join("results.json"),
                serde_json::to_string_pretty(&result)?,
            )?;
            std::fs::write(out.join("summary.txt"), summarize(&result))?;
        }
        Ok(result)
    })();
    b.cluster.stop();
    let result = result?;
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&result)?,
    )?;
    let summary = summarize(&result);
    std::fs::write(out.join("summary.txt"), &summary)?;
    println!("{summary}");
    step(&format!(
        "results: {} and {}",
        out.join("results.json").display(),
        out.join("summary.txt").display()
    ));
    Ok(())
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// The human summary: each figure next to its baseline.
fn summarize(r: &Value) -> String {
    let mut s = String::new();
    for b in r["bodies"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "memory before admission, 200 concurrent 2 MiB bodies, {}: service peak RSS {:.0} MiB (idle {:.0}), statuses {}\n",
            b["label"].as_str().unwrap_or(""),
            f(&b["peak_rss_mib"]),
            f(&b["peak_rss_before_mib"]),
            b["statuses"]
        ));
    }
    let m = &r["machine"];
    s.push_str(&format!(
        "datastorage benchmark @ {} — {} × {}, {:.0} GiB, load at start {}\n",
        r["commit"].as_str().unwrap_or(""),
        m["cpus"],
        m["cpu_model"].as_str().unwrap_or(""),
        f(&m["memory_gib"]),
        m["loadavg_at_start"].as_str().unwrap_or("")
    ));
    if r["bare_model"].is_null() {
        // `--bodies-only`: nothing else was measured.
        return s;
    }
    s.push_str(&format!(
        "bare local model: {:.1} sentences/s\n",
        f(&r["bare_model"]["sentences_per_second"])
    ));
    let v = &r["verify_synthetic"];
    if !v.is_null() {
        s.push_str(&format!(
            "datastorage verify, offline, {} records ({:.0} MiB): {:.1} s = {:.0} records/s (target ≥ 50,000/s); baseline sha256sum of the same bytes {:.1} s\n",
            v["records"],
            f(&v["bytes"]) / (1u64 << 20) as f64,
            f(&v["seconds"]),
            f(&v["records_per_second"]),
            f(&v["sha256sum_seconds"])
        ));
    }
    s.push_str(&format!(
        "pre-filled vectors: {} (local intrinsic dimension / relative contrast, 2,000 vectors: ",
        r["options"]["vectors"].as_str().unwrap_or("")
    ));
    let shapes = ["model", "embedding", "isotropic"].map(|k| {
        let v = &r["vector_structure"][k];
        format!(
            "{k} {:.1} / {:.2}",
            f(&v["local_intrinsic_dimension"]),
            f(&v["relative_contrast"])
        )
    });
    s.push_str(&shapes.join(", "));
    s.push_str(")\n");
    for size in r["sizes"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "\n== {} records pre-filled{} ==\n",
            size["records_prefilled"],
            size.get("hnsw_build_seconds")
                .map(|b| format!(
                    " (COPY {:.0} s, HNSW build {:.0} s)",
                    f(&size["copy_seconds"]),
                    f(b)
                ))
                .unwrap_or_default()
        ));
        if let Some(g) = size.get("generator_ceiling") {
            s.push_str(&format!(
                "load generator ceiling (GET /healthz, c64): {:.0} req/s, p99 {:.1} ms\n",
                f(&g["requests_per_second"]),
                f(&g["latency_ms"]["p99"])
            ));
        }
        let baseline = |script: &str, c: u64| {
            size["baselines"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|b| b["script"] == script && b["clients"] == c)
                .map(|b| f(&b["rows_per_second"]))
        };
        s.push_str("baselines (pgbench, durable commit per row):\n");
        for b in size["baselines"].as_array().into_iter().flatten() {
            s.push_str(&format!(
                "  {:<6} c{:<3} {:>8.0} rows/s  mean {:>6.1} ms\n",
                b["script"].as_str().unwrap_or(""),
                b["clients"],
                f(&b["rows_per_second"]),
                f(&b["latency_avg_ms"])
            ));
        }
        s.push_str(&format!(
            "{:<30} {:>9} {:>8} {:>8} {:>8} {:>8} {:>6} {:>7} {:>7} {:>7} {:>7} {:>9} {:>8}\n",
            "scenario",
            "rec/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "errors",
            "svc cpu",
            "pg cpu",
            "gen cpu",
            "rss MiB",
            "vs raw",
            "WAL B/rec"
        ));
        for sc in size["scenarios"].as_array().into_iter().flatten() {
            let conns = sc["conns"].as_u64().unwrap_or(0);
            let raw = baseline("insert", conns);
            let rate = f(&sc["records_per_second"]);
            s.push_str(&format!(
                "{:<30} {:>9.0} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>6} {:>7.2} {:>7.2} {:>7.2} {:>7.0} {:>9} {:>8.0}\n",
                sc["scenario"].as_str().unwrap_or(""),
                rate,
                f(&sc["latency_ms"]["p50"]),
                f(&sc["latency_ms"]["p95"]),
                f(&sc["latency_ms"]["p99"]),
                f(&sc["latency_ms"]["max"]),
                sc["requests"].as_u64().unwrap_or(0) - sc["ok"].as_u64().unwrap_or(0),
                f(&sc["service_cpu_cores"]),
                f(&sc["postgres_cpu_cores"]),
                f(&sc["generator_cpu_seconds"]) / f(&sc["seconds"]),
                f(&sc["service_peak_rss_mib"]),
                raw.map(|b| format!("{:.2}×", rate / b)).unwrap_or_default(),
                f(&sc["wal_bytes_per_record"])
            ));
        }
        if let Some(p) = size.get("log_prefill") {
            s.push_str(&format!(
                "transparency log: {:.0} pre-filled records appended at {:.0} leaves/s (alongside the HNSW build)\n",
                f(&size["records_prefilled"]),
                f(&p["leaves_per_second"])
            ));
        }
        if let Some(c) = size.get("log_write_cost") {
            let lag = &c["integration_lag"];
            let median_of = |v: &Value| {
                let xs: Vec<f64> = v
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_f64).collect())
                    .unwrap_or_default();
                median(&xs)
            };
            s.push_str(&format!(
                "transparency log on the write path (deferred hot c64, 6 runs each side, off-on-on-off three times): log on / log off = {:.3}× by medians (target ≥ 0.95×), {:.0} vs {:.0} writes/s; {:.3}× by means; CPU per write on {:.0}+{:.0} µs, off {:.0}+{:.0} µs (service+PostgreSQL); integration lag p50 {:.2} s, p99 {:.2} s, max {:.2} s over {:.0} records (target p99 ≤ 2 s)\n",
                f(&c["on_over_off"]),
                median_of(&c["on_records_per_second"]),
                median_of(&c["off_records_per_second"]),
                f(&c["on_over_off_by_means"]),
                f(&c["on_cpu"]["service_us_per_write"]),
                f(&c["on_cpu"]["postgres_us_per_write"]),
                f(&c["off_cpu"]["service_us_per_write"]),
                f(&c["off_cpu"]["postgres_us_per_write"]),
                f(&lag["p50_s"]),
                f(&lag["p99_s"]),
                f(&lag["max_s"]),
                f(&lag["records"])
            ));
        }
        if let Some(l) = size.get("log_reads") {
            let p = &l["inclusion_proofs"];
            let v = &l["verify"];
            s.push_str(&format!(
                "inclusion proof through the API: p50 {:.2} ms, p99 {:.2} ms (target p99 ≤ 10 ms at 1M), {} of {} answered 200; export {:.0} lines/s; verify of it: {:.0} records/s ({} records, sha256sum of the same bytes {:.2} s vs verify {:.2} s)\n",
                f(&p["latency_ms"]["p50"]),
                f(&p["latency_ms"]["p99"]),
                p["ok"],
                p["proofs"],
                f(&l["export"]["lines_per_second"]),
                f(&v["records_per_second"]),
                v["records"],
                f(&v["sha256sum_seconds"]),
                f(&v["seconds"])
            ));
        }
        if let Some(l) = size.get("list").filter(|l| !l.is_null()) {
            s.push_str(&format!(
                "list of records (GET /api/v1/audit/records, page 1 of 100, {} records; target p99 ≤ 20 ms at 1M), through the API vs EXPLAIN ANALYZE of the same statement:\n",
                l["records"]
            ));
            for q in l["queries"].as_array().into_iter().flatten() {
                let e = &q["explain_analyze"];
                s.push_str(&format!(
                    "  {:<27} p50 {:>6.2} ms  p99 {:>6.2} ms  | PostgreSQL {:>6.2} ms, {:>5} buffers{}  ({} records)\n",
                    q["query"].as_str().unwrap_or(""),
                    f(&q["latency_ms"]["p50"]),
                    f(&q["latency_ms"]["p99"]),
                    f(&e["execution_ms"]),
                    e["buffers"],
                    if e["seq_scan"] == true { ", SEQ SCAN" } else { "" },
                    q["records_per_page"]
                ));
            }
            let d = &l["deep_scroll"];
            s.push_str(&format!(
                "  deep scroll, no filter: page {} vs page 1: API {:.2} vs {:.2} ms (mean of 10, {:.2}×); PostgreSQL {:.2} vs {:.2} ms, {} vs {} buffers\n",
                d["pages"],
                f(&d["last_10_pages_mean_ms"]),
                f(&d["first_10_pages_mean_ms"]),
                f(&d["last_over_first"]),
                f(&d["last_page_explain_analyze"]["execution_ms"]),
                f(&d["first_page_explain_analyze"]["execution_ms"]),
                d["last_page_explain_analyze"]["buffers"],
                d["first_page_explain_analyze"]["buffers"]
            ));
        }
        if let Some(st) = size.get("storage").filter(|v| !v.is_null()) {
            let per = st["bytes_per_record"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            s.push_str(&format!(
                "on disk per record ({} records): {}\n",
                st["records"],
                per.iter()
                    .map(|(k, v)| format!("{k} {:.0} B", v.as_f64().unwrap_or(0.0)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let w = &size["worker"];
        let hnsw = baseline("hnsw", 16).or_else(|| baseline("hnsw", 1));
        let model = f(&r["bare_model"]["sentences_per_second"]);
        let slower = hnsw.map(|h| h.min(model)).unwrap_or(model);
        s.push_str(&format!(
            "worker: {:.1} records/s embedded+indexed; baselines: model {:.1}/s, raw HNSW insert {:.0}/s → {:.2}× the slower\n",
            f(&w["records_per_second"]),
            model,
            hnsw.unwrap_or(f64::NAN),
            f(&w["records_per_second"]) / slower
        ));
        for q in size["search"].as_array().into_iter().flatten() {
            s.push_str(&format!(
                "search top-10, ef_search {:>3}: p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms; recall@10 {:.3} (min {:.2}, {} queries); similarity ratio {:.3} (min {:.2}); stored vectors found by their own search {:.3}\n",
                q["ef_search"],
                f(&q["latency_ms"]["p50"]),
                f(&q["latency_ms"]["p95"]),
                f(&q["latency_ms"]["p99"]),
                f(&q["recall_at_10"]),
                f(&q["min_recall"]),
                q["recall_queries"],
                f(&q["similarity_ratio"]),
                f(&q["min_similarity_ratio"]),
                f(&q["self_found"])
            ));
        }
        let p = &size["purge"];
        if !p.is_null() {
            let (during, without) = (&p["during"], &p["without"]);
            let errors =
                |r: &Value| r["requests"].as_u64().unwrap_or(0) - r["ok"].as_u64().unwrap_or(0);
            s.push_str(&format!(
                "retention purge (the service's maintenance task, default pace) of {} expired records: {:.0} s = {:.0} records/s in {:.0} batches, {:.0} MiB of WAL with the writes; writes at {:.0}/s open loop, p99 {:.1} ms during it vs {:.1} ms without = {:.2}× (target ≤ 2×), p50 {:.1} vs {:.1} ms; not acknowledged {} during, {} without\n",
                p["records"],
                f(&p["seconds"]),
                f(&p["records_per_second"]),
                f(&p["batches"]),
                f(&p["wal_bytes"]) / f64::from(1 << 20),
                f(&p["write_rate"]),
                f(&during["latency_ms"]["p99"]),
                f(&without["latency_ms"]["p99"]),
                f(&p["p99_during_over_without"]),
                f(&during["latency_ms"]["p50"]),
                f(&without["latency_ms"]["p50"]),
                errors(during),
                errors(without)
            ));
        }
    }
    s
}

/// The median of `v` (NaN when empty): the mean of the two middle values of an even count.
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
