//! DP statistics of the members' data (issue #18): the label histogram, the
//! missing-value count of every feature and a histogram of every feature
//! over a public grid (equal-width bins within a numeric feature's declared
//! bounds; a categorical feature's declared vocabulary plus `other`).
//!
//! Why counts over a public grid: ranges and quantiles read from a noised
//! histogram are post-processing, so one Gaussian release of bounded counts
//! answers all three questions the schema needs, with a sensitivity that is
//! known before anyone looks at the data. Each record adds exactly 1 to its
//! label's cell and, for every feature, exactly 1 to either that feature's
//! missing count or one of its histogram cells: `1 + F` cells, so the L2
//! sensitivity of one record is `sqrt(1 + F)` (F features). A member's
//! whole vector is projected onto the L2 ball of radius `bound` (B) before it
//! leaves; the projection is 1-Lipschitz, so the record-level sensitivity
//! stays `sqrt(1 + F)`, and one whole member moves the sum by at most B (the
//! client-level sensitivity).
//!
//! This module holds the plain data both sides agree on ([`StatsRelease`],
//! carried by `RoundSettings::stats`), a member's exact counts
//! ([`LocalStatistics`], which never leave it) and the readable report built
//! from either ([`StatisticsReport`]).

use serde::{Deserialize, Serialize};

use crate::{FeatureDecl, FeatureSchema, PrivacyUnit};

/// Name of the one tensor a member uploads in a statistics round.
pub const STATS_TENSOR: &str = "tessera.statistics";

/// The most histogram cells a member accepts for one numeric feature.
pub const MAX_STATS_BINS: u32 = 4096;

/// The most classes a statistics release may count.
pub const MAX_STATS_CLASSES: u32 = 1024;

/// What a statistics round releases, as the aggregator asks for it and every
/// member checks it against its own schema before counting anything.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatsRelease {
    /// What the guarantee protects: one record (sensitivity `sqrt(1 + F)`)
    /// or one member (sensitivity `bound`).
    pub unit: PrivacyUnit,
    /// Classes k of the label histogram.
    pub classes: u32,
    /// Histogram cells per feature, in schema order: `bins` for a numeric
    /// feature, its categories plus `other` for a categorical one.
    pub cells: Vec<u32>,
    /// B: the L2 radius every member's count vector is projected onto.
    pub bound: f64,
    /// z: the release's noise has standard deviation `z · sensitivity`.
    pub noise_multiplier: f64,
}

impl StatsRelease {
    /// The release a schema implies: `bins` equal-width bins per numeric
    /// feature, each vocabulary plus `other` per categorical one.
    pub fn for_schema(
        schema: &FeatureSchema,
        classes: u32,
        bins: u32,
        unit: PrivacyUnit,
        bound: f64,
        noise_multiplier: f64,
    ) -> Self {
        let cells = schema.features.iter().map(|f| expected_cells(f, bins)).collect();
        Self { unit, classes, cells, bound, noise_multiplier }
    }

    /// Features F.
    pub fn features(&self) -> usize {
        self.cells.len()
    }

    /// Values of [`STATS_TENSOR`]: `k` labels, `F` missing counts, then
    /// every feature's histogram cells.
    pub fn len(&self) -> usize {
        self.classes as usize + self.features() + self.cells.iter().map(|c| *c as usize).sum::<usize>()
    }

    /// Whether the release counts nothing (never for a valid request).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One record's L2 sensitivity: `sqrt(1 + F)`.
    pub fn record_sensitivity(&self) -> f64 {
        (1.0 + self.features() as f64).sqrt()
    }

    /// The L2 sensitivity for the release's unit.
    pub fn sensitivity(&self) -> f64 {
        match self.unit {
            PrivacyUnit::Record => self.record_sensitivity(),
            PrivacyUnit::Client => self.bound,
        }
    }

    /// Standard deviation of the noise on each released count.
    pub fn sigma(&self) -> f64 {
        self.noise_multiplier * self.sensitivity()
    }

    /// The release's parts as (name, values, L2 sensitivity of one unit),
    /// for composition: under the record unit the label histogram (1) and
    /// the feature block (`sqrt(F)`: each record touches one cell per
    /// feature, its missing count or a bin); under the client unit the
    /// whole projected vector (B). The squares add up to the sensitivity's.
    pub fn parts(&self) -> Vec<(&'static str, usize, f64)> {
        match self.unit {
            PrivacyUnit::Record => vec![
                ("labels", self.classes as usize, 1.0),
                ("features", self.len() - self.classes as usize, (self.features() as f64).sqrt()),
            ],
            PrivacyUnit::Client => vec![("member", self.len(), self.bound)],
        }
    }

