//! Training: split the samples, fit each kind of model, calibrate its threshold, report it
//! on requests it never saw, keep the better kind.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::calibrate::{self, Goal, Point};
use crate::model::{self, Kind, Knn, Logistic, Model};
use crate::{Router, Sample};

/// L2 weight and Adam steps of the logistic regression.
const L2: f64 = 1e-3;
const STEPS: usize = 300;
/// The neighbour counts tried; the validation split picks one.
const KS: [usize; 4] = [5, 10, 25, 50];

#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The kinds to fit; the better on the validation split is kept.
    pub kinds: Vec<Kind>,
    pub goal: Goal,
    /// Labels each target needs in the training split.
    pub min_labels: usize,
    /// Requests labelled for every target that each of the validation and test splits needs.
    pub min_held_out: usize,
    /// Recorded with the router: the embedding the samples came from.
    pub embedding: String,
    /// Recorded with the router: what its costs count (`usd` or `ms`).
    pub cost_unit: String,
}

impl Default for TrainOptions {
    fn default() -> TrainOptions {
        TrainOptions {
            kinds: Kind::ALL.to_vec(),
            goal: Goal::Quality(0.95),
            min_labels: 50,
            min_held_out: 20,
            embedding: String::new(),
            cost_unit: "usd".to_owned(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TrainError {
    #[error("a learned router chooses between targets: it needs at least two, and has {0}")]
    TooFewTargets(usize),
    #[error(
        "too few labels for {target}: {have} in the training split, at least {need} are needed (run an eval that includes it, shadow it, or send feedback on its answers)"
    )]
    TooFewLabels { target: String, have: usize, need: usize },
    #[error(
        "too few requests labelled for every target to calibrate and test on: {validation} in the validation split and {test} in the test split, at least {need} each are needed (an eval of every target on the same items gives these)"
    )]
    TooFewHeldOut { validation: usize, test: usize, need: usize },
    #[error("the samples' embeddings differ in length ({first} and {other})")]
    MixedDimensions { first: usize, other: usize },
    #[error("{0} costs for {1} targets")]
    Costs(usize, usize),
    #[error("no samples, or samples without an embedding")]
    NoEmbedding,
}

/// One kind of model, as trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KindReport {
    pub kind: Kind,
    /// Neighbours per prediction (nearest neighbours only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k: Option<usize>,
    pub threshold: f64,
    pub validation_apgr: Option<f64>,
    pub test_apgr: Option<f64>,
    /// The test split routed at the calibrated threshold.
    pub test: Point,
    /// The largest share of test requests the cheapest target serves while the quality stays
    /// at 95% of the best target's or more, at the best threshold for that on the test split
    /// itself: what the router can do, where `test` is what its calibration did.
    pub cheapest_share_at_95: Option<f64>,
    /// Every threshold on the test split, by cost.
    pub curve: Vec<Point>,
}

/// What `train` did and how the router does on requests it never saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub chosen: Kind,
    pub goal: Goal,
    pub threshold: f64,
    pub samples: usize,
    pub train: usize,
    pub validation: usize,
    pub test: usize,
    /// Labels per target in the training split.
    pub labels: BTreeMap<String, usize>,
    /// Each target alone on the test split: mean quality.
    pub test_quality: BTreeMap<String, f64>,
    pub costs: BTreeMap<String, f64>,
    pub cost_unit: String,
    /// Random mixing of the cheapest and the best target: the share the cheapest serves at
    /// 95% of the best's quality.
    pub random_cheapest_share_at_95: Option<f64>,
    pub kinds: Vec<KindReport>,
}

