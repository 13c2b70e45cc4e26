//! Every metric of the service, declared once: its name, type, help, histogram buckets, when it
//! appears, and its labels as types ([`labels`]), each a closed set, so that a call site cannot
//! misspell a name, forget a label or make a series from request data.
//!
//! A crate that emits a metric calls its declaration: `ds_metrics::LOAD_SHED.increment(1)`,
//! `ds_metrics::DB_READS.with((Pool::Primary,)).increment(1)`. ds-server installs the recorder from
//! [`CATALOGUE`] (buckets, help texts), and the tests check the catalogue against a scrape, the
//! docs, the alert rules and the dashboard.

pub mod labels;

use metrics::{Label as MetricLabel, SharedString};
use std::marker::PhantomData;

/// A label: its name and the value of this instance.
pub trait Label {
    const NAME: &'static str;
    fn value(&self) -> SharedString;
}

/// The labels of a metric, as a tuple of [`Label`]s (`()` for none).
pub trait LabelSet {
    const NAMES: &'static [&'static str];
    fn pairs(&self) -> Vec<MetricLabel>;
}

impl LabelSet for () {
    const NAMES: &'static [&'static str] = &[];
    fn pairs(&self) -> Vec<MetricLabel> {
        Vec::new()
    }
}

impl<A: Label> LabelSet for (A,) {
    const NAMES: &'static [&'static str] = &[A::NAME];
    fn pairs(&self) -> Vec<MetricLabel> {
        vec![MetricLabel::new(A::NAME, self.0.value())]
    }
}

impl<A: Label, B: Label> LabelSet for (A, B) {
    const NAMES: &'static [&'static str] = &[A::NAME, B::NAME];
    fn pairs(&self) -> Vec<MetricLabel> {
        vec![
            MetricLabel::new(A::NAME, self.0.value()),
            MetricLabel::new(B::NAME, self.1.value()),
        ]
    }
}

impl<A: Label, B: Label, C: Label> LabelSet for (A, B, C) {
    const NAMES: &'static [&'static str] = &[A::NAME, B::NAME, C::NAME];
    fn pairs(&self) -> Vec<MetricLabel> {
        vec![
            MetricLabel::new(A::NAME, self.0.value()),
            MetricLabel::new(B::NAME, self.1.value()),
            MetricLabel::new(C::NAME, self.2.value()),
        ]
    }
}

/// A metric's Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Counter,
    Gauge,
    Histogram,
}

/// When a metric appears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emitted {
    /// From start-up (pre-registered at zero) or with the first event of its kind.
    Always,
    /// Only with `embedding.provider = "openai"`.
    OpenAi,
    /// Only with `auth.mode = "kubernetes"`.
    Kubernetes,
    /// Only with `database.read_url` set.
    ReadReplica,
}

/// What the catalogue knows of one metric.
#[derive(Debug, Clone, Copy)]
pub struct Def {
    pub name: &'static str,
    pub kind: Type,
    pub labels: &'static [&'static str],
    pub help: &'static str,
    pub emitted: Emitted,
    /// Histogram bucket upper bounds.
    pub buckets: &'static [f64],
    /// Registered at zero at start-up (counters without labels, and counters whose labels are
    /// enums listed by [`zero_series`]), so that `rate()` and alerts see them from the start.
    pub at_zero: bool,
}

/// Request, statement and model latencies seen here: single writes 1–90 ms, searches 5–80 ms, model
/// calls 20 ms–1 s; the tail goes to the 30 s request timeout.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Records per batch / group: 1 to 1000.
pub const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

/// A metric declaration of type `Type` (one of [`Counter`], [`Gauge`], [`Histogram`]) with labels `L`.
#[derive(Debug)]
pub struct Metric<M, L> {
    pub def: Def,
    _marker: PhantomData<fn() -> (M, L)>,
}

/// Marker types for [`Metric`].
#[derive(Debug)]
pub enum CounterType {}
#[derive(Debug)]
pub enum GaugeType {}
#[derive(Debug)]
pub enum HistogramType {}

pub type Counter<L = ()> = Metric<CounterType, L>;
pub type Gauge<L = ()> = Metric<GaugeType, L>;
pub type Histogram<L = ()> = Metric<HistogramType, L>;

