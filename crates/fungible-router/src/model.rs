//! The two kinds of router model. Both predict, per target, the quality (0 to 1) of its
//! answer to a request.

use serde::{Deserialize, Serialize};

use crate::Shape;

/// How sharply the nearest neighbours' similarity weighs their labels: `exp(gamma * (sim -
/// best))`. Training picks one of these on the validation split: a static embedding puts all
/// texts close together (cosines of 0.8 and more), where only a sharp weighting tells them
/// apart.
pub(crate) const GAMMAS: [f32; 3] = [10.0, 40.0, 160.0];
/// The weight of a target's mean quality beside its neighbours' (the best neighbour weighs 1),
/// so a request unlike any labelled one is predicted near the mean.
const PRIOR: f64 = 0.1;
/// The most labelled requests a nearest-neighbour router keeps: its time per request grows
/// with them (8,000 × 384 dims is about 3M multiply-adds).
pub(crate) const MAX_POINTS: usize = 8_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Per-target logistic regression on the embedding and the request's shape.
    Logistic,
    /// Similarity-weighted nearest neighbours over the labelled requests' embeddings.
    Knn,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Logistic, Kind::Knn];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Logistic => "logistic",
            Kind::Knn => "knn",
        }
    }

    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Model {
    Logistic(Logistic),
    Knn(Knn),
}

impl Model {
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Model::Logistic(_) => Kind::Logistic,
            Model::Knn(_) => Kind::Knn,
        }
    }

    pub(crate) fn predict(&self, embedding: &[f32], shape: Shape) -> Vec<f64> {
        match self {
            Model::Logistic(m) => m.predict(embedding, shape),
            Model::Knn(m) => m.predict(embedding),
        }
    }

    /// That the stored arrays fit `targets` and `dims` (a corrupted or hand-edited version
    /// must not index out of bounds at request time).
    /// The labelled requests a nearest-neighbour model keeps.
    pub(crate) fn points(&self) -> Option<usize> {
        match self {
            Model::Logistic(_) => None,
            Model::Knn(m) => Some(m.points.len() / m.dims.max(1)),
        }
    }

    pub(crate) fn check(&self, targets: usize, dims: usize) -> Result<(), String> {
        let (ok, what) = match self {
            Model::Logistic(m) => {
                (m.dims == dims && m.center.len() == dims && m.weights.len() == targets * (dims + EXTRA), "logistic weights")
            }
            Model::Knn(m) => {
                let n = m.points.len() / dims.max(1);
                (
                    m.dims == dims
                        && m.targets == targets
                        && m.points.len() == n * dims
                        && m.labels.len() == n * targets
                        && m.means.len() == targets
                        && m.center.len() == dims
                        && m.k > 0
                        && m.gamma.is_finite(),
                    "nearest-neighbour points",
                )
            }
        };
        if ok && dims > 0 { Ok(()) } else { Err(format!("the {what} do not fit {targets} targets of {dims} dimensions")) }
    }
}

/// `embedding` less `center` (cut or padded to its length).
fn centred(embedding: &[f32], center: &[f32]) -> Vec<f32> {
    center.iter().enumerate().map(|(i, c)| embedding.get(i).copied().unwrap_or(0.0) - c).collect()
}

/// The shape's features and a bias, after the embedding.
const EXTRA: usize = 4;

/// The model's inputs for one request: the embedding (cut or zero-padded to `dims`), the
/// shape, and 1 for the bias.
fn inputs(embedding: &[f32], dims: usize, shape: Shape) -> Vec<f32> {
    let mut x = Vec::with_capacity(dims + EXTRA);
    x.extend(embedding.iter().take(dims));
    x.resize(dims, 0.0);
    x.extend(shape.features());
    x.push(1.0);
    x
}

/// One training row of a logistic model: the embedding, the shape, each target's label.
pub(crate) type Row<'a> = (&'a [f32], Shape, Vec<Option<f64>>);

