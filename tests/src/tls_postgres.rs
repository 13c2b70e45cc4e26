//! A PostgreSQL cluster of one test's own ([`Cluster`]) with TLS on (`ssl = on`), its server
//! certificate (for 127.0.0.1 only, not `localhost`) signed by a CA generated here: for the tests of
//! `sslmode`, and for tests that restart or stop PostgreSQL under load.

use crate::cluster::Cluster;
use anyhow::Result;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use std::path::PathBuf;
use std::process::Command;

pub struct TlsPostgres {
    pub port: u16,
    /// The CA that signed the server's certificate (PEM).
    pub ca: PathBuf,
    /// A CA that signed nothing of this server's (PEM).
    pub other_ca: PathBuf,
    cluster: Cluster,
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
    pub fn start() -> Result<Self> {
        let cluster = Cluster::init("tls-pg")?;
        let pg = TlsPostgres {
            port: cluster.port,
            ca: cluster.dir.join("ca.pem"),
            other_ca: cluster.dir.join("other-ca.pem"),
            cluster,
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
        let data = &pg.cluster.data;
        let crt = data.join("server.crt");
        let key = data.join("server.key");
        std::fs::write(&crt, cert.pem())?;
        std::fs::write(&key, leaf_key.serialize_pem())?;
        pg.cluster.own(&crt)?;
        pg.cluster.own(&key)?;
        pg.cluster.run(Command::new("chmod").arg("600").arg(&key))?;
        // `ssl = on` in the file, not on the command line, so that `ALTER SYSTEM` can turn it off.
        pg.cluster.configure("ssl = on")?;
        pg.cluster.start()?;
        Ok(pg)
    }

    /// `postgres://postgres@{host}:{port}/{db}?{params}`.
    pub fn url(&self, host: &str, db: &str, params: &str) -> String {
        self.cluster.url(host, db, params)
    }

    /// Turns the server's TLS on or off (`ssl` is reloaded without a restart).
    pub fn set_ssl(&self, on: bool) -> Result<()> {
        let value = if on { "on" } else { "off" };
        self.cluster
            .psql("postgres", &format!("ALTER SYSTEM SET ssl = {value}"))?;
        self.cluster.psql("postgres", "SELECT pg_reload_conf()")?;
        Ok(())
    }

    /// `pg_ctl restart -m <mode>` (`fast`: sessions terminated with 57P01; `immediate`: the server
    /// killed, crash recovery at start), waiting until it accepts connections again.
    pub fn restart(&self, mode: &str) -> Result<()> {
        self.cluster.restart(mode)
    }
}
