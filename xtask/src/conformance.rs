//! `cargo xtask conformance`: the service against its own OpenAPI document, judged by schemathesis (a
//! property-based API tester that nobody here wrote), with every check it has.
//!
//! The run is the service as deployed: a fresh PostgreSQL + pgvector, the local model, Kubernetes
//! authentication against the tests' fake API server (a real HTTPS server speaking TokenReview and
//! SubjectAccessReview). Schemathesis is installed from PyPI at a pinned version into
//! `target/conformance/venv`, like the model; the seed and the number of cases are fixed, so a run is
//! repeatable. Rate limits are off: one client sends everything, and a 429 would only hide a case.
//! `conformance/hooks.py` holds the rules a JSON Schema cannot state (see there).

use super::{Cluster, ensure_local_postgres, fetch_model, is_root, run, step};
use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// The schemathesis release the run is judged by.
const SCHEMATHESIS_VERSION: &str = "4.32.5";
/// Fixed, so that a run is repeatable.
const SEED: &str = "20261201";
/// Cases per operation and phase.
const MAX_EXAMPLES: &str = "100";
const PORT: u16 = 55435;
/// The token the fake API server knows (tests/src/bin/fake-kube.rs).
const TOKEN: &str = "conformance-token";

/// A child process stopped (SIGTERM, then waited for) when dropped.
struct Process {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Drop for Process {
    fn drop(&mut self) {
        // Closing its standard input stops the fake API server; SIGTERM stops the service.
        self.stdin.take();
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

pub fn conformance(root: &Path) -> Result<()> {
    let dir = root.join("target/conformance");
    std::fs::create_dir_all(&dir)?;
    let schemathesis = install_schemathesis(&dir)?;
    let model = fetch_model(root)?;
    ensure_local_postgres(root)?;

    step("cargo build --profile ci: the service, and the fake Kubernetes API server of the tests");
    run(Command::new("cargo").args([
        "build",
        "--profile",
        "ci",
        "-p",
        "ds-server",
        "--bin",
        "datastorage",
        "-p",
        "ds-tests",
        "--bin",
        "fake-kube",
    ]))?;
    let bin = root.join("target/ci");

    let cluster = Cluster::start(root, "pg-conformance", PORT, true, false)?;
    let result = with_cluster(root, &dir, &bin, &model, &schemathesis, &cluster);
    cluster.stop();
    let _ = std::fs::remove_dir_all(&cluster.data);
    result
}

fn with_cluster(
    root: &Path,
    dir: &Path,
    bin: &Path,
    model: &Path,
    schemathesis: &Path,
    cluster: &Cluster,
) -> Result<()> {
    cluster.psql("CREATE DATABASE datastorage")?;
    let key = dir.join("signing-key");
    let _ = std::fs::remove_file(&key);
    run(Command::new(bin.join("datastorage"))
        .args(["log", "keygen", "--out"])
        .arg(&key)
        .stdout(Stdio::null()))?;

    step("starting the fake Kubernetes API server");
    let mut kube = Command::new(bin.join("fake-kube"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting fake-kube")?;
    let stdin = kube.stdin.take();
    let stdout = kube.stdout.take().context("fake-kube's stdout")?;
    let kube = Process { child: kube, stdin };
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let Some(kubeconfig) = line.trim().strip_prefix("kubeconfig ").map(PathBuf::from) else {
        bail!("fake-kube did not name its kubeconfig (printed {line:?})");
    };

    let api = free_addr()?;
    let metrics = free_addr()?;
    let log_path = dir.join("service.log");
    step(&format!(
        "starting the service on http://{api} (Kubernetes authentication; log: {})",
        log_path.display()
    ));
    let log = std::fs::File::create(&log_path)?;
    let service = Command::new(bin.join("datastorage"))
        .arg("serve")
        .env("DATASTORAGE_DATABASE_URL", cluster.url("datastorage"))
        .env("DATASTORAGE_MIGRATE_ON_START", "true")
        .env("DATASTORAGE_HTTP_ADDR", &api)
        .env("DATASTORAGE_METRICS_ADDR", &metrics)
        .env("DATASTORAGE_LOG_SIGNING_KEY_FILE", &key)
        .env("DATASTORAGE_EMBEDDING_LOCAL_MODEL_DIR", model)
        .env("DATASTORAGE_AUTH_MODE", "kubernetes")
        .env("DATASTORAGE_AUTH_KUBECONFIG", &kubeconfig)
        .env("DATASTORAGE_RATE_LIMIT_WRITES_PER_SECOND", "0")
        .env("DATASTORAGE_RATE_LIMIT_SEARCHES_PER_SECOND", "0")
        .env("DATASTORAGE_AUTH_FAILURES_PER_MINUTE", "0")
        .env("DATASTORAGE_LOG_FORMAT", "json")
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the service")?;
    let mut service = Process {
        child: service,
        stdin: None,
    };
    wait_ready(&api, &mut service.child)?;

    step(&format!(
        "schemathesis {SCHEMATHESIS_VERSION}: every check, {MAX_EXAMPLES} cases per operation and phase, seed {SEED}"
    ));
    let report = dir.join("report");
    let status = Command::new(schemathesis)
        .arg("run")
        .arg(format!("http://{api}/api/v1/openapi.json"))
        .args(["--checks", "all"])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--seed", SEED])
        .args(["--workers", "2"])
        .args(["--suppress-health-check", "all"])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--report", "junit", "--report-dir"])
        .arg(&report)
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONPATH", root.join("conformance"))
        .env("NO_COLOR", "1")
        // Its cache (replayed crashes) stays under target/.
        .current_dir(dir)
        .status()
        .context("running schemathesis")?;
    drop(service);
    drop(kube);
    if !status.success() {
        bail!(
            "schemathesis found failures ({status}); the service's log is {}",
            log_path.display()
        );
    }
    Ok(())
}

/// `target/conformance/venv/bin/schemathesis` at [`SCHEMATHESIS_VERSION`], installed when missing.
fn install_schemathesis(dir: &Path) -> Result<PathBuf> {
    let venv = dir.join("venv");
    let bin = venv.join("bin/schemathesis");
    let installed = Command::new(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(SCHEMATHESIS_VERSION));
    if installed {
        return Ok(bin);
    }
    step(&format!("python3 -m venv {}", venv.display()));
    let made = Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success());
    if !made {
        if !is_root() || Command::new("apt-get").arg("--version").output().is_err() {
            bail!("python3 with its venv module is needed (Debian: apt-get install python3-venv)");
        }
        step("apt-get install python3-venv (python3's venv module is missing)");
        run(Command::new("apt-get").args(["update", "-q"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "python3-venv", "python3-pip"])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        run(Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv))?;
    }
    step(&format!(
        "pip install schemathesis=={SCHEMATHESIS_VERSION} (from PyPI)"
    ));
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .arg(format!("schemathesis=={SCHEMATHESIS_VERSION}")))?;
    Ok(bin)
}

/// A loopback address no one listens on now.
fn free_addr() -> Result<String> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.to_string())
}

/// Until `GET /readyz` answers 200 (at most 120 s, failing early when the service exits).
fn wait_ready(addr: &str, child: &mut Child) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(120) {
        if let Some(status) = child.try_wait()? {
            bail!("the service exited ({status}) before it was ready");
        }
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = write!(s, "GET /readyz HTTP/1.0\r\nHost: {addr}\r\n\r\n");
            let mut head = [0u8; 12];
            if s.read_exact(&mut head).is_ok() && head.ends_with(b"200") {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("the service was not ready within 120 s")
}
