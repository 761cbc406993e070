//! L2-regularised logistic regression on tch (float64, CPU), the linear probe of `eval::probe`:
//! the same model and objective as scikit-learn 1.9's `LogisticRegression(C=1.0)` after a
//! `StandardScaler`, checked against it on a fixture that `scripts/make_probe_fixture.py` writes
//! with scikit-learn itself (`tests/fixtures/probe_sklearn.json`).
//!
//! Objective (scikit-learn's, divided by n): mean cross-entropy + ‖W‖² / (2·C·n), the intercepts
//! not penalised. Like scikit-learn, two classes use the binomial model (one weight vector,
//! P(class 1) = σ(w·x + b)); more use the multinomial model (one weight vector per class,
//! softmax). The minimum is found with L-BFGS (10 pairs, backtracking Armijo line search) until
//! the largest gradient entry is below `tol` or the objective stops moving (relative change ≤ 64ε,
//! scikit-learn's setting of SciPy's `ftol`); the objective is strictly convex in the weights, so
//! any solver that converges finds the same weights. Multinomial intercepts are only defined
//! up to a common constant: they are returned with zero sum (where L-BFGS from zero stays).
use tch::{Device, Kind, Tensor};

/// Standardisation as scikit-learn's `StandardScaler`: the mean and the population standard
/// deviation (n, not n − 1) of each feature over the fitting rows; a constant feature keeps
/// scale 1.
#[derive(Debug)]
pub struct Scaler {
    mean: Tensor,
    scale: Tensor,
}

impl Scaler {
    /// `x: [n, d]` float64.
    pub fn fit(x: &Tensor) -> Self {
        let mean = x.mean_dim(&[0i64][..], true, Kind::Double); // [1, d]
        let var = (x - &mean).square().mean_dim(&[0i64][..], true, Kind::Double);
        let std = var.sqrt();
        let scale = std.where_self(&std.gt(0.0), &std.ones_like());
        Scaler { mean, scale }
    }

    pub fn transform(&self, x: &Tensor) -> Tensor {
        (x - &self.mean) / &self.scale
    }
}

/// Settings of [`LogisticRegression::fit`].
#[derive(Clone, Copy, Debug)]
pub struct FitOptions {
    /// Inverse regularisation strength (scikit-learn's `C`).
    pub c: f64,
    pub max_iter: usize,
    /// Stop when the largest gradient entry of the (mean) objective is below this (or when the
    /// objective stops moving).
    pub tol: f64,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions { c: 1.0, max_iter: 1000, tol: 1e-7 }
    }
}

/// A fitted model.
#[derive(Debug)]
pub struct LogisticRegression {
    /// `[d, m]` weights: m = 1 for two classes (class 1's), m = k otherwise.
    pub weights: Tensor,
    /// `[m]` intercepts.
    pub intercept: Tensor,
    pub classes: usize,
    pub iterations: usize,
    pub converged: bool,
}

/// Class logits `[n, k]` of `[n, d]` rows for packed parameters `[d + 1, m]` (last row: intercepts).
fn logits(x: &Tensor, w: &Tensor, binary: bool) -> Tensor {
    let d = x.size()[1];
    let z = x.matmul(&w.narrow(0, 0, d)) + w.narrow(0, d, 1); // [n, m]
    if binary { Tensor::cat(&[z.zeros_like(), z], 1) } else { z }
}

impl LogisticRegression {
    /// Fits `x: [n, d]` (float64) to labels `y` in `0..k` (k ≥ 2; every class need not occur).
    pub fn fit(x: &Tensor, y: &[usize], k: usize, opts: FitOptions) -> Self {
        assert!(k >= 2, "logistic regression needs two classes");
        let (n, d) = (x.size()[0], x.size()[1]);
        assert_eq!(n as usize, y.len());
        let binary = k == 2;
        let m = if binary { 1 } else { k as i64 };
        let labels = Tensor::from_slice(&y.iter().map(|&c| c as i64).collect::<Vec<i64>>());
        let onehot = labels.one_hot(k as i64).to_kind(Kind::Double); // [n, k]
        let lambda = 1.0 / (opts.c * n as f64);
        // 1 for weights, 0 for the intercept row: only weights are penalised.
        let penalised = Tensor::cat(&[Tensor::ones([d, m], (Kind::Double, Device::Cpu)), Tensor::zeros([1, m], (Kind::Double, Device::Cpu))], 0);
        let objective = |w: &Tensor| -> (f64, Tensor) {
            let z = logits(x, w, binary);
            let logp = z.log_softmax(1, Kind::Double);
            let ce = -(&onehot * &logp).sum(Kind::Double).double_value(&[]) / n as f64;
            let pw = w * &penalised;
            let loss = ce + 0.5 * lambda * pw.square().sum(Kind::Double).double_value(&[]);
            let residual = logp.exp() - &onehot; // [n, k]
            let residual = if binary { residual.narrow(1, 1, 1) } else { residual };
            let ones = Tensor::ones([n, 1], (Kind::Double, Device::Cpu));
            let xb = Tensor::cat(&[x.shallow_clone(), ones], 1); // [n, d + 1]
            let grad = xb.transpose(0, 1).matmul(&residual) / n as f64 + pw * lambda;
            (loss, grad)
        };
        let w0 = Tensor::zeros([d + 1, m], (Kind::Double, Device::Cpu));
        let (w, iterations, converged) = lbfgs(objective, w0, opts.max_iter, opts.tol);
        let mut intercept = w.narrow(0, d, 1).squeeze_dim(0);
        if !binary {
            intercept = &intercept - intercept.mean(Kind::Double);
        }
        LogisticRegression { weights: w.narrow(0, 0, d).contiguous(), intercept, classes: k, iterations, converged }
    }

