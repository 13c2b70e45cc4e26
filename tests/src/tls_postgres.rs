//! A PostgreSQL cluster of one test's own with TLS on (`ssl = on`), its server certificate (for
//! 127.0.0.1 only, not `localhost`) signed by a CA generated here: for the tests of `sslmode`, and for
//! tests that restart or stop PostgreSQL under load (a cluster no other test shares).
//!
//! Started from the machine's PostgreSQL server binaries (the ones `cargo xtask` uses, pgvector
//! included), as the `postgres` system user when the tests run as root (PostgreSQL refuses root).

use anyhow::{Context, Result, bail};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use std::path::PathBuf;
use std::process::{Command, Stdio};

pub struct TlsPostgres {
    pub port: u16,
    /// The CA that signed the server's certificate (PEM).
    pub ca: PathBuf,
    /// A CA that signed nothing of this server's (PEM).
    pub other_ca: PathBuf,
    /// The test's directory (CA files, server log) and the cluster's data directory in it.
    dir: PathBuf,
    data: PathBuf,
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

fn ca(name: &str) -> Result<(CertificateParams, KeyPair, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let pem = params.self_signed(&key)?.pem();
    Ok((params, key, pem))
}

impl TlsPostgres {
    fn cmd(&self, name: &str) -> Command {
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin(name));
            c
        } else {
            Command::new(bin(name))
        }
    }

    fn run(&self, cmd: &mut Command) -> Result<()> {
        let out = cmd
            .stdout(Stdio::null())
            .output()
            .with_context(|| format!("{cmd:?}"))?;
        if !out.status.success() {
            bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    pub fn start() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("ds-tls-pg-{}", uuid::Uuid::new_v4().simple()));
        let data = dir.join("data");
        std::fs::create_dir_all(&data)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let pg = TlsPostgres {
            port,
            ca: dir.join("ca.pem"),
            other_ca: dir.join("other-ca.pem"),
            data: data.clone(),
            dir,
            as_postgres: is_root(),
        };
        let (ca_params, ca_key, ca_pem) = ca("datastorage-test-ca")?;
        std::fs::write(&pg.ca, ca_pem)?;
        std::fs::write(&pg.other_ca, ca("someone-else")?.2)?;
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let leaf_key = KeyPair::generate()?;
        let mut leaf = CertificateParams::new(Vec::<String>::new())?;
        leaf.distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        leaf.subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        let cert = leaf.signed_by(&leaf_key, &issuer)?;
        if pg.as_postgres {
            pg.run(
                Command::new("chown")
                    .arg("-R")
                    .arg("postgres:postgres")
                    .arg(&pg.dir),
            )?;
        }
        pg.run(pg.cmd("initdb").arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
        ]))?;
        let crt = data.join("server.crt");
        let key = data.join("server.key");
        std::fs::write(&crt, cert.pem())?;
        std::fs::write(&key, leaf_key.serialize_pem())?;
        if pg.as_postgres {
            pg.run(
                Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&crt)
                    .arg(&key),
            )?;
        }
        pg.run(Command::new("chmod").arg("600").arg(&key))?;
        // `ssl = on` in the file, not on the command line, so that `ALTER SYSTEM` can turn it off.
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))?;
        std::io::Write::write_all(&mut conf, b"\nssl = on\n")?;
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off",
            data.display()
        );
        pg.run(
            pg.cmd("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(pg.dir.join("server.log"))
                .args(["-o", &opts, "-w", "-t", "60", "start"]),
        )?;
        Ok(pg)
    }

    /// `postgres://postgres@{host}:{port}/{db}?{params}`.
    pub fn url(&self, host: &str, db: &str, params: &str) -> String {
        format!("postgres://postgres@{host}:{}/{db}?{params}", self.port)
    }

    /// Turns the server's TLS on or off (`ssl` is reloaded without a restart).
    pub fn set_ssl(&self, on: bool) -> Result<()> {
        let value = if on { "on" } else { "off" };
        self.run(self.cmd("psql").args([
            "-X",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            &format!("ALTER SYSTEM SET ssl = {value}"),
            "-c",
            "SELECT pg_reload_conf()",
        ]))
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
}

impl Drop for TlsPostgres {
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
