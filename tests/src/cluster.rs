//! A PostgreSQL cluster of one test's own, from the machine's PostgreSQL server binaries (the ones
//! `cargo xtask` uses, pgvector included), run as the `postgres` system user when the tests run as
//! root (PostgreSQL refuses root): for tests that restart, stop or replicate PostgreSQL (a cluster no
//! other test shares). Stopped (`-m immediate`) and removed when dropped.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct Cluster {
    pub port: u16,
    /// The test's directory (server log, other files) and the cluster's data directory in it.
    pub dir: PathBuf,
    pub data: PathBuf,
    as_postgres: bool,
}

fn bin(name: &str) -> PathBuf {
    for major in ["15", "16", "17", "14"] {
        let p = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin/{name}"));
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Cluster {
    /// A new directory `ds-{kind}-…` in the temporary directory, owned by whoever runs PostgreSQL.
    fn new_dir(kind: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("ds-{kind}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let cluster = Cluster {
            port: free_port()?,
            data: dir.join("data"),
            dir,
            as_postgres: is_root(),
        };
        cluster.own(&cluster.dir)?;
        Ok(cluster)
    }

    /// `initdb` (superuser `postgres`, trust, UTF-8): a new cluster, not started.
    pub fn init(kind: &str) -> Result<Self> {
        let c = Self::new_dir(kind)?;
        c.run(c.cmd("initdb").arg("-D").arg(&c.data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
        ]))?;
        Ok(c)
    }

    /// A streaming replica of `primary` (running): `pg_basebackup -R` (which writes
    /// `standby.signal` and the connection to the primary), not started.
    pub fn replica_of(primary: &Cluster) -> Result<Self> {
        let c = Self::new_dir("replica")?;
        c.run(c.cmd("pg_basebackup").arg("-D").arg(&c.data).args([
            "-R",
            "-X",
            "stream",
            "-h",
            "127.0.0.1",
            "-p",
            &primary.port.to_string(),
            "-U",
            "postgres",
        ]))?;
        Ok(c)
    }

    /// A command of the PostgreSQL binaries, as the user that runs the cluster.
    pub fn cmd(&self, name: &str) -> Command {
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin(name));
            c
        } else {
            Command::new(bin(name))
        }
    }

    /// Gives `path` to the user that runs the cluster.
    pub fn own(&self, path: &Path) -> Result<()> {
        if self.as_postgres {
            self.run(
                Command::new("chown")
                    .arg("-R")
                    .arg("postgres:postgres")
                    .arg(path),
            )?;
        }
        Ok(())
    }

    pub fn run(&self, cmd: &mut Command) -> Result<()> {
        let out = cmd
            .stdout(Stdio::null())
            .output()
            .with_context(|| format!("{cmd:?}"))?;
        if !out.status.success() {
            bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Appends settings to `postgresql.conf`.
    pub fn configure(&self, lines: &str) -> Result<()> {
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))?;
        std::io::Write::write_all(&mut conf, format!("\n{lines}\n").as_bytes())?;
        Ok(())
    }

    /// `pg_ctl start` on 127.0.0.1 and its own port, waiting until it accepts connections.
    pub fn start(&self) -> Result<()> {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off",
            self.port,
            self.data.display()
        );
        self.run(
            self.cmd("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(self.dir.join("server.log"))
                .args(["-o", &opts, "-w", "-t", "60", "start"]),
        )
    }

    /// `pg_ctl stop -m <mode>`.
    pub fn stop(&self, mode: &str) -> Result<()> {
        self.run(
            self.cmd("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-m", mode, "-w", "-t", "60", "stop"]),
        )
    }

    /// `pg_ctl restart -m <mode>` (`fast`: sessions terminated with 57P01; `immediate`: the server
    /// killed, crash recovery at start), waiting until it accepts connections again.
    pub fn restart(&self, mode: &str) -> Result<()> {
        self.run(
            self.cmd("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-m", mode, "-w", "-t", "60", "restart"]),
        )
    }

    /// Runs SQL with `psql` as `postgres` on database `db`; its output, unaligned, tuples only.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let out = self
            .cmd("psql")
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!("psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// `postgres://postgres@{host}:{port}/{db}?{params}`.
    pub fn url(&self, host: &str, db: &str, params: &str) -> String {
        format!("postgres://postgres@{host}:{}/{db}?{params}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