impl Report {
    pub fn chosen(&self) -> Option<&KindReport> {
        self.kinds.iter().find(|k| k.kind == self.chosen)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Split {
    Train,
    Validation,
    Test,
}

/// Samples labelled for every target fall 60/20/20 into training, validation and test by a
/// hash of their key; the others (feedback labels one target only) train.
fn split_of(sample: &Sample, targets: &[String]) -> Split {
    if !targets.iter().all(|t| sample.labels.contains_key(t)) {
        return Split::Train;
    }
    match key_hash(&sample.key) % 10 {
        0..=5 => Split::Train,
        6 | 7 => Split::Validation,
        _ => Split::Test,
    }
}

/// A stable hash of a sample's key (FNV-1a, mixed), which decides its split.
fn key_hash(key: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^ (hash >> 29)
}

/// Fits a router for `targets` (whose cost per request is `costs`) from `samples`.
pub fn train(targets: &[String], costs: &[f64], samples: &[Sample], options: &TrainOptions) -> Result<(Router, Report), TrainError> {
    if targets.len() < 2 {
        return Err(TrainError::TooFewTargets(targets.len()));
    }
    if costs.len() != targets.len() {
        return Err(TrainError::Costs(costs.len(), targets.len()));
    }
    let dims = samples.first().map_or(0, |s| s.embedding.len());
    if dims == 0 {
        return Err(TrainError::NoEmbedding);
    }
    if let Some(other) = samples.iter().map(|s| s.embedding.len()).find(|&d| d != dims) {
        return Err(TrainError::MixedDimensions { first: dims, other });
    }
    let mut parts: [Vec<&Sample>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for s in samples {
        let i = match split_of(s, targets) {
            Split::Train => 0,
            Split::Validation => 1,
            Split::Test => 2,
        };
        parts[i].push(s);
    }
    let [train, validation, test] = parts;
    let mut labels = BTreeMap::new();
    for t in targets {
        let have = train.iter().filter(|s| s.labels.contains_key(t)).count();
        if have < options.min_labels {
            return Err(TrainError::TooFewLabels { target: t.clone(), have, need: options.min_labels });
        }
        labels.insert(t.clone(), have);
    }
    if validation.len() < options.min_held_out || test.len() < options.min_held_out {
        return Err(TrainError::TooFewHeldOut { validation: validation.len(), test: test.len(), need: options.min_held_out });
    }

    let label_row = |s: &Sample| -> Vec<Option<f64>> { targets.iter().map(|t| s.labels.get(t).map(|y| y.clamp(0.0, 1.0))).collect() };
    let truth = |part: &[&Sample]| -> Vec<Vec<f64>> {
        part.iter().map(|s| targets.iter().map(|t| s.labels[t].clamp(0.0, 1.0)).collect()).collect()
    };
    let (truth_validation, truth_test) = (truth(&validation), truth(&test));
    let mean_of = |rows: &[Vec<f64>], t: usize| rows.iter().map(|r| r[t]).sum::<f64>() / rows.len().max(1) as f64;
    // The ends of the gap: the cheapest target, and the best one on that split.
    let ends = |rows: &[Vec<f64>]| {
        let cheap = calibrate::cheapest(costs);
        let best = (0..targets.len()).max_by(|&a, &b| mean_of(rows, a).total_cmp(&mean_of(rows, b))).unwrap_or(0);
        ((costs[cheap], mean_of(rows, cheap)), (costs[best], mean_of(rows, best)))
    };
    let (cheap_v, strong_v) = ends(&truth_validation);
    let (cheap_t, strong_t) = ends(&truth_test);

    let kinds = if options.kinds.is_empty() { Kind::ALL.to_vec() } else { options.kinds.clone() };
    let mut reports = Vec::new();
    let mut models = Vec::new();
    let mut validation_quality = Vec::new();
    for kind in kinds {
        let (model, k) = match kind {
            Kind::Logistic => {
                let rows: Vec<model::Row<'_>> = train.iter().map(|s| (s.embedding.as_slice(), s.shape, label_row(s))).collect();
                (Model::Logistic(Logistic::fit(dims, targets.len(), &rows, L2, STEPS)), None)
            }
            Kind::Knn => {
                // The neighbour count and weighting with the lowest squared error on a fifth
                // of the training split, held out from the rest (not on the validation split,
                // which chooses between the kinds), then the points of the whole split.
                let (inner, tune): (Vec<&Sample>, Vec<&Sample>) = train.iter().partition(|s| !key_hash(&s.key).is_multiple_of(5));
                let rows: Vec<(&[f32], Vec<Option<f64>>)> = inner.iter().map(|s| (s.embedding.as_slice(), label_row(s))).collect();
                let probe = Knn::new(dims, targets.len(), KS[0], model::GAMMAS[0], &rows);
                let mut errors = vec![0.0f64; KS.len() * model::GAMMAS.len()];
                for s in &tune {
                    let sims = probe.similarities(&s.embedding);
                    for (i, (k, gamma)) in KS.into_iter().flat_map(|k| model::GAMMAS.map(|g| (k, g))).enumerate() {
                        let predicted = probe.predict_with(&sims, k, gamma);
                        errors[i] += targets
                            .iter()
                            .zip(&predicted)
                            .filter_map(|(t, p)| Some((p - s.labels.get(t)?.clamp(0.0, 1.0)).powi(2)))
                            .sum::<f64>();
                    }
                }
                let best = (0..errors.len()).min_by(|&a, &b| errors[a].total_cmp(&errors[b])).unwrap_or(0);
                let (k, gamma) = (KS[best / model::GAMMAS.len()], model::GAMMAS[best % model::GAMMAS.len()]);
                let rows: Vec<(&[f32], Vec<Option<f64>>)> = train.iter().map(|s| (s.embedding.as_slice(), label_row(s))).collect();
                (Model::Knn(Knn::new(dims, targets.len(), k, gamma, &rows)), Some(k))
            }
        };
        let predict = |part: &[&Sample]| -> Vec<Vec<f64>> { part.iter().map(|s| model.predict(&s.embedding, s.shape)).collect() };
        let (preds_v, preds_t) = (predict(&validation), predict(&test));
        let curve_v = calibrate::curve(&preds_v, &truth_validation, costs);
        // A goal no threshold meets: as near as the curve comes (the best quality; the lowest
        // cost for a budget below every target's cost).
        let chosen = calibrate::choose(&curve_v, options.goal, strong_v.1)
            .or_else(|| match options.goal {
                Goal::Quality(_) => curve_v.iter().copied().max_by(|a, b| a.quality.total_cmp(&b.quality)),
                Goal::MaxCost(_) => curve_v.iter().copied().min_by(|a, b| a.cost.total_cmp(&b.cost)),
            })
            .map_or(calibrate::NONE_CLEARS, |p| p.threshold);
        validation_quality.push(calibrate::evaluate(&preds_v, &truth_validation, costs, chosen).quality);
        let curve_t = calibrate::curve(&preds_t, &truth_test, costs);
        let at_95 = curve_t
            .iter()
            .filter(|p| p.quality >= 0.95 * strong_t.1 - 1e-12)
            .map(|p| p.cheapest_share)
            .max_by(f64::total_cmp);
        reports.push(KindReport {
            kind,
            k,
            threshold: chosen,
            validation_apgr: calibrate::apgr(&curve_v, cheap_v, strong_v),
            test_apgr: calibrate::apgr(&curve_t, cheap_t, strong_t),
            test: calibrate::evaluate(&preds_t, &truth_test, costs, chosen),
            cheapest_share_at_95: at_95,
            curve: curve_t,
        });
        models.push(model);
    }
    // The better kind on the validation split: its APGR, then its quality at its threshold.
    let score = |i: usize| (reports[i].validation_apgr.unwrap_or(0.0), validation_quality[i]);
    let best = (0..reports.len())
        .max_by(|&a, &b| {
            let (x, y) = (score(a), score(b));
            x.0.total_cmp(&y.0).then(x.1.total_cmp(&y.1)).then(b.cmp(&a))
        })
        .unwrap_or(0);
    let random_share = if strong_t.1 > cheap_t.1 && strong_t.0 > cheap_t.0 {
        let strong_share = ((0.95 * strong_t.1 - cheap_t.1) / (strong_t.1 - cheap_t.1)).clamp(0.0, 1.0);
        Some(1.0 - strong_share)
    } else {
        None
    };
    let report = Report {
        chosen: reports[best].kind,
        goal: options.goal,
        threshold: reports[best].threshold,
        samples: samples.len(),
        train: train.len(),
        validation: validation.len(),
        test: test.len(),
        labels,
        test_quality: targets.iter().enumerate().map(|(i, t)| (t.clone(), mean_of(&truth_test, i))).collect(),
        costs: targets.iter().cloned().zip(costs.iter().copied()).collect(),
        cost_unit: options.cost_unit.clone(),
        random_cheapest_share_at_95: random_share,
        kinds: reports,
    };
    let router = Router {
        targets: targets.to_vec(),
        costs: costs.to_vec(),
        cost_unit: options.cost_unit.clone(),
        threshold: report.threshold,
        embedding: options.embedding.clone(),
        dims,
        model: models.swap_remove(best),
    };
    Ok((router, report))
}
