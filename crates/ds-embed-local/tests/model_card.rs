//! The local model against outside oracles: the similarities that the sentence-transformers model card
//! publishes for all-MiniLM-L6-v2, and a semantic probe from our own domain.
//!
//! Needs the model files: `cargo xtask fetch-model` (the `cargo xtask test` command does it first).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use ds_domain::ports::Embedder;
use ds_embed_local::LocalEmbedder;
use std::path::PathBuf;

fn model_dir() -> PathBuf {
    std::env::var_os("DATASTORAGE_EMBEDDING_LOCAL_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/models/all-MiniLM-L6-v2")
        })
}

fn load() -> LocalEmbedder {
    LocalEmbedder::load(&model_dir(), None).unwrap_or_else(|e| panic!("{e}"))
}

fn cos(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn reproduces_the_model_card_similarities() {
    let e = load();
    let texts: Vec<String> = [
        "The weather is lovely today.",
        "It's so sunny outside!",
        "He drove to the stadium.",
    ]
    .map(String::from)
    .to_vec();
    let v = e.embed_blocking(&texts).unwrap();
    assert_eq!(v.len(), 3);
    assert!(v.iter().all(|x| x.len() == 384));
    let (s1, s2) = (cos(&v[0], &v[1]), cos(&v[0], &v[2]));
    assert!((s1 - 0.6660).abs() < 5e-4, "lovely/sunny: {s1}");
    assert!((s2 - 0.1046).abs() < 5e-4, "lovely/stadium: {s2}");
    let norm: f32 = v[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!(
        (norm - 1.0).abs() < 1e-4,
        "vectors are L2-normalised: {norm}"
    );
}

#[tokio::test]
async fn out_of_memory_is_closer_to_oom_than_to_certificates() {
    let e = load();
    let texts = vec![
        "pod OOMKilled, memory limit exceeded".to_owned(),
        "container killed out of memory".to_owned(),
        "TLS certificate expired".to_owned(),
    ];
    let v = e.embed(texts).await.unwrap();
    let (near, far) = (cos(&v[0], &v[1]), cos(&v[0], &v[2]));
    assert!(near > far + 0.2, "near {near}, far {far}");
}

#[test]
fn batched_and_single_results_agree_and_padding_does_not_leak() {
    let e = load();
    let short = "disk full".to_owned();
    let long = "the node ran out of disk space because the log volume of the payments service grew without bound".to_owned();
    let alone = e.embed_blocking(std::slice::from_ref(&short)).unwrap();
    let batched = e.embed_blocking(&[short, long]).unwrap();
    let diff = alone[0]
        .iter()
        .zip(&batched[0])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(diff < 1e-4, "padding changed the vector by {diff}");
}

#[test]
fn a_missing_model_directory_names_the_fetch_command() {
    let err = LocalEmbedder::load(std::path::Path::new("/nonexistent/model"), None)
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("cargo xtask fetch-model") && msg.contains("config.json"),
        "{msg}"
    );
}

#[test]
fn model_identity_names_the_model_and_its_weights() {
    let e = load();
    assert_eq!(e.model_id(), "all-MiniLM-L6-v2@53aa5117");
    assert_eq!(e.dimension(), 384);
}