    /// Class probabilities `[n, k]`.
    pub fn predict_proba(&self, x: &Tensor) -> Tensor {
        let w = Tensor::cat(&[self.weights.shallow_clone(), self.intercept.unsqueeze(0)], 0);
        logits(x, &w, self.classes == 2).softmax(1, Kind::Double)
    }

    /// The most probable class of each row (the first on ties).
    pub fn predict(&self, x: &Tensor) -> Vec<usize> {
        let p = self.predict_proba(x);
        let k = self.classes;
        let flat: Vec<f64> = Vec::try_from(p.flatten(0, -1)).expect("float64 probabilities");
        flat.chunks(k).map(crate::eval::metrics::argmax).collect()
    }
}

/// Minimises `f` (value, gradient) from `x0` with L-BFGS: two-loop recursion over the last 10
/// (step, gradient change) pairs, a backtracking Armijo line search from step 1 (1/‖g‖∞ on the
/// first iteration). Stops when the largest gradient entry is below `tol`, or the relative change
/// of `f` is at most 64ε. Returns (minimiser, iterations, converged).
fn lbfgs(f: impl Fn(&Tensor) -> (f64, Tensor), x0: Tensor, max_iter: usize, tol: f64) -> (Tensor, usize, bool) {
    const MEMORY: usize = 10;
    let dot = |a: &Tensor, b: &Tensor| (a * b).sum(Kind::Double).double_value(&[]);
    let max_abs = |g: &Tensor| g.abs().max().double_value(&[]);
    let mut x = x0;
    let (mut fx, mut g) = f(&x);
    let mut history: std::collections::VecDeque<(Tensor, Tensor, f64)> = Default::default();
    for it in 0..max_iter {
        if max_abs(&g) < tol {
            return (x, it, true);
        }
        // Two-loop recursion: d = −H g.
        let mut q = g.shallow_clone();
        let mut alphas = Vec::with_capacity(history.len());
        for (s, y, rho) in history.iter().rev() {
            let a = rho * dot(s, &q);
            // Out of place: `q` starts as a view of `g`, and tch's `-=` would write into it.
            q = &q - y * a;
            alphas.push(a);
        }
        let gamma = history.back().map(|(s, y, _)| dot(s, y) / dot(y, y)).unwrap_or(1.0 / max_abs(&g).max(1e-12));
        let mut r = q * gamma;
        for ((s, y, rho), a) in history.iter().zip(alphas.iter().rev()) {
            let b = rho * dot(y, &r);
            r = &r + s * (a - b);
        }
        let mut direction = -r;
        let mut slope = dot(&g, &direction);
        if slope >= 0.0 {
            // Not a descent direction (numerical trouble): restart from steepest descent.
            history.clear();
            direction = -&g / max_abs(&g).max(1e-12);
            slope = dot(&g, &direction);
        }
        let mut step = 1.0;
        let (x_new, f_new, g_new) = loop {
            let candidate = &x + &direction * step;
            let (fc, gc) = f(&candidate);
            if fc.is_finite() && fc <= fx + 1e-4 * step * slope {
                break (candidate, fc, gc);
            }
            step *= 0.5;
            if step < 1e-20 {
                // No decrease possible at this precision: as converged as it gets.
                return (x, it, false);
            }
        };
        let s = &x_new - &x;
        let y = &g_new - &g;
        let sy = dot(&s, &y);
        if sy > 1e-12 {
            if history.len() == MEMORY {
                history.pop_front();
            }
            history.push_back((s, y, 1.0 / sy));
        }
        // SciPy's L-BFGS-B `ftol` test (scikit-learn passes 64·ε): the objective no longer moves.
        let small_change = (fx - f_new).abs() <= 64.0 * f64::EPSILON * fx.abs().max(f_new.abs()).max(1.0);
        (x, fx, g) = (x_new, f_new, g_new);
        if small_change {
            return (x, it + 1, true);
        }
    }
    let converged = max_abs(&g) < tol;
    (x, max_iter, converged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(v: &[[f64; 2]]) -> Tensor {
        Tensor::from_slice(&v.iter().flatten().copied().collect::<Vec<f64>>()).reshape([v.len() as i64, 2])
    }

    #[test]
    fn separable_classes_are_learned_and_the_gradient_vanishes() {
        let x = rows(&[[0.0, 0.1], [0.2, 0.0], [1.0, 1.1], [1.2, 0.9], [2.0, 0.0], [2.1, 0.2]]);
        let y = [0, 0, 1, 1, 2, 2];
        let m = LogisticRegression::fit(&x, &y, 3, FitOptions::default());
        assert!(m.converged, "{} iterations", m.iterations);
        assert_eq!(m.predict(&x), y);
        let p = m.predict_proba(&x);
        let sums: Vec<f64> = Vec::try_from(p.sum_dim_intlist(&[1i64][..], false, Kind::Double)).unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-12));
        assert!(m.intercept.sum(Kind::Double).double_value(&[]).abs() < 1e-9, "multinomial intercepts sum to zero");
        // Binary: one weight vector.
        let m = LogisticRegression::fit(&x, &[0, 0, 0, 1, 1, 1], 2, FitOptions::default());
        assert_eq!(m.weights.size(), vec![2, 1]);
        assert_eq!(m.predict(&x), vec![0, 0, 0, 1, 1, 1]);
    }

    #[test]
    fn the_scaler_uses_the_population_std_and_keeps_constant_features() {
        let x = rows(&[[1.0, 5.0], [3.0, 5.0]]);
        let t = Scaler::fit(&x).transform(&x);
        let v: Vec<f64> = Vec::try_from(t.flatten(0, -1)).unwrap();
        assert_eq!(v, vec![-1.0, 0.0, 1.0, 0.0]);
    }
}
