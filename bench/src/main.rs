//! `ds-bench`: the measuring half of `cargo xtask bench` (xtask starts PostgreSQL and the service,
//! runs pgbench, and calls these subcommands; each prints one JSON object on stdout).
//!
//! - `load`: drives the HTTP API with N connections (one virtual user each, HTTP/1.1 keep-alive),
//!   either as fast as possible (closed loop) or at a fixed rate (open loop: latency is measured from
//!   the moment a request was due, so a stalled server cannot hide its queue: no coordinated omission).
//! - `prefill`: CSV for `COPY` (embeddings or records), so that tables are filled without the API.
//! - `search`: top-10 vector searches through the API, their latency, and recall@10 against an exact
//!   scan in the database.
//! - `list`: the list of records through the API (each filter's page 1, a deep scroll) next to
//!   `EXPLAIN (ANALYZE, BUFFERS)` of the same statements.
//! - `embed`: the bare local model's throughput (batched, all cores): a baseline of the worker.
//! - `proofs`, `export`, `synthetic-export`: the transparency log (inclusion proof latency through the
//!   API, the export, an export of any size for timing `datastorage verify`).
#![allow(clippy::print_stdout)] // a command-line tool: its results go to stdout

mod bodies;
mod data;
mod list;
mod load;
mod search;
mod structure;
mod tlog;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Measurements behind `cargo xtask bench`")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive the API and report throughput and latency.
    Load(load::LoadArgs),
    /// Many large bodies sent at once (the service's peak memory is read by xtask).
    Bodies(bodies::BodiesArgs),
    /// Print CSV for COPY into `embeddings` or `audit_records`.
    Prefill {
        #[arg(long)]
        table: String,
        #[arg(long)]
        rows: u64,
        /// The model id the service stores vectors under.
        #[arg(long)]
        model: String,
        #[arg(long, value_enum, default_value_t = data::Shape::Embedding)]
        vectors: data::Shape,
    },
    /// Vector search latency and recall@10.
    Search(search::SearchArgs),
    /// The list of records: latency of each filter and of a deep scroll, with their plans.
    List(list::ListArgs),
    /// Inclusion proofs of random logged records through the API: latency.
    Proofs(tlog::ProofArgs),
    /// The whole export through the API, into a file.
    Export(tlog::ExportArgs),
    /// An export of N records and a signed checkpoint of it, for `datastorage verify`.
    SyntheticExport(tlog::SyntheticArgs),
    /// Holds the transparency log's sequencer lock (no replica runs the sequencer or its sweep)
    /// until stdin closes: the bench's "log off". Prints `held` once it holds it.
    HoldSequencer {
        #[arg(long)]
        db_url: String,
    },
    /// Wait until the service is ready; print its embedding model id.
    Ready {
        #[arg(long)]
        addr: std::net::SocketAddr,
    },
    /// The pgbench scripts and helper data of the baselines: `insert`, `hnsw`, `centres` (CSV).
    Baseline {
        #[arg(long)]
        what: String,
    },
    /// Throughput of the bare local model.
    Embed {
        #[arg(long)]
        model_dir: PathBuf,
        #[arg(long, default_value_t = 512)]
        texts: usize,
        #[arg(long, default_value_t = 32)]
        batch: usize,
    },
    /// How hard the vectors are for a nearest-neighbour index: local intrinsic dimension and
    /// relative contrast of the model's embeddings of varied alert texts and of each generated shape.
    Structure {
        #[arg(long)]
        model_dir: PathBuf,
        #[arg(long, default_value_t = 2000)]
        texts: usize,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let out = match cli.command {
        Command::Load(args) => runtime.block_on(load::run(args))?,
        Command::Bodies(args) => runtime.block_on(bodies::run(args))?,
        Command::Prefill {
            table,
            rows,
            model,
            vectors,
        } => {
            data::prefill_csv(&table, rows, &model, vectors)?;
            return Ok(());
        }
        Command::Search(args) => runtime.block_on(search::run(args))?,
        Command::List(args) => runtime.block_on(list::run(args))?,
        Command::Ready { addr } => runtime.block_on(search::ready(addr))?,
        Command::Proofs(args) => runtime.block_on(tlog::proofs(args))?,
        Command::Export(args) => runtime.block_on(tlog::export(args))?,
        Command::SyntheticExport(args) => tlog::synthetic(args)?,
        Command::HoldSequencer { db_url } => {
            runtime.block_on(tlog::hold_sequencer(&db_url))?;
            return Ok(());
        }
        Command::Baseline { what } => {
            print!("{}", data::baseline(&what)?);
            return Ok(());
        }
        Command::Embed {
            model_dir,
            texts,
            batch,
        } => runtime.block_on(embed(model_dir, texts, batch))?,
        Command::Structure { model_dir, texts } => {
            runtime.block_on(structure::run(&model_dir, texts))?
        }
    };
    println!("{out}");
    Ok(())
}

/// Sentences per second through the bare embedder: `batch`-sized calls, one per core at a time, of
/// the same texts the worker embeds.
async fn embed(model_dir: PathBuf, texts: usize, batch: usize) -> Result<serde_json::Value> {
    use ds_domain::ports::Embedder;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let model = std::sync::Arc::new(ds_embed_local::LocalEmbedder::load(
        &model_dir,
        Some(cores),
    )?);
    // The texts the worker embeds: the embedding texts of records with unique messages.
    let all: Vec<String> = (0..texts as u64)
        .map(|n| {
            let kind = data::KINDS[(n % 4) as usize];
            let body: serde_json::Value =
                serde_json::from_str(&data::record(kind, "embed-baseline", n, false))?;
            let record = ds_domain::parse_record(kind.parse()?, body)
                .map_err(|e| anyhow::anyhow!("generated record refused: {e:?}"))?;
            Ok(record.embedding_text)
        })
        .collect::<Result<_>>()?;
    // Warm up (first call allocates).
    model.embed(vec![all[0].clone()]).await?;
    let started = std::time::Instant::now();
    let mut calls = Vec::new();
    for chunk in all.chunks(batch.max(1)) {
        let model = model.clone();
        let chunk = chunk.to_vec();
        calls.push(tokio::spawn(async move { model.embed(chunk).await }));
    }
    for c in calls {
        c.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(serde_json::json!({
        "texts": texts,
        "batch": batch,
        "seconds": secs,
        "sentences_per_second": texts as f64 / secs,
    }))
}
