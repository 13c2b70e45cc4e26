//! `datastorage`: the audit-trail store of the Kubernaut platform.

// A command line: `config check` and `config keys` print their answer on stdout (logs go through tracing).
#![allow(clippy::print_stdout)]

use clap::{Parser, Subcommand};
use ds_server::config::{Config, FileValues, env_value, keys};
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: the request path allocates many small, short-lived objects
/// (JSON values, strings, futures) across threads; see docs/performance.md for the measured effect.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "datastorage",
    version,
    about = "The audit-trail store of the Kubernaut platform",
    long_about = "The audit-trail store of the Kubernaut platform: validates, sanitizes, embeds and stores \
the audit records of Kubernaut's components in PostgreSQL + pgvector.\n\n\
Configuration: a TOML file (--config) overlaid by DATASTORAGE_* environment variables; \
`datastorage config keys` lists every key (docs/configuration.md)."
)]
struct Cli {
    /// The configuration file (TOML); environment variables override its values.
    #[arg(long, short = 'c', global = true, env = "DATASTORAGE_CONFIG_FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API and probes (8080) and the metrics (9090) until SIGTERM; the default.
    Serve,
    /// Apply pending database migrations (under an advisory lock), then exit.
    Migrate,
    /// After a change of embedding model: queue every record without a vector of the configured model
    /// for the embedding workers of the running replicas, then exit.
    Reembed {
        /// Records per transaction.
        #[arg(long, default_value_t = 500)]
        page: usize,
    },
    /// Work with the configuration without starting the service.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The embedding jobs: list them, re-queue parked ones.
    #[command(subcommand)]
    Jobs(JobsCommand),
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Open and parked jobs, newest first: digest, state, attempts, next attempt, model, last error,
    /// the text's beginning.
    List {
        /// Parked jobs only.
        #[arg(long)]
        parked: bool,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Re-queue parked jobs: those given by digest, or all with `--all` (attempts back to 0, due now).
    Retry {
        /// Every parked job.
        #[arg(long, conflicts_with = "digests")]
        all: bool,
        /// Digests (hex) as `jobs list` shows them.
        digests: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration (file and environment) and print the effective values; exit 2 with
    /// the key and the reason when it is invalid.
    Check,
    /// List every key: file key, environment variable, default, meaning.
    Keys {
        /// As the Markdown table of docs/configuration.md.
        #[arg(long)]
        markdown: bool,
    },
}

/// The effective configuration, one `file key = value` line per key that has a value; secrets are
/// replaced by `<set>`.
fn effective(file: &FileValues) -> String {
    let mut out = String::new();
    for k in keys::KEYS {
        let value = env_value(k.env)
            .map(|v| (v, "environment"))
            .or_else(|| file.values.get(k.env).map(|v| (v.clone(), "file")));
        if let Some((v, from)) = value {
            let shown = if k.secret { "<set>".to_owned() } else { v };
            out.push_str(&format!(
                "{} = {shown:?}  # {}, from the {from}\n",
                k.file, k.env
            ));
        }
    }
    out
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::Config(ConfigCommand::Keys { markdown }) = command {
        if markdown {
            print!("{}", keys::markdown());
        } else {
            for k in keys::KEYS {
                println!("{:<42} {:<45} {}", k.file, k.env, k.meaning);
            }
        }
        return ExitCode::SUCCESS;
    }
    // The file is read once: for the configuration and for `config check`'s listing.
    let loaded = FileValues::load(cli.config.as_deref())
        .and_then(|file| Config::from_sources(&env_value, &file).map(|c| (c, file)));
    let (config, file) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("datastorage: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if let Command::Config(ConfigCommand::Check) = command {
        print!("{}", effective(&file));
        println!("configuration OK");
        return ExitCode::SUCCESS;
    }
    ds_server::telemetry::init_logging(&config, std::io::stdout);
    // Before any HTTP client exists: the process's one TLS stack (rustls + ring).
    ds_embed_openai::install_tls_provider();
    let result = match command {
        Command::Migrate => ds_server::migrate(&config.database_url)
            .await
            .map(|applied| tracing::info!(applied = ?applied, "migrations applied")),
        Command::Jobs(JobsCommand::List { parked, limit }) => {
            ds_server::jobs_list(&config, parked, limit)
                .await
                .map(|jobs| {
                    for j in &jobs {
                        println!(
                            "{} {:<6} attempts={} next={} model={} error={:?} text={:?}",
                            hex::encode(j.digest),
                            j.state,
                            j.attempts,
                            j.next_attempt_at,
                            j.model,
                            j.last_error.as_deref().unwrap_or(""),
                            j.text
                        );
                    }
                    println!("{} job(s)", jobs.len());
                })
        }
        Command::Jobs(JobsCommand::Retry { all, digests }) => {
            if !all && digests.is_empty() {
                eprintln!("datastorage jobs retry: give the digests to re-queue, or --all");
                return ExitCode::from(2);
            }
            let chosen = (!all).then_some(digests.as_slice());
            ds_server::jobs_retry(&config, chosen).await.map(|n| {
                println!("{n} parked job(s) re-queued");
            })
        }
        Command::Reembed { page } => ds_server::reembed(config, page).await.map(|n| {
            tracing::info!(
                records = n,
                "re-embedding queued; the embedding workers embed them"
            )
        }),
        _ => ds_server::serve(config).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "datastorage stopped on an error");
            ExitCode::FAILURE
        }
    }
}
