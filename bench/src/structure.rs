//! How hard a set of vectors is for a nearest-neighbour index, measured the same way for the model's
//! real embeddings of varied alert texts and for each generated [`Shape`]: the pre-filled tables of
//! the search benchmark should be at least as hard as what the service stores.
//!
//! - Local intrinsic dimension (maximum-likelihood estimate of Levina and Bickel over the 20 nearest
//!   neighbours, aggregated as MacKay and Ghahramani propose): how many directions a point's
//!   neighbourhood spans. A graph index degrades as it grows.
//! - Relative contrast (He, Kumar and Chang): mean distance over nearest-neighbour distance. Near 1,
//!   every point is about as far as any other and the nearest ten are a lottery among near-ties.

use crate::data::{HOT, Shape, Vectors};
use anyhow::{Result, bail};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::path::Path;

const K: usize = 20;

const WORKLOADS: [&str; 12] = [
    "checkout-api",
    "payments-worker",
    "cart-service",
    "search-indexer",
    "auth-gateway",
    "inventory-db",
    "notification-sender",
    "fraud-scorer",
    "recommendation-engine",
    "order-router",
    "image-resizer",
    "ledger-sync",
];
const NAMESPACES: [&str; 8] = [
    "payments",
    "storefront",
    "identity",
    "data-platform",
    "monitoring",
    "logistics",
    "ml-serving",
    "kube-system",
];
const DETAILS: [&str; 10] = [
    "first seen 3 minutes ago",
    "restarted 5 times in 10 minutes",
    "after the 14:00 deploy",
    "during the nightly batch",
    "while traffic peaked at twice the usual rate",
    "on 3 of 5 replicas",
    "since the node pool upgrade",
    "after a ConfigMap change",
    "only in zone europe-west1-b",
    "correlated with a spike in p99 latency",
];

/// Varied alert texts: a problem, the workload and namespace it hit, the node, and a detail.
pub fn varied_text(n: u64) -> String {
    let pick = |len: usize, stride: u64| ((n.wrapping_mul(stride) / 7) % len as u64) as usize;
    format!(
        "{} ({} in namespace {} on node worker-{}), {}",
        HOT[(n % HOT.len() as u64) as usize],
        WORKLOADS[pick(WORKLOADS.len(), 5)],
        NAMESPACES[pick(NAMESPACES.len(), 11)],
        (n.wrapping_mul(2_654_435_761) >> 8) % 40,
        DETAILS[pick(DETAILS.len(), 13)],
    )
}

/// Local intrinsic dimension and relative contrast of unit vectors (exact, all pairs).
pub fn hardness(vectors: &[Vec<f32>]) -> Result<Value> {
    if vectors.len() <= K {
        bail!("need more than {K} vectors");
    }
    let mut inverse_lid = 0.0f64;
    let mut contrast = 0.0f64;
    let mut nn_cosine = 0.0f64;
    let mut mean_cosine = 0.0f64;
    let mut counted = 0usize;
    let mut dist = Vec::with_capacity(vectors.len());
    for (i, a) in vectors.iter().enumerate() {
        dist.clear();
        for (j, b) in vectors.iter().enumerate() {
            if i != j {
                let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
                dist.push(f64::from((2.0 - 2.0 * dot).max(0.0)).sqrt());
            }
        }
        let mean = dist.iter().sum::<f64>() / dist.len() as f64;
        mean_cosine += dist.iter().map(|d| 1.0 - d * d / 2.0).sum::<f64>() / dist.len() as f64;
        dist.sort_by(f64::total_cmp);
        // Duplicates (distance 0) carry no information about the neighbourhood's dimension.
        let near: Vec<f64> = dist.iter().copied().filter(|&d| d > 1e-9).take(K).collect();
        if near.len() < K {
            continue;
        }
        let rk = near[K - 1];
        inverse_lid += near[..K - 1].iter().map(|r| (rk / r).ln()).sum::<f64>() / (K - 1) as f64;
        contrast += mean / near[0];
        nn_cosine += 1.0 - near[0] * near[0] / 2.0;
        counted += 1;
    }
    if counted == 0 {
        bail!("every vector had fewer than {K} distinct neighbours");
    }
    let n = counted as f64;
    Ok(json!({
        "vectors": vectors.len(),
        "local_intrinsic_dimension": n / inverse_lid,
        "relative_contrast": contrast / n,
        "nearest_neighbour_cosine": nn_cosine / n,
        "mean_cosine": mean_cosine / n,
    }))
}

/// The hardness of the model's embeddings of `texts` varied alert texts and of as many vectors of
/// each generated shape.
pub async fn run(model_dir: &Path, texts: usize) -> Result<Value> {
    use ds_domain::ports::Embedder;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let model = std::sync::Arc::new(ds_embed_local::LocalEmbedder::load(model_dir, Some(cores))?);
    let mut seen = HashSet::new();
    let all: Vec<String> = (0..)
        .map(varied_text)
        .filter(|t| seen.insert(t.clone()))
        .take(texts)
        .collect();
    let mut calls = Vec::new();
    for chunk in all.chunks(32) {
        let model = model.clone();
        let chunk = chunk.to_vec();
        calls.push(tokio::spawn(async move { model.embed(chunk).await }));
    }
    let mut real = Vec::with_capacity(texts);
    for c in calls {
        real.extend(c.await??);
    }
    let mut report = json!({ "model": hardness(&real)? });
    for shape in [Shape::Embedding, Shape::Isotropic] {
        let mut g = Vectors::new(shape, 7);
        let generated: Vec<Vec<f32>> = (0..texts).map(|_| g.next_vector()).collect();
        report[format!("{shape:?}").to_lowercase()] = hardness(&generated)?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_embedding_shape_has_a_lower_dimension_than_the_isotropic_one() {
        // Within one topic (the estimate needs neighbours of the same topic).
        let sample = |shape| {
            let mut g = Vectors::new(shape, 1);
            let v: Vec<Vec<f32>> = (0..400).map(|_| g.topic_vector(5)).collect();
            hardness(&v).unwrap()["local_intrinsic_dimension"]
                .as_f64()
                .unwrap()
        };
        let (low, high) = (sample(Shape::Embedding), sample(Shape::Isotropic));
        assert!(low <= 16.0, "embedding-like LID {low}");
        assert!(high > 2.0 * low, "isotropic LID {high} vs {low}");
    }

    #[test]
    fn varied_texts_are_mostly_distinct() {
        let distinct: HashSet<String> = (0..2000).map(varied_text).collect();
        assert!(distinct.len() > 1900, "{}", distinct.len());
    }
}