/// Per target, weights over [`inputs`] of the centred embedding.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Logistic {
    dims: usize,
    /// The training embeddings' mean, taken off every embedding first (a static embedding's
    /// shared direction would otherwise dwarf what tells requests apart).
    #[serde(with = "crate::b64")]
    center: Vec<f32>,
    /// Targets × (dims + 4), row by row.
    #[serde(with = "crate::b64")]
    weights: Vec<f32>,
}

impl Logistic {
    /// Fits each target on the rows labelled for it: mean cross-entropy (labels may be
    /// fractions) plus `l2` times half the squared weights (not the bias), full-batch Adam.
    /// `rows` are (embedding, shape, labels).
    pub(crate) fn fit(dims: usize, targets: usize, rows: &[Row<'_>], l2: f64, steps: usize) -> Logistic {
        let mut center = vec![0f32; dims];
        for (embedding, _, _) in rows {
            for (c, v) in center.iter_mut().zip(embedding.iter()) {
                *c += v / rows.len() as f32;
            }
        }
        let xs: Vec<Vec<f32>> = rows.iter().map(|(e, shape, _)| inputs(&centred(e, &center), dims, *shape)).collect();
        let width = dims + EXTRA;
        let mut weights = Vec::with_capacity(targets * width);
        for t in 0..targets {
            let labelled: Vec<(&[f32], f64)> =
                xs.iter().zip(rows).filter_map(|(x, (_, _, labels))| Some((x.as_slice(), labels.get(t).copied().flatten()?))).collect();
            weights.extend(fit_one(&labelled, width, l2, steps).into_iter().map(|w| w as f32));
        }
        Logistic { dims, center, weights }
    }

    fn predict(&self, embedding: &[f32], shape: Shape) -> Vec<f64> {
        let x = inputs(&centred(embedding, &self.center), self.dims, shape);
        self.weights.chunks_exact(x.len()).map(|w| sigmoid(dot(w, &x))).collect()
    }
}

fn fit_one(rows: &[(&[f32], f64)], width: usize, l2: f64, steps: usize) -> Vec<f64> {
    let mut w = vec![0.0f64; width];
    if rows.is_empty() {
        return w;
    }
    let n = rows.len() as f64;
    let mean = (rows.iter().map(|(_, y)| y).sum::<f64>() / n).clamp(0.01, 0.99);
    w[width - 1] = (mean / (1.0 - mean)).ln();
    let (rate, beta1, beta2) = (0.05, 0.9, 0.999);
    let mut m = vec![0.0f64; width];
    let mut v = vec![0.0f64; width];
    let mut grad = vec![0.0f64; width];
    for step in 1..=steps {
        grad.iter_mut().for_each(|g| *g = 0.0);
        for (x, y) in rows {
            let z: f64 = x.iter().zip(&w).map(|(a, b)| f64::from(*a) * b).sum();
            let error = sigmoid(z) - y;
            for (g, a) in grad.iter_mut().zip(x.iter()) {
                *g += error * f64::from(*a);
            }
        }
        for j in 0..width {
            let penalty = if j + 1 < width { l2 * w[j] } else { 0.0 };
            let g = grad[j] / n + penalty;
            m[j] = beta1 * m[j] + (1.0 - beta1) * g;
            v[j] = beta2 * v[j] + (1.0 - beta2) * g * g;
            let m_hat = m[j] / (1.0 - beta1.powi(step as i32));
            let v_hat = v[j] / (1.0 - beta2.powi(step as i32));
            w[j] -= rate * m_hat / (v_hat.sqrt() + 1e-8);
        }
    }
    w
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

fn dot(w: &[f32], x: &[f32]) -> f64 {
    w.iter().zip(x).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum()
}

/// The labelled requests' unit-length embeddings and their labels.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Knn {
    dims: usize,
    targets: usize,
    /// Neighbours per prediction.
    pub(crate) k: usize,
    pub(crate) gamma: f32,
    /// The training embeddings' mean, taken off every embedding before it is scaled to unit
    /// length: what all texts share (frequent words) then no longer makes them all alike.
    #[serde(with = "crate::b64")]
    center: Vec<f32>,
    /// Points × dims, centred, unit length.
    #[serde(with = "crate::b64")]
    points: Vec<f32>,
    /// Points × targets; NaN where a point has no label for the target.
    #[serde(with = "crate::b64")]
    labels: Vec<f32>,
    /// Each target's mean label, the prior.
    #[serde(with = "crate::b64")]
    means: Vec<f32>,
}

impl Knn {
    pub(crate) fn new(dims: usize, targets: usize, k: usize, gamma: f32, rows: &[(&[f32], Vec<Option<f64>>)]) -> Knn {
        // At most MAX_POINTS, spread evenly over the rows (not the first ones: the rows come
        // in key order, which groups them by source).
        let kept: Vec<&(&[f32], Vec<Option<f64>>)> = if rows.len() <= MAX_POINTS {
            rows.iter().collect()
        } else {
            (0..MAX_POINTS).map(|i| &rows[i * rows.len() / MAX_POINTS]).collect()
        };
        let mut center = vec![0f32; dims];
        for (embedding, _) in &kept {
            for (c, v) in center.iter_mut().zip(embedding.iter()) {
                *c += v / kept.len() as f32;
            }
        }
        let mut points = Vec::with_capacity(kept.len() * dims);
        let mut labels = Vec::with_capacity(kept.len() * targets);
        for (embedding, ys) in &kept {
            points.extend(unit(embedding, &center));
            labels.extend((0..targets).map(|t| ys.get(t).copied().flatten().map_or(f32::NAN, |y| y as f32)));
        }
        let means = (0..targets)
            .map(|t| {
                let known: Vec<f32> = labels.iter().skip(t).step_by(targets).copied().filter(|y| !y.is_nan()).collect();
                if known.is_empty() { 0.5 } else { known.iter().sum::<f32>() / known.len() as f32 }
            })
            .collect();
        Knn { dims, targets, k: k.max(1), gamma, center, points, labels, means }
    }

