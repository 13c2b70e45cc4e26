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
    /// for the embedding workers of the running replicas, then exit. Records keep their vector of the
    /// earlier model, searchable by replicas still running it, until `reembed --finish`.
    Reembed {
        /// Records per transaction.
        #[arg(long, default_value_t = 500)]
        page: usize,
        /// The switch, once every replica runs the configured model: queue what is left, then drop
        /// the earlier models' links, jobs and vectors.
        #[arg(long)]
        finish: bool,
        /// With --finish: refused while a record received in the last this many seconds was embedded
        /// with another model (a replica still runs it).
        #[arg(long, default_value_t = 600, requires = "finish")]
        idle_for: u64,
    },
    /// Work with the configuration without starting the service.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The embedding jobs: list them, re-queue parked ones.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// The transparency log's signing key.
    #[command(subcommand)]
    Log(LogCommand),
    /// Verify the store against signed checkpoints (an auditor's check; docs/integrity.md). Exit 0:
    /// verified; 1: tampered (each finding names a record or a tree size); 2: usage or I/O error.
    Verify(VerifyArgs),
}

#[derive(Subcommand)]
enum LogCommand {
    /// Make a new Ed25519 signing key: the private key goes to FILE (mode 0600, for a Secret), the
    /// verifier key (public, for auditors and `log.verifier_keys`) to standard output.
    Keygen {
        /// Where to write the private key (refuses to overwrite).
        #[arg(long)]
        out: PathBuf,
        /// The key's name, shown in every signature line.
        #[arg(long, default_value = ds_server::config::DEFAULT_LOG_ORIGIN)]
        name: String,
    },
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// Offline: an export (`GET /api/v1/audit/export`, NDJSON; `-` for standard input).
    #[arg(long, conflicts_with = "url", required_unless_present = "url")]
    export: Option<PathBuf>,
    /// Online: the service's base URL (`https://datastorage.kubernaut-system:8080`).
    #[arg(long)]
    url: Option<String>,
    /// A signed checkpoint saved earlier (repeatable). Offline: the export's tree must have each
    /// one's root at its size. Online: today's tree must extend each one.
    #[arg(long = "checkpoint")]
    checkpoints: Vec<PathBuf>,
    /// A verifier key of the log (repeatable): the current one and every earlier one. Added to
    /// those of the configuration, when one is given: `log.verifier_keys` and the verifier key of
    /// `log.signing_key_file`.
    #[arg(long = "key")]
    keys: Vec<String>,
    /// A file of verifier keys, one per line.
    #[arg(long)]
    keys_file: Option<PathBuf>,
    /// The log's origin (the checkpoints' first line); default: `log.origin` of the configuration
    /// (`--config` / `DATASTORAGE_*`), else `kubernaut.ai/datastorage`.
    #[arg(long)]
    origin: Option<String>,
    /// Offline: how much earlier than a record logged before it a record may have been received
    /// (longer is reported as back-dated).
    #[arg(long, default_value_t = 300)]
    max_skew_secs: i64,
    /// Offline: the retention you know the store keeps (days, its `retention.days` and every
    /// per-kind one): a purge entry whose cutoff is later than its own time less this explains no
    /// record (one forged to explain a deletion would claim a shorter retention). Without it, the
    /// summary shows each purge's stated policy for you to judge.
    #[arg(long)]
    retention_days: Option<u32>,
    /// Online: records whose inclusion in today's tree is checked, spread over the log.
    #[arg(long, default_value_t = 64)]
    samples: u64,
    /// Online: a file holding the bearer token (a reader's).
    #[arg(long, env = "DATASTORAGE_VERIFY_TOKEN_FILE")]
    token_file: Option<PathBuf>,
}

/// `datastorage log keygen`.
fn keygen(out: &std::path::Path, name: &str) -> Result<String, String> {
    use std::io::Write;
    let mut seed = [0u8; 32];
    rand::fill(&mut seed);
    let (private, public) = ds_tlog::note::generate_key(name, seed).map_err(|e| e.to_string())?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options
        .open(out)
        .map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    f.write_all(format!("{private}\n").as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    Ok(public)
}

/// `datastorage verify`: the verdict's exit code.
async fn verify(args: VerifyArgs, config: Option<&std::path::Path>) -> ExitCode {
    use ds_server::verify::{Verdict, configured, offline, online, verifier};
    let file = match FileValues::load(config) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("datastorage verify: {e}");
            return ExitCode::from(2);
        }
    };
    let (configured_origin, configured_keys) =
        configured(&|k| env_value(k).or_else(|| file.values.get(k).cloned()));
    let origin = args
        .origin
        .clone()
        .or(configured_origin)
        .unwrap_or_else(|| ds_server::config::DEFAULT_LOG_ORIGIN.to_owned());
    let mut keys = args.keys.clone();
    keys.extend(configured_keys);
    let keys = match verifier(&origin, &keys, args.keys_file.as_deref()) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("datastorage verify: {e}");
            return ExitCode::from(2);
        }
    };
    let verdict = match (&args.export, &args.url) {
        (Some(export), _) => offline(
            export,
            &args.checkpoints,
            &keys,
            chrono::Duration::seconds(args.max_skew_secs.max(0)),
            args.retention_days
                .map(|d| chrono::Duration::days(i64::from(d))),
        ),
        (None, Some(url)) => {
            let token = match &args.token_file {
                None => None,
                Some(p) => match std::fs::read_to_string(p) {
                    Ok(t) => Some(t.trim().to_owned()),
                    Err(e) => {
                        eprintln!("datastorage verify: cannot read {}: {e}", p.display());
                        return ExitCode::from(2);
                    }
                },
            };
            online(
                url,
                token.as_deref(),
                &args.checkpoints,
                &keys,
                args.samples,
            )
            .await
        }
        (None, None) => {
            eprintln!("datastorage verify: give --export FILE or --url URL");
            return ExitCode::from(2);
        }
    };
    match verdict {
        Ok(Verdict::Verified(summary)) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Ok(Verdict::Tampered(findings)) => {
            for f in &findings {
                println!("TAMPERED: {f}");
            }
            println!(
                "{} finding(s): the store does not match its signed log",
                findings.len()
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("datastorage verify: {e}");
            ExitCode::from(2)
        }
    }
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
    let command = match command {
        Command::Log(LogCommand::Keygen { out, name }) => {
            return match keygen(&out, &name) {
                Ok(public) => {
                    println!("{public}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("datastorage log keygen: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Command::Verify(args) => {
            ds_embed_openai::install_tls_provider();
            return verify(args, cli.config.as_deref()).await;
        }
        other => other,
    };
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
        Command::Migrate => ds_server::migrate(&config.database_url, config.embedding_dimension)
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
        Command::Reembed {
            page,
            finish: false,
            ..
        } => ds_server::reembed(config, page).await.map(|n| {
            tracing::info!(
                records = n,
                "re-embedding queued; the embedding workers embed them"
            )
        }),
        Command::Reembed {
            page,
            finish: true,
            idle_for,
        } => ds_server::reembed_finish(config, page, std::time::Duration::from_secs(idle_for))
            .await
            .map(|(n, s)| {
                println!(
                    "{n} record(s) queued; removed {} kept link(s), {} job(s) and {} vector(s) of earlier models",
                    s.kept_links, s.jobs, s.vectors
                );
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
