//! `cargo xtask <command>`: the project's only automation entry point.
//!
//! - `dev`: run the service on the embedded default (local PostgreSQL + pgvector, local model).
//! - `test`: the same set-up, then the whole test suite with nextest, then clean-up.
//! - `ci`: fmt check, clippy `-D warnings`, architecture invariants, `test`, then `conformance`.
//! - `conformance`: the service against its OpenAPI document, judged by schemathesis (from PyPI).
//! - `migrate`: apply pending migrations to `DATABASE_URL` or the dev cluster; `migration new NAME`:
//!   a new migration's files, ordered after the last one.
//! - `fetch-model`, `install-pgvector`: single set-up steps.
//!
//! Every set-up step prints what it does. `DATABASE_URL` (a server that has pgvector) replaces the local
//! cluster; `DATASTORAGE_TEST_DB=docker` makes the tests take PostgreSQL from testcontainers instead.
#![allow(clippy::print_stdout)]

mod bench;
mod conformance;

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The PostgreSQL majors the project runs on (pgvector builds for each).
const PG_MAJORS: [&str; 3] = ["17", "16", "15"];

/// The newest supported PostgreSQL major whose server binaries are installed (15 when none is: the
/// paths then fall back to `$PATH`).
fn pg_major() -> &'static str {
    PG_MAJORS
        .iter()
        .find(|m| Path::new(&format!("/usr/lib/postgresql/{m}/bin/initdb")).exists())
        .copied()
        .unwrap_or("15")
}
const DEV_PORT: u16 = 55432;
const TEST_PORT: u16 = 55433;
/// Crates the domain must never depend on (architecture invariant).
const FORBIDDEN_IN_DOMAIN: [&str; 8] = [
    "actix-web",
    "diesel",
    "diesel-async",
    "kube",
    "reqwest",
    "async-openai",
    "tokio-postgres",
    "candle-core",
];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = project_root();
    std::env::set_current_dir(&root)?;
    match args.first().map(String::as_str) {
        Some("dev") => dev(&root),
        Some("test") => test(&root, &args[1..]),
        Some("ci") => ci(&root),
        Some("conformance") => conformance::conformance(&root),
        Some("architecture") => architecture_checks(),
        Some("bench") => bench::bench(&root, &args[1..]),
        Some("migrate") => migrate(&root),
        Some("migration") => match (args.get(1).map(String::as_str), args.get(2)) {
            (Some("new"), Some(name)) => new_migration(&root, name),
            _ => bail!("usage: cargo xtask migration new NAME"),
        },
        Some("fetch-model") => fetch_model(&root).map(|_| ()),
        Some("install-pgvector") => install_pgvector(&root),
        _ => {
            println!(
                "usage: cargo xtask <command>\n\n\
                 commands:\n  \
                 dev               run the service on 127.0.0.1:8080 (metrics :9090) with a local PostgreSQL + pgvector\n  \
                 test [ARGS]       run the whole test suite (ARGS go to cargo nextest run)\n  \
                 ci                fmt check + clippy -D warnings + architecture checks + test + conformance\n  \
                 architecture      each framework, driver or client only in the crate that adapts it\n  \
                 conformance       the service against its OpenAPI document with schemathesis (pinned, from PyPI)\n  \
                 bench [OPTIONS]   the service against its pgbench baselines (--sizes 0,100k,1M --seconds 10 --conns 1,16,64)\n  \
                 migrate           apply pending migrations to DATABASE_URL, or to the dev cluster (`dev`'s database)\n  \
                 migration new NAME  create migrations/<version>_NAME/{{up,down}}.sql, ordered after the last one\n  \
                 fetch-model       download the local embedding model into target/models/\n  \
                 install-pgvector  install the pgvector extension (root, Debian) if it is missing"
            );
            Ok(())
        }
    }
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn step(msg: &str) {
    println!("==> [xtask] {msg}");
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn fetch_model(root: &Path) -> Result<PathBuf> {
    let dir = root.join("target/models/all-MiniLM-L6-v2");
    run(Command::new("bash")
        .arg(root.join("scripts/fetch-model.sh"))
        .arg(&dir))?;
    Ok(dir)
}

fn install_pgvector(root: &Path) -> Result<()> {
    run(Command::new("bash")
        .arg(root.join("scripts/install-pgvector.sh"))
        .arg(pg_major()))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// Whether the `postgres` system user can enter `dir` (every parent must be searchable).
fn postgres_can_reach(dir: &Path) -> bool {
    let _ = std::fs::create_dir_all(dir);
    Command::new("runuser")
        .args(["-u", "postgres", "--", "test", "-x"])
        .arg(dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A throwaway PostgreSQL cluster under `target/`, on loopback only.
struct Cluster {
    data: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl Cluster {
    fn bin(name: &str) -> PathBuf {
        let p = PathBuf::from(format!("/usr/lib/postgresql/{}/bin/{name}", pg_major()));
        if p.exists() { p } else { PathBuf::from(name) }
    }

    fn cmd(&self, name: &str) -> Command {
        if self.as_postgres {
            // PostgreSQL refuses to run as root: run its programs as the `postgres` system user.
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(Self::bin(name));
            c
        } else {
            Command::new(Self::bin(name))
        }
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Starts the cluster in `data` (created when missing; wiped first when `fresh`).
    fn start(root: &Path, name: &str, port: u16, fresh: bool, durable: bool) -> Result<Cluster> {
        Self::start_with(root, name, port, fresh, durable, "")
    }

    /// [`Cluster::start`] with extra server options (`-c name=value ...`).
    fn start_with(
        root: &Path,
        name: &str,
        port: u16,
        fresh: bool,
        durable: bool,
        extra: &str,
    ) -> Result<Cluster> {
        let as_postgres = is_root();
        let mut data = root.join("target").join(name);
        if as_postgres && !postgres_can_reach(&root.join("target")) {
            // e.g. a checkout under /root (mode 700): the postgres user cannot reach target/.
            data = std::env::temp_dir().join(format!("datastorage-{name}-{port}"));
            step(&format!(
                "the postgres user cannot reach {}/target: using {}",
                root.display(),
                data.display()
            ));
        }
        let cluster = Cluster {
            data,
            port,
            as_postgres,
        };
        if cluster.data.join("postmaster.pid").exists() {
            step(&format!(
                "stopping a cluster left running in {}",
                cluster.data.display()
            ));
            let _ = cluster
                .cmd("pg_ctl")
                .arg("-D")
                .arg(&cluster.data)
                .args(["-m", "immediate", "stop"])
                .status();
        }
        if fresh && cluster.data.exists() {
            std::fs::remove_dir_all(&cluster.data)?;
        }
        if !cluster.data.join("PG_VERSION").exists() {
            std::fs::create_dir_all(&cluster.data)?;
            if cluster.as_postgres {
                run(Command::new("chown")
                    .arg("-R")
                    .arg("postgres:postgres")
                    .arg(&cluster.data))?;
            }
            step(&format!(
                "initdb {} (PostgreSQL {}, trust auth on loopback)",
                cluster.data.display(),
                pg_major()
            ));
            run(cluster
                .cmd("initdb")
                .arg("-D")
                .arg(&cluster.data)
                .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale"])
                .stdout(Stdio::null()))?;
        }
        let mut opts = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c max_connections=200 -c shared_buffers=256MB",
            cluster.data.display()
        );
        if !extra.is_empty() {
            opts.push(' ');
            opts.push_str(extra);
        }
        if !durable {
            // Test data is thrown away: skip the fsyncs that dominate small transactions.
            opts.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        step(&format!(
            "starting PostgreSQL on 127.0.0.1:{port} (log: {}/server.log)",
            cluster.data.display()
        ));
        run(cluster
            .cmd("pg_ctl")
            .arg("-D")
            .arg(&cluster.data)
            .arg("-l")
            .arg(cluster.data.join("server.log"))
            .args(["-o", &opts, "-w", "-t", "60", "start"])
            .stdout(Stdio::null()))?;
        Ok(cluster)
    }

    fn psql(&self, sql: &str) -> Result<()> {
        run(self
            .cmd("psql")
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
            ])
            .args(["-U", "postgres", "-d", "postgres", "-c", sql])
            .stdout(Stdio::null()))
    }

    fn stop(&self) {
        step(&format!("stopping PostgreSQL on 127.0.0.1:{}", self.port));
        let _ = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .status();
    }
}

/// pgvector present (installed when missing, as root on Debian) unless an external database is used.
fn ensure_local_postgres(root: &Path) -> Result<()> {
    let present = || {
        Cluster::bin("initdb").exists() || Command::new("initdb").arg("--version").output().is_ok()
    };
    if !present() {
        // Debian and Ubuntu, as root: the distribution's PostgreSQL server (`postgresql`, whatever
        // major it is, when it is one pgvector and this project support), without a cluster of its
        // own running (ours live under target/).
        if !is_root() || Command::new("apt-get").arg("--version").output().is_err() {
            bail!(
                "PostgreSQL server binaries (15, 16 or 17) are missing: apt-get install postgresql (as root), or set DATABASE_URL"
            );
        }
        step(
            "PostgreSQL server binaries are missing: apt-get install postgresql (the distribution's)",
        );
        run(Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        run(Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "postgresql",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        for m in PG_MAJORS {
            // The package starts a cluster of its own on 5432: ours do not need it.
            let _ = Command::new("pg_ctlcluster")
                .args([m, "main", "stop"])
                .status();
        }
        if !present() {
            bail!(
                "apt-get installed the distribution's postgresql, but no server of a supported major (15, 16, 17) is there: install one of those, or set DATABASE_URL"
            );
        }
        step(&format!("PostgreSQL {} installed", pg_major()));
    }
    install_pgvector(root)
}

/// The login role `cargo xtask dev` runs the service as (a member of `datastorage_runtime`).
const DEV_RUNTIME_ROLE: &str = "datastorage_app";

/// The database `dev` and `migrate` work on: `DATABASE_URL`, or the database `datastorage` of the
/// dev cluster (started, created when missing). The cluster, to stop afterwards, and the owner's URL.
fn dev_database(root: &Path) -> Result<(Option<Cluster>, String)> {
    if let Some(url) = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
        return Ok((None, url));
    }
    ensure_local_postgres(root)?;
    let c = Cluster::start(root, "pg-dev", DEV_PORT, false, true)?;
    if c.psql("CREATE DATABASE datastorage").is_err() {
        step(
            "database `datastorage` already exists: keeping its data (delete target/pg-dev to start empty)",
        );
    }
    let url = c.url("datastorage");
    Ok((Some(c), url))
}

/// `datastorage ARGS`, built and run by cargo (release).
fn datastorage(args: &[&str]) -> Command {
    let mut c = Command::new("cargo");
    c.args([
        "run",
        "--release",
        "-q",
        "-p",
        "ds-server",
        "--bin",
        "datastorage",
        "--",
    ])
    .args(args);
    c
}

/// `cargo xtask migrate`: `datastorage migrate` as the database's owner.
fn migrate(root: &Path) -> Result<()> {
    let (cluster, url) = dev_database(root)?;
    step("applying pending migrations as the database's owner");
    let result = run(datastorage(&["migrate"])
        .env("DATASTORAGE_DATABASE_URL", &url)
        .env("DATASTORAGE_LOG_FORMAT", "text"));
    if let Some(c) = &cluster {
        c.stop();
    }
    result
}

/// `cargo xtask migration new NAME`: `migrations/<version>_NAME/{up,down}.sql`, its version the
/// current UTC time, or one second after the newest migration's when that is later (diesel applies
/// a fresh database's migrations in version order).
fn new_migration(root: &Path, name: &str) -> Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        bail!("{name:?}: a migration's name is lower-case letters, digits and `_`");
    }
    const FORMAT: &str = "%Y-%m-%d-%H%M%S";
    let dir = root.join("migrations");
    let mut versions: Vec<String> = std::fs::read_dir(&dir)?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(|n| n.chars().take(17).collect()))
        .collect();
    versions.sort();
    let now = chrono::Utc::now().naive_utc();
    let version = match versions.last() {
        Some(last) => {
            let last = chrono::NaiveDateTime::parse_from_str(last, FORMAT)
                .with_context(|| format!("the newest migration's version {last:?}"))?;
            now.max(last + chrono::Duration::seconds(1))
        }
        None => now,
    }
    .format(FORMAT)
    .to_string();
    let path = dir.join(format!("{version}_{name}"));
    std::fs::create_dir_all(&path)?;
    std::fs::write(
        path.join("up.sql"),
        format!("-- {name}: what this changes, and why.\n"),
    )?;
    std::fs::write(
        path.join("down.sql"),
        format!(
            "-- Undoes {name}: the exact reverse of up.sql (tests/tests/migrations.rs redoes every migration on a database with records).\n"
        ),
    )?;
    step(&format!("created {}/up.sql and down.sql", path.display()));
    Ok(())
}

fn dev(root: &Path) -> Result<()> {
    let model = fetch_model(root)?;
    let (cluster, owner_url) = dev_database(root)?;
    // Two roles, as in production: migrations as the owner, the service as the runtime role (which may
    // read and append records, never change or delete them). With an external DATABASE_URL the
    // service uses that URL for both.
    step("migrating the database as its owner");
    run(datastorage(&["migrate"])
        .env("DATASTORAGE_DATABASE_URL", &owner_url)
        .env("DATASTORAGE_LOG_FORMAT", "text"))?;
    let url = match &cluster {
        Some(c) => {
            c.psql(&format!(
                "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{DEV_RUNTIME_ROLE}') THEN \
                 CREATE ROLE {DEV_RUNTIME_ROLE} LOGIN IN ROLE datastorage_runtime; END IF; END $$"
            ))?;
            format!(
                "postgres://{DEV_RUNTIME_ROLE}@127.0.0.1:{}/datastorage",
                c.port
            )
        }
        None => owner_url.clone(),
    };
    // The transparency log's signing key: made once, kept with the dev data.
    let key = root.join("target").join("dev-log-signing-key");
    if !key.exists() {
        step(&format!(
            "making the checkpoint signing key {} (its verifier key is printed once)",
            key.display()
        ));
        run(datastorage(&["log", "keygen", "--out"]).arg(&key))?;
    }
    // Ctrl-C reaches the whole process group: the server shuts down by itself, we only wait and clean up.
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")?;
    step(
        "building and starting the service (release): API http://127.0.0.1:8080, metrics http://127.0.0.1:9090/metrics",
    );
    let status: Result<ExitStatus> = datastorage(&["serve"])
        .env("DATASTORAGE_DATABASE_URL", &url)
        .env("DATASTORAGE_MIGRATE_ON_START", "false")
        .env("DATASTORAGE_LOG_SIGNING_KEY_FILE", &key)
        .env("DATASTORAGE_EMBEDDING_LOCAL_MODEL_DIR", &model)
        .env(
            "DATASTORAGE_LOG_FORMAT",
            std::env::var("DATASTORAGE_LOG_FORMAT").unwrap_or_else(|_| "text".into()),
        )
        .status()
        .context("starting the service");
    if let Some(c) = &cluster {
        c.stop();
    }
    let status = status?;
    if !status.success() && !interrupted.load(Ordering::SeqCst) {
        bail!("the service exited with {status}");
    }
    Ok(())
}

fn test(root: &Path, extra: &[String]) -> Result<()> {
    let model = fetch_model(root)?;
    let docker = std::env::var("DATASTORAGE_TEST_DB").is_ok_and(|v| v == "docker");
    let external = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty());
    if docker
        && std::env::var_os("DOCKER_HOST").is_none()
        && !Path::new("/var/run/docker.sock").exists()
    {
        bail!(
            "DATASTORAGE_TEST_DB=docker, but no Docker engine is reachable (no /var/run/docker.sock, no DOCKER_HOST): \
             unset DATASTORAGE_TEST_DB to test against a local PostgreSQL cluster"
        );
    }
    let cluster = if docker || external.is_some() {
        None
    } else {
        ensure_local_postgres(root)?;
        Some(Cluster::start(root, "pg-test", TEST_PORT, true, false)?)
    };
    let mut cmd = Command::new("cargo");
    cmd.args([
        "nextest",
        "run",
        "--workspace",
        "--cargo-profile",
        "ci",
        "--no-fail-fast",
    ])
    .args(extra)
    .env("DATASTORAGE_EMBEDDING_LOCAL_MODEL_DIR", &model);
    // The tests' temporary files (exports, keys, configuration files, clusters of their own) go to a
    // directory of this run, removed afterwards, so that runs leave nothing behind in /tmp.
    let scratch = std::env::temp_dir().join(format!("datastorage-tests-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    // Like /tmp: the postgres user of the tests' own clusters writes there too.
    run(Command::new("chmod").arg("1777").arg(&scratch))?;
    cmd.env("TMPDIR", &scratch);
    if docker {
        step(
            "DATASTORAGE_TEST_DB=docker: tests take PostgreSQL from a pgvector container (needs a Docker engine)",
        );
        cmd.args(["--features", "ds-tests/docker"]);
    }
    if let Some(url) = external.or_else(|| cluster.as_ref().map(|c| c.url("postgres"))) {
        cmd.env("DATABASE_URL", url);
    }
    step(
        "cargo nextest run --workspace --cargo-profile ci (optimised: the embedding model is 50x slower unoptimised)",
    );
    let result = run(&mut cmd);
    if let Some(c) = &cluster {
        c.stop();
        let _ = std::fs::remove_dir_all(&c.data);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn ci(root: &Path) -> Result<()> {
    step("cargo fmt --all --check");
    run(Command::new("cargo").args(["fmt", "--all", "--check"]))?;
    step("cargo clippy --workspace --all-targets -- -D warnings");
    run(Command::new("cargo").args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    architecture_checks()?;
    test(root, &[])?;
    conformance::conformance(root)
}

/// Architecture invariants that a build cannot see.
/// Which workspace crates may depend directly on each framework, driver or client: everything else
/// reaches it through a port. (`ds-tests` drives the real parts from outside, so it may use them.)
const OWNERS: [(&str, &[&str]); 8] = [
    ("diesel", &["ds-store-pg", "ds-tests"]),
    ("diesel-async", &["ds-store-pg", "ds-tests"]),
    ("tokio-postgres", &["ds-store-pg"]),
    ("actix-web", &["ds-http", "ds-server", "ds-tests"]),
    ("kube", &["ds-auth-kube"]),
    ("async-openai", &["ds-embed-openai"]),
    ("reqwest", &["ds-embed-openai", "ds-server", "ds-tests"]),
    ("candle-core", &["ds-embed-local"]),
];

/// The workspace's library crates, from `cargo metadata`.
fn library_crates() -> Result<Vec<String>> {
    let out = Command::new("cargo")
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("reading cargo metadata")?;
    let mut libs = Vec::new();
    for package in meta["packages"].as_array().into_iter().flatten() {
        let is_lib = package["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| {
                t["kind"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|k| k == "lib")
            });
        if is_lib && let Some(name) = package["name"].as_str() {
            libs.push(name.to_owned());
        }
    }
    if libs.len() < 2 {
        bail!("cargo metadata listed {} library crate(s)", libs.len());
    }
    Ok(libs)
}

/// The names of `member`'s normal dependencies, all of them or (`direct`) the first level only.
/// Fails closed: an error of `cargo tree`, or an answer that does not start with `member`, is an error,
/// never an empty list.
fn dependencies(member: &str, direct: bool) -> Result<Vec<String>> {
    let mut args = vec!["tree", "-p", member, "-e", "normal", "--prefix", "none"];
    if direct {
        args.extend(["--depth", "1"]);
    }
    let out = Command::new("cargo")
        .args(&args)
        .output()
        .context("running cargo tree")?;
    let printed = String::from_utf8_lossy(&out.stdout);
    let mut names = printed
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned));
    if !out.status.success() || names.next().as_deref() != Some(member) {
        bail!(
            "cargo tree -p {member} did not list {member}'s dependencies: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(names.collect())
}

fn architecture_checks() -> Result<()> {
    step("architecture: ds-domain depends on no framework, driver or client");
    let domain = dependencies("ds-domain", false)?;
    for krate in FORBIDDEN_IN_DOMAIN {
        if domain.iter().any(|d| d == krate) {
            bail!("ds-domain depends on {krate} (cargo tree -p ds-domain -e normal -i {krate})");
        }
    }
    let libs = library_crates()?;
    step(&format!(
        "architecture: each framework, driver or client only in its adapter ({} library crates)",
        libs.len()
    ));
    for member in &libs {
        let direct = dependencies(member, true)?;
        for (krate, owners) in OWNERS {
            if !owners.contains(&member.as_str()) && direct.iter().any(|d| d == krate) {
                bail!("{member} depends directly on {krate}, which belongs to {owners:?}");
            }
        }
    }
    Ok(())
}