    fn predict(&self, embedding: &[f32]) -> Vec<f64> {
        self.predict_with(&self.similarities(embedding), self.k, self.gamma)
    }

    /// The cosine similarity of `embedding` with each point.
    pub(crate) fn similarities(&self, embedding: &[f32]) -> Vec<f32> {
        let q = unit(embedding, &self.center);
        self.points.chunks_exact(self.dims.max(1)).map(|p| dot8(p, &q)).collect()
    }

    /// The prediction from `sims` ([`Knn::similarities`]) with `k` neighbours weighted by
    /// `gamma`.
    pub(crate) fn predict_with(&self, sims: &[f32], k: usize, gamma: f32) -> Vec<f64> {
        let mut out = Vec::with_capacity(self.targets);
        let mut near: Vec<(f32, f32)> = Vec::with_capacity(sims.len());
        for t in 0..self.targets {
            near.clear();
            near.extend(
                sims.iter().enumerate().map(|(i, s)| (*s, self.labels[i * self.targets + t])).filter(|(_, y)| !y.is_nan()),
            );
            let k = k.max(1).min(near.len());
            if k > 0 && k < near.len() {
                near.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
            }
            let top = &near[..k];
            let best = top.iter().map(|(s, _)| *s).fold(f32::NEG_INFINITY, f32::max);
            let (mut sum, mut weight) = (PRIOR * f64::from(self.means[t]), PRIOR);
            for (s, y) in top {
                let w = f64::from((gamma * (s - best)).exp());
                sum += w * f64::from(*y);
                weight += w;
            }
            out.push(sum / weight);
        }
        out
    }
}

/// The dot product in eight lanes, which the compiler turns into SIMD (a plain float sum
/// must keep its order, and stays scalar).
fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8.remainder().iter().zip(b8.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `v` cut or padded to `center`'s length, less `center`, scaled to unit length (left as it
/// is when all zero).
fn unit(v: &[f32], center: &[f32]) -> Vec<f32> {
    let mut out: Vec<f32> = v.iter().take(center.len()).copied().collect();
    out.resize(center.len(), 0.0);
    out.iter_mut().zip(center).for_each(|(x, c)| *x -= c);
    let norm = out.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        out.iter_mut().for_each(|x| *x /= norm);
    }
    out
}