impl<M, L: LabelSet> Metric<M, L> {
    const fn declare(name: &'static str, kind: Type, help: &'static str) -> Self {
        Metric {
            def: Def {
                name,
                kind,
                labels: L::NAMES,
                help,
                emitted: Emitted::Always,
                buckets: match kind {
                    Type::Histogram => LATENCY_BUCKETS,
                    _ => &[],
                },
                at_zero: false,
            },
            _marker: PhantomData,
        }
    }

    /// Appears only in the deployments `emitted` describes.
    pub const fn only(mut self, emitted: Emitted) -> Self {
        self.def.emitted = emitted;
        self
    }

    /// Registered at zero at start-up.
    pub const fn at_zero(mut self) -> Self {
        self.def.at_zero = true;
        self
    }
}

impl<L: LabelSet> Counter<L> {
    pub const fn counter(name: &'static str, help: &'static str) -> Self {
        Self::declare(name, Type::Counter, help)
    }

    /// The series of `labels`.
    pub fn with(&self, labels: L) -> metrics::Counter {
        metrics::counter!(self.def.name, labels.pairs())
    }
}

impl Counter<()> {
    pub fn increment(&self, n: u64) {
        self.with(()).increment(n);
    }
}

impl<L: LabelSet> Gauge<L> {
    pub const fn gauge(name: &'static str, help: &'static str) -> Self {
        Self::declare(name, Type::Gauge, help)
    }

    pub fn with(&self, labels: L) -> metrics::Gauge {
        metrics::gauge!(self.def.name, labels.pairs())
    }
}

impl Gauge<()> {
    pub fn set(&self, value: f64) {
        self.with(()).set(value);
    }
}

impl<L: LabelSet> Histogram<L> {
    pub const fn histogram(name: &'static str, help: &'static str) -> Self {
        Self::declare(name, Type::Histogram, help)
    }

    /// Buckets for sizes (records per batch or group) instead of latencies.
    pub const fn sizes(mut self) -> Self {
        self.def.buckets = SIZE_BUCKETS;
        self
    }

    pub fn with(&self, labels: L) -> metrics::Histogram {
        metrics::histogram!(self.def.name, labels.pairs())
    }
}

impl Histogram<()> {
    pub fn record(&self, value: f64) {
        self.with(()).record(value);
    }
}

mod catalogue;
pub use catalogue::*;

/// Makes the series that must exist before their first event, at zero: every counter declared
/// [`Metric::at_zero`] without labels, and the failure reasons of authentication.
pub fn zero_series() {
    for def in CATALOGUE
        .iter()
        .filter(|d| d.at_zero && d.labels.is_empty())
    {
        metrics::counter!(def.name).increment(0);
    }
    for reason in labels::AuthFailure::ALL {
        AUTH_FAILURES.with((*reason,)).increment(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn every_declaration_is_a_well_formed_prometheus_metric() {
        let mut names = BTreeSet::new();
        for d in CATALOGUE {
            assert!(names.insert(d.name), "{} declared twice", d.name);
            assert!(d.name.starts_with("datastorage_"), "{}", d.name);
            assert!(
                d.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{}",
                d.name
            );
            assert_eq!(
                d.kind == Type::Counter,
                d.name.ends_with("_total"),
                "{}",
                d.name
            );
            let labels: BTreeSet<_> = d.labels.iter().collect();
            assert_eq!(labels.len(), d.labels.len(), "{}: a label twice", d.name);
            assert_eq!(
                d.kind == Type::Histogram,
                !d.buckets.is_empty(),
                "{}",
                d.name
            );
            assert!(d.buckets.windows(2).all(|w| w[0] < w[1]), "{}", d.name);
            assert!(!d.help.is_empty(), "{}", d.name);
            assert!(
                !d.at_zero || d.kind == Type::Counter,
                "{}: only counters start at zero",
                d.name
            );
        }
    }

    #[test]
    fn label_sets_name_their_labels_in_order() {
        assert_eq!(HTTP_REQUESTS.def.labels, ["method", "route", "status"]);
        let pairs = (
            labels::Method::Get,
            labels::Route::matched(None),
            labels::Status(404),
        )
            .pairs();
        let seen: Vec<(String, String)> = pairs
            .iter()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        assert_eq!(
            seen,
            [
                ("method".to_owned(), "GET".to_owned()),
                ("route".to_owned(), "unmatched".to_owned()),
                ("status".to_owned(), "404".to_owned()),
            ]
        );
    }
}