    /// Whether `cells` is what `schema` allows: one entry per feature, the
    /// same bin count (1 to [`MAX_STATS_BINS`]) for every numeric feature,
    /// and exactly the declared vocabulary plus `other` for a categorical one.
    pub fn matches_schema(&self, schema: &FeatureSchema) -> bool {
        let numeric =
            || schema.features.iter().zip(&self.cells).filter(|(f, _)| matches!(f, FeatureDecl::Numeric { .. }));
        let bins = numeric().next().map(|(_, c)| *c);
        self.cells.len() == schema.features.len()
            && self.classes <= MAX_STATS_CLASSES
            && schema.features.iter().zip(&self.cells).all(|(f, c)| match f {
                FeatureDecl::Numeric { .. } => Some(*c) == bins && (1..=MAX_STATS_BINS).contains(c),
                FeatureDecl::Categorical { .. } => *c == expected_cells(f, 0),
            })
    }

    /// The noised sum of the members' vectors, read back into counts.
    pub fn decode(&self, sum: &[f32]) -> LocalStatistics {
        let k = self.classes as usize;
        let f = self.features();
        let at = |i: usize| sum.get(i).map_or(0.0, |v| f64::from(*v));
        let mut histograms = Vec::with_capacity(f);
        let mut next = k + f;
        for c in &self.cells {
            histograms.push((next..next + *c as usize).map(at).collect());
            next += *c as usize;
        }
        LocalStatistics { labels: (0..k).map(at).collect(), missing: (k..k + f).map(at).collect(), histograms }
    }
}

fn expected_cells(f: &FeatureDecl, bins: u32) -> u32 {
    match f {
        FeatureDecl::Numeric { .. } => bins,
        FeatureDecl::Categorical { categories, .. } => categories.len() as u32 + 1,
    }
}

/// Counts in the layout of a [`StatsRelease`]: exact on a member (never
/// sent), noised after the secure sum.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LocalStatistics {
    /// Records per class.
    pub labels: Vec<f64>,
    /// Records with the feature missing, per feature.
    pub missing: Vec<f64>,
    /// Per feature, records per histogram cell.
    pub histograms: Vec<Vec<f64>>,
}

impl LocalStatistics {
    /// Whether these counts have the release's shape.
    pub fn fits(&self, release: &StatsRelease) -> bool {
        self.labels.len() == release.classes as usize
            && self.missing.len() == release.features()
            && self.histograms.len() == release.features()
            && self.histograms.iter().zip(&release.cells).all(|(h, c)| h.len() == *c as usize)
    }

    /// The counts as one vector in the release's layout.
    pub fn to_vector(&self) -> Vec<f32> {
        let mut v: Vec<f32> = self.labels.iter().chain(&self.missing).map(|x| *x as f32).collect();
        v.extend(self.histograms.iter().flatten().map(|x| *x as f32));
        v
    }

    /// Records counted (the label histogram's total).
    pub fn records(&self) -> f64 {
        self.labels.iter().sum()
    }
}

/// One feature of a [`StatisticsReport`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureStatistics {
    /// The schema's name for it.
    pub name: String,
    /// Records with the value missing.
    pub missing: f64,
    /// `missing` over the records counted (0 when none were).
    pub missing_rate: f64,
    /// Cell labels: `[lo, hi)` per numeric bin, the category names plus
    /// `other` for a categorical feature.
    pub cells: Vec<String>,
    /// Records per cell.
    pub counts: Vec<f64>,
    /// Numeric features: the lower edge of the first and the upper edge of
    /// the last cell holding at least one record (after rounding).
    pub range: Option<[f64; 2]>,
    /// Numeric features: the 0.25, 0.5 and 0.75 quantiles, read from the
    /// histogram by linear interpolation within a bin.
    pub quartiles: Option<[f64; 3]>,
}

/// Statistics in readable form, named by the schema: the released noisy
/// figures in the aggregator's state directory, or a member's exact ones in
/// its own report. Noisy counts are kept as they were released (they may
/// be negative or fractional); range and quartiles use them rounded and
/// floored at 0.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatisticsReport {
    /// Records counted (sum of the label histogram).
    pub records: f64,
    /// Records per class, in class order.
    pub labels: Vec<f64>,
    /// One entry per schema feature.
    pub features: Vec<FeatureStatistics>,
}

impl StatisticsReport {
    /// Name `stats` by `schema`: the counts' layout is the schema's, one
    /// histogram and one missing count per feature, in order.
    pub fn new(schema: &FeatureSchema, stats: &LocalStatistics) -> Self {
        let records = stats.records();
        let features = schema
            .features
            .iter()
            .zip(stats.histograms.iter().zip(&stats.missing))
            .map(|(decl, (counts, missing))| feature_report(decl, counts, *missing, records))
            .collect();
        Self { records, labels: stats.labels.clone(), features }
    }
}

