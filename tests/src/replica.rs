//! A replica of the service in a process of its own (the `replica` binary of this package), for
//! tests that kill one for real: `kill -9` ends it with its connections, as a crashed pod would.

use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running replica; killed (SIGKILL) when dropped.
pub struct Replica {
    child: Child,
    /// Its API's address.
    pub addr: SocketAddr,
    /// The `application_name` its database connections carry (`pg_stat_activity` tells them apart).
    pub name: String,
}

/// `url` with `application_name=name` added to its query.
pub fn with_application_name(url: &str, name: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}application_name={name}")
}

impl Replica {
    /// Starts `bin` (pass `env!("CARGO_BIN_EXE_replica")`) with exactly the variables `env` over a
    /// clean environment, its connections named `name`; returns once it is ready, its address read
    /// from its `listening` log line.
    pub async fn start(bin: &str, name: &str, env: &HashMap<String, String>) -> Result<Replica> {
        let mut env = env.clone();
        let url = env
            .get("DATASTORAGE_DATABASE_URL")
            .context("the replica's environment has no database URL")?;
        let url = with_application_name(url, name);
        env.insert("DATASTORAGE_DATABASE_URL".into(), url);
        env.insert("DATASTORAGE_LOG_FORMAT".into(), "json".into());
        let mut child = Command::new(bin)
            .env_clear()
            .envs(&env)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {bin}"))?;
        let stdout = child.stdout.take().context("the replica's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let Some(line) = lines.next_line().await? else {
                bail!("replica {name} ended before it listened");
            };
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if event["fields"]["message"] == "listening" {
                let addr = event["fields"]["http_addr"]
                    .as_str()
                    .context("the listening line names no http_addr")?;
                break addr.parse()?;
            }
        };
        // Keep reading its logs so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        // It listens before its start-up ends: ready once `/readyz` says so.
        let client = crate::http_client();
        crate::until(&format!("replica {name} is ready"), || {
            let client = client.clone();
            async move {
                client
                    .get(format!("http://{addr}/readyz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            }
        })
        .await;
        Ok(Replica {
            child,
            addr,
            name: name.to_owned(),
        })
    }

    /// `kill -9`, and waits until the process is gone.
    pub async fn kill(&mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}
