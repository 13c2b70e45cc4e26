//! Realistic data: records of the four kinds, alert texts that repeat as real alerts do, and
//! embedding-like vectors (clustered, unit length) for pre-filled tables and queries.

use anyhow::{Result, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io::Write;

pub const KINDS: [&str; 4] = ["remediation", "aianalysis", "workflow", "execution"];
pub const DIM: usize = 384;

/// The recurring messages: an alert storm repeats a handful of texts.
pub const HOT: [&str; 16] = [
    "Pod restarted after OOMKill: container exceeded its memory limit",
    "Deployment rollout stalled: new replicas fail their readiness probe",
    "Node NotReady: kubelet stopped posting status",
    "CrashLoopBackOff: container exits with code 1 at start-up",
    "HPA at max replicas while CPU stays above target",
    "PersistentVolumeClaim pending: no storage class can provision it",
    "Certificate expires in 3 days: renewal failed",
    "Ingress 5xx rate above 5% for 10 minutes",
    "Image pull failed: registry answered 429 Too Many Requests",
    "Disk pressure on node: image garbage collection freed too little",
    "etcd leader changes more than 3 times in 15 minutes",
    "Job failed after 6 retries: backoff limit exceeded",
    "Service endpoints empty: selector matches no ready pod",
    "DNS lookups time out from the payments namespace",
    "Memory usage above 90% of the limit for 15 minutes",
    "Container throttled: CPU limit reached 80% of periods",
];

/// A message whose embedding text no other record shares.
pub fn unique_text(n: u64) -> String {
    format!(
        "{} (incident {n}, replica {}, shard {})",
        HOT[(n % HOT.len() as u64) as usize],
        n.wrapping_mul(2_654_435_761) % 1000,
        n % 97
    )
}

/// Four consecutive records share a correlation id (one remediation's trail).
fn correlation_id(run: &str, n: u64) -> String {
    let seed = run
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    format!(
        "rr-2026-11-28-{:06x}",
        (seed ^ (n / 4)).wrapping_mul(0x9e37_79b9) % 0x100_0000
    )
}

/// The JSON body of record `n` of the given kind; `hot` picks a recurring message.
pub fn record(kind: &str, run: &str, n: u64, hot: bool) -> String {
    let message = if hot {
        HOT[(n % HOT.len() as u64) as usize].to_owned()
    } else {
        unique_text(n)
    };
    let name = format!("bench-{run}-{n}");
    let corr = correlation_id(run, n);
    let common = format!(
        r#""name":"{name}","namespace":"payments","phase":"Completed","message":"{message}","createdAt":"2026-11-28T10:00:00.000000Z","startedAt":"2026-11-28T10:00:01.000000Z","completedAt":"2026-11-28T10:00:09.000000Z","correlationId":"{corr}""#
    );
    match kind {
        "remediation" => format!(
            r#"{{{common},"signalType":"prometheus","signalName":"KubePodOOMKilled","signalNamespace":"monitoring","targetType":"deployment","targetName":"checkout-api","targetNamespace":"payments","environment":"production","priority":"P1","fingerprint":"sha256:{n:064x}","reason":"memory limit exceeded","labels":{{"app":"checkout","team":"payments","tier":"backend"}}}}"#
        ),
        "aianalysis" => format!(
            r#"{{{common},"remediationRequestRef":"rr-{n}","signalType":"prometheus","signalContext":{{"pod":"checkout-api-7d9f","node":"worker-17"}},"llmProvider":"local","llmModel":"llama-3-8b","temperature":0.2,"rootCause":"The container's memory limit is below its working set","confidence":0.87,"recommendedAction":"Raise the memory limit to 1Gi","requiresApproval":true,"investigationId":"inv-{n}","tokensUsed":1234,"investigationTimeSeconds":12}}"#
        ),
        "workflow" => format!(
            r#"{{{common},"remediationRequestRef":"rr-{n}","workflowName":"increase-memory","stepCount":3,"aiAnalysisRef":"ai-{n}","isAutoApproved":false,"requiresApproval":true,"currentStep":2,"completedCount":1,"failedCount":0,"skippedCount":1,"stepStatuses":[{{"name":"patch-limits","phase":"Completed","startedAt":"2026-11-28T10:00:02.000000Z","completedAt":"2026-11-28T10:00:03.000000Z","retryCount":0,"message":"patched"}},{{"name":"rollout","phase":"Processing","retryCount":1}}]}}"#
        ),
        _ => format!(
            r#"{{{common},"workflowExecutionRef":"wf-{n}","actionType":"scale_deployment","targetType":"deployment","targetName":"checkout-api","targetNamespace":"payments","stepName":"rollout","actionData":{{"replicas":"3"}},"enableDryRun":true,"enableValidation":true,"enableRollback":true,"isRolledBack":false,"actionResult":"success","resourceVersion":"{n}","previousVersion":"{}","dryRunResult":"would scale to 3","validationResult":"ok","validationWarnings":["PDB allows 1 disruption"]}}"#,
            n.saturating_sub(1)
        ),
    }
}

/// The shape of the generated vectors.
#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
pub enum Shape {
    /// Like the model's embeddings of alert texts (the default): a topic (64), three more facets of
    /// an alert (workload 32, namespace 16, detail 16 values), each value a direction of its own,
    /// a direction all alerts share (the model's embeddings of alert texts have a mean pairwise
    /// cosine of 0.46), a little variation along 16 directions of the topic and noise in all.
    /// `ds-bench structure` compares it with real embeddings: it is harder for an index than they are.
    Embedding,
    /// The hard extreme: a topic centre plus Gaussian noise in all 384 directions (cosine to its
    /// centre about 0.7). Within a topic every point is about as far from every other: thousands of
    /// near-ties, the worst case for a graph index.
    Isotropic,
}

/// Directions along which the vectors of one topic vary (`Shape::Embedding`).
const TOPIC_DIRECTIONS: usize = 16;

/// Clustered unit vectors: 64 topic centres, each vector a centre plus variation (see [`Shape`]),
/// like embeddings of alerts about a limited set of problems.
pub struct Vectors {
    centres: Vec<Vec<f32>>,
    /// Per topic, `TOPIC_DIRECTIONS` unit directions (empty for `Shape::Isotropic`).
    directions: Vec<Vec<Vec<f32>>>,
    /// `Shape::Embedding`: the other facets of an alert (workload, namespace, detail), each a set of
    /// values with a direction of their own, and the direction all alerts share.
    facets: Vec<(f32, Vec<Vec<f32>>)>,
    common: Vec<f32>,
    shape: Shape,
    rng: StdRng,
}

impl Vectors {
    pub fn new(shape: Shape, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let centres = (0..64).map(|_| unit(gaussian(&mut rng, 1.0))).collect();
        let directions = match shape {
            Shape::Embedding => (0..64)
                .map(|_| {
                    (0..TOPIC_DIRECTIONS)
                        .map(|_| unit(gaussian(&mut rng, 1.0)))
                        .collect()
                })
                .collect(),
            Shape::Isotropic => Vec::new(),
        };
        let facets = match shape {
            Shape::Embedding => FACETS
                .iter()
                .map(|&(weight, values)| {
                    let dirs = (0..values).map(|_| unit(gaussian(&mut rng, 1.0))).collect();
                    (weight, dirs)
                })
                .collect(),
            Shape::Isotropic => Vec::new(),
        };
        let common = unit(gaussian(&mut rng, 1.0));
        Vectors {
            centres,
            directions,
            facets,
            common,
            shape,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    pub fn next_vector(&mut self) -> Vec<f32> {
        let c = self.rng.random_range(0..self.centres.len());
        self.topic_vector(c)
    }

    /// A vector of topic `c` (below 64).
    pub fn topic_vector(&mut self, c: usize) -> Vec<f32> {
        let mut v = self.centres[c].clone();
        match self.shape {
            Shape::Isotropic => {
                for (x, n) in v.iter_mut().zip(gaussian(&mut self.rng, 0.05)) {
                    *x += n;
                }
            }
            Shape::Embedding => {
                for (weight, values) in &self.facets {
                    let d = &values[self.rng.random_range(0..values.len())];
                    for (x, y) in v.iter_mut().zip(d) {
                        *x += weight * y;
                    }
                }
                for (x, y) in v.iter_mut().zip(&self.common) {
                    *x += COMMON * y;
                }
                for d in &self.directions[c] {
                    let a = SPREAD * gaussian1(&mut self.rng);
                    for (x, y) in v.iter_mut().zip(d) {
                        *x += a * y;
                    }
                }
                for (x, n) in v.iter_mut().zip(gaussian(&mut self.rng, NOISE)) {
                    *x += n;
                }
            }
        }
        unit(v)
    }
}

/// `Shape::Embedding`: the facets besides the topic (weight against the topic's 1.0, number of
/// values), the weight of the shared direction, the spread along a topic's own directions and the
/// noise in every direction.
const FACETS: [(f32, usize); 3] = [(0.6, 32), (0.5, 16), (0.5, 16)];
const COMMON: f32 = 1.3;
const SPREAD: f32 = 0.1;
const NOISE: f32 = 0.01;

fn gaussian1(rng: &mut StdRng) -> f32 {
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

fn gaussian(rng: &mut StdRng, sigma: f32) -> Vec<f32> {
    // Box-Muller.
    (0..DIM).map(|_| sigma * gaussian1(rng)).collect()
}

fn unit(v: Vec<f32>) -> Vec<f32> {
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    v.into_iter().map(|x| x / norm).collect()
}

/// pgvector's text form, six decimals (compact, for the pre-fill: what is stored is what is searched).
pub fn vector_literal(v: &[f32]) -> String {
    literal(v, |x| format!("{x:.6}"))
}

/// pgvector's text form of exactly these `f32`s (shortest round-trip form), as the API receives a
/// query: the exact answer must rank for the same query vector, not a rounded one.
pub fn exact_vector_literal(v: &[f32]) -> String {
    literal(v, |x| format!("{x}"))
}

fn literal(v: &[f32], number: impl Fn(f32) -> String) -> String {
    let mut s = String::with_capacity(v.len() * 12);
    s.push('[');
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&number(*x));
    }
    s.push(']');
    s
}

fn digest(tag: &str, n: u64) -> String {
    format!(
        "\\x{}",
        hex_of(&ds_domain::digest::sha256(format!("{tag}-{n}").as_bytes()))
    )
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The namespace of prefilled record `i`: one of 50, a trail's four records in the same one.
pub fn prefill_namespace(i: u64) -> String {
    format!("team-{:02}", (i / 4).wrapping_mul(2_654_435_761) % 50)
}

/// The phase of prefilled record `i`: 70% Completed, 15% Processing, 10% Pending, 5% Failed.
pub fn prefill_phase(i: u64) -> &'static str {
    match i % 20 {
        0 => "Failed",
        1 | 2 => "Pending",
        3..=5 => "Processing",
        _ => "Completed",
    }
}

/// CSV rows for `COPY … (FORMAT csv)`. Embedding `i` (id i, 1-based) belongs to record `i`.
/// Columns: embeddings (id, digest, model, embedding); audit_records (id, received_at, kind, name,
/// namespace, phase, correlation_id, message, created_at, content_digest, details,
/// embedding_digest, embedding_id).
pub fn prefill_csv(table: &str, rows: u64, model: &str, shape: Shape) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    match table {
        "embeddings" => {
            let mut vectors = Vectors::new(shape, 1);
            for i in 1..=rows {
                writeln!(
                    out,
                    "{i},{},{model},\"{}\"",
                    digest("e", i),
                    vector_literal(&vectors.next_vector())
                )?;
            }
        }
        "audit_records" => {
            // Received 100 days ago, a microsecond apart: every one is past the default retention
            // (90 days), so that the bench's purge scenario purges all of them, row by row (they
            // lie in the partition that also takes today's writes, as in a store migrated in
            // place). Within a second of each other: the log appends a COPY's records in groups,
            // not in id order, and a record received long before one logged earlier reads to
            // the verifier as back-dated (its allowance is 300 s).
            let first = chrono::Utc::now() - chrono::Duration::days(100);
            for i in 1..=rows {
                let received = first + chrono::Duration::microseconds(i as i64);
                let received_at = received.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
                let created_at = (received - chrono::Duration::seconds(1))
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
                let kind = KINDS[(i % 4) as usize];
                let body: serde_json::Value =
                    serde_json::from_str(&record(kind, "prefill", i, false))?;
                let details = serde_json::json!({"prefilled": true, "body": body}).to_string();
                writeln!(
                    out,
                    "{i},{received_at},{kind},prefill-{i},{},{},{},\"{}\",{created_at},{},\"{}\",{},{i}",
                    prefill_namespace(i),
                    prefill_phase(i),
                    correlation_id("prefill", i),
                    unique_text(i),
                    digest("r", i),
                    details.replace('"', "\"\""),
                    digest("e", i),
                )?;
            }
        }
        other => bail!("unknown table {other:?}: embeddings or audit_records"),
    }
    out.flush()?;
    Ok(())
}

/// The baselines' pgbench scripts (same table, same columns, same kind of values as the service
/// writes; durable commit per transaction) and the topic centres the HNSW script draws from.
pub fn baseline(what: &str) -> Result<String> {
    Ok(match what {
        "insert" => {
            let body: serde_json::Value =
                serde_json::from_str(&record("remediation", "pgbench", 1, true))?;
            let details = body.to_string().replace('\'', "''");
            // The content digest first (idempotency across partitions, as the service does), then
            // the record.
            format!(
                "\\set n random(1, 2000000000)\n\
                 WITH d AS (INSERT INTO audit_digests (content_digest, record_id, received_at) \
                 VALUES (sha256(('pgb-' || :client_id || '-' || :n || '-' || random())::text::bytea), \
                 nextval('audit_records_id_seq'), now()) \
                 ON CONFLICT (content_digest) DO NOTHING RETURNING content_digest, record_id, received_at) \
                 INSERT INTO audit_records (id, received_at, kind, name, namespace, phase, correlation_id, message, created_at, \
                 started_at, completed_at, content_digest, details, unknown_fields, embedding_digest, embedding_id) \
                 SELECT d.record_id, d.received_at, 'remediation', 'pgb-' || :client_id || '-' || :n, 'payments', 'Completed', \
                 'rr-pgb-' || :n, '{msg}', now(), now(), now(), d.content_digest, \
                 '{details}'::jsonb, '{{}}'::jsonb, sha256('pgbench'::bytea), NULL FROM d \
                 RETURNING id, received_at, embedding_id;\n",
                msg = HOT[0],
            )
        }
        "hnsw" => "\\set n random(1, 2000000000)\n\
             INSERT INTO embeddings (digest, model, embedding) \
             VALUES (sha256(('pgb-' || :client_id || '-' || :n || '-' || random())::text::bytea), 'pgbench', bench_vector()) \
             ON CONFLICT (digest) DO NOTHING;\n"
            .to_owned(),
        "centres" => {
            let v = Vectors::new(Shape::Isotropic, 0);
            v.centres
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{i},\"{}\"\n", vector_literal(c)))
                .collect()
        }
        other => bail!("unknown baseline {other:?}: insert, hnsw or centres"),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn every_generated_record_is_valid() {
        for kind in KINDS {
            for hot in [true, false] {
                let body: serde_json::Value =
                    serde_json::from_str(&record(kind, "deferred-hot-c64-1764300000", 7, hot))
                        .unwrap();
                let parsed = ds_domain::parse_record(kind.parse().unwrap(), body);
                assert!(parsed.is_ok(), "{kind} hot={hot}: {parsed:?}");
            }
        }
    }

    #[test]
    fn generated_vectors_are_unit_length_and_clustered() {
        let mut v = Vectors::new(Shape::Isotropic, 3);
        let a = v.next_vector();
        assert_eq!(a.len(), DIM);
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
        // Each vector is near one of the centres (cosine about 0.7), far from a random direction.
        let best = v
            .centres
            .iter()
            .map(|c| c.iter().zip(&a).map(|(x, y)| x * y).sum::<f32>())
            .fold(f32::MIN, f32::max);
        assert!(best > 0.5, "best centre cosine {best}");
    }
}