fn feature_report(decl: &FeatureDecl, counts: &[f64], missing: f64, records: f64) -> FeatureStatistics {
    let missing_rate = if records > 0.0 { (missing / records).clamp(0.0, 1.0) } else { 0.0 };
    let (cells, range, quartiles) = match decl {
        FeatureDecl::Numeric { min, max, .. } => {
            let edges = bin_edges(*min, *max, counts.len());
            let cells = edges.windows(2).map(|w| format!("[{}, {})", w[0], w[1])).collect();
            let clean: Vec<f64> = counts.iter().map(|c| c.round().max(0.0)).collect();
            let first = clean.iter().position(|c| *c > 0.0);
            let last = clean.iter().rposition(|c| *c > 0.0);
            let range = first.zip(last).map(|(a, b)| [edges[a], edges[b + 1]]);
            let quartiles = range.map(|_| [0.25, 0.5, 0.75].map(|q| quantile(&clean, &edges, q)));
            (cells, range, quartiles)
        }
        FeatureDecl::Categorical { categories, .. } => {
            let mut cells = categories.clone();
            cells.push("other".to_string());
            (cells, None, None)
        }
    };
    FeatureStatistics {
        name: decl.name().to_string(),
        missing,
        missing_rate,
        cells,
        counts: counts.to_vec(),
        range,
        quartiles,
    }
}

/// `bins + 1` equal-width edges over `[min, max]`.
pub fn bin_edges(min: f64, max: f64, bins: usize) -> Vec<f64> {
    let width = (max - min) / bins.max(1) as f64;
    (0..=bins).map(|i| if i == bins { max } else { min + width * i as f64 }).collect()
}

/// The equal-width bin of `value` (clamped to `[min, max]`) among `bins`.
pub fn bin_of(value: f64, min: f64, max: f64, bins: u32) -> usize {
    let bins = bins.max(1) as usize;
    if max <= min {
        return 0;
    }
    let x = (value.clamp(min, max) - min) / (max - min);
    ((x * bins as f64) as usize).min(bins - 1)
}

fn quantile(counts: &[f64], edges: &[f64], q: f64) -> f64 {
    let total: f64 = counts.iter().sum();
    let target = q * total;
    let mut seen = 0.0;
    for (i, c) in counts.iter().enumerate() {
        if *c > 0.0 && seen + c >= target {
            let within = ((target - seen) / c).clamp(0.0, 1.0);
            return edges[i] + within * (edges[i + 1] - edges[i]);
        }
        seen += c;
    }
    edges[edges.len() - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> FeatureSchema {
        FeatureSchema::from_toml(
            r#"
            [[features]]
            type = "numeric"
            name = "age"
            min = 0.0
            max = 100.0
            center = 50.0
            scale = 10.0
            [[features]]
            type = "categorical"
            name = "colour"
            categories = ["red", "blue"]
            "#,
        )
        .unwrap()
    }

    #[test]
    fn layout_sensitivity_and_parts() {
        let r = StatsRelease::for_schema(&schema(), 2, 4, PrivacyUnit::Record, 50.0, 2.0);
        assert_eq!(r.cells, vec![4, 3]);
        assert_eq!(r.len(), 2 + 2 + 4 + 3);
        assert!(r.matches_schema(&schema()));
        assert_eq!(r.record_sensitivity(), 3f64.sqrt());
        let squares: f64 = r.parts().iter().map(|p| p.2 * p.2).sum();
        assert!((squares - 3.0).abs() < 1e-12);
        let mut wrong = r.clone();
        wrong.cells[1] = 9;
        assert!(!wrong.matches_schema(&schema()), "a vocabulary the schema does not declare");
        let client = StatsRelease { unit: PrivacyUnit::Client, ..r };
        assert_eq!(client.sensitivity(), 50.0);
    }

    #[test]
    fn decode_reads_the_layout_back_and_quartiles_come_from_the_histogram() {
        let r = StatsRelease::for_schema(&schema(), 2, 4, PrivacyUnit::Record, 50.0, 2.0);
        let s = LocalStatistics {
            labels: vec![3.0, 1.0],
            missing: vec![0.0, 1.0],
            histograms: vec![vec![0.0, 2.0, 2.0, 0.0], vec![1.0, 2.0, 0.0]],
        };
        assert!(s.fits(&r));
        assert_eq!(r.decode(&s.to_vector()), s);
        let rep = StatisticsReport::new(&schema(), &s);
        assert_eq!(rep.records, 4.0);
        assert_eq!(rep.features[0].range, Some([25.0, 75.0]));
        assert_eq!(rep.features[0].quartiles.unwrap()[1], 50.0);
        assert_eq!(rep.features[1].missing_rate, 0.25);
        assert_eq!(rep.features[1].cells.last().unwrap(), "other");
        assert_eq!(bin_of(100.0, 0.0, 100.0, 4), 3);
        assert_eq!(bin_of(-5.0, 0.0, 100.0, 4), 0);
    }
}
