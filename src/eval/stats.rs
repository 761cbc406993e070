//! Statistics the paper does not report (issue 11): paired tests of one model against another
//! over the same cross-validation folds, and patient-level bootstrap confidence intervals.
//!
//! The tests follow SciPy 1.17's defaults so that their p-values can be checked against it:
//! `ttest_rel` (two-sided, Student t with n − 1 degrees of freedom) and `wilcoxon`
//! (`zero_method="wilcox"`: zero differences are dropped; `method="auto"`: the exact null
//! distribution when there are no ties and no zeros and n ≤ 50; with ties or zeros and
//! n ≤ 13 every one of the 2ⁿ sign flips is enumerated, as SciPy's permutation test does; the
//! normal approximation with tie correction and no continuity correction otherwise).
use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// A paired t-test of `a − b`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairedT {
    pub n: usize,
    pub mean_diff: f64,
    pub t: f64,
    pub df: f64,
    /// Two-sided.
    pub p: f64,
}

/// How a Wilcoxon p-value was computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WilcoxonMethod {
    Exact,
    Permutation,
    Normal,
}

/// A Wilcoxon signed-rank test of `a − b`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Wilcoxon {
    /// Non-zero differences used.
    pub n: usize,
    /// min(W+, W−), as SciPy reports for the two-sided test.
    pub statistic: f64,
    /// Two-sided.
    pub p: f64,
    pub method: WilcoxonMethod,
}

/// Paired t-test (SciPy's `ttest_rel`). `None` with fewer than two pairs, unequal lengths, or
/// when every difference is the same (t is undefined).
pub fn paired_t_test(a: &[f64], b: &[f64]) -> Option<PairedT> {
    if a.len() != b.len() || a.len() < 2 {
        return None;
    }
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let n = d.len() as f64;
    let mean = d.iter().sum::<f64>() / n;
    let var = d.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    if var <= 0.0 || !var.is_finite() {
        return None;
    }
    let t = mean / (var / n).sqrt();
    let df = n - 1.0;
    Some(PairedT { n: d.len(), mean_diff: mean, t, df, p: student_t_two_sided(t, df) })
}

/// Two-sided tail probability of Student's t: `I_{df/(df+t²)}(df/2, 1/2)`.
pub fn student_t_two_sided(t: f64, df: f64) -> f64 {
    reg_inc_beta(df / 2.0, 0.5, df / (df + t * t)).clamp(0.0, 1.0)
}

/// Midranks of `v` (1-based; ties get their average rank).
fn midranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
    let mut ranks = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = r;
        }
        i = j + 1;
    }
    ranks
}

/// W+ of non-zero differences `d` (ranks of |d|).
fn w_plus(d: &[f64]) -> f64 {
    let abs: Vec<f64> = d.iter().map(|v| v.abs()).collect();
    midranks(&abs).iter().zip(d).filter(|(_, v)| **v > 0.0).map(|(r, _)| r).sum()
}

/// Wilcoxon signed-rank test (SciPy's `wilcoxon` defaults, see the module docs). `None` when
/// the lengths differ or every difference is zero.
pub fn wilcoxon_signed_rank(a: &[f64], b: &[f64]) -> Option<Wilcoxon> {
    if a.len() != b.len() {
        return None;
    }
    let all: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let has_zeros = all.contains(&0.0);
    let d: Vec<f64> = all.iter().copied().filter(|&v| v != 0.0).collect();
    let n = d.len();
    if n == 0 {
        return None;
    }
    let abs: Vec<f64> = d.iter().map(|v| v.abs()).collect();
    let ranks = midranks(&abs);
    let r_plus = w_plus(&d);
    let total = (n * (n + 1)) as f64 / 2.0;
    let statistic = r_plus.min(total - r_plus);
    let mut sorted = abs.clone();
    sorted.sort_by(f64::total_cmp);
    let has_ties = sorted.windows(2).any(|w| w[0] == w[1]);

    let (p, method) = if all.len() <= 50 && !has_ties && !has_zeros {
        // Exact: the number of subsets of {1..n} with each rank sum.
        let mut counts = vec![0f64; total as usize + 1];
        counts[0] = 1.0;
        for r in 1..=n {
            for s in (r..counts.len()).rev() {
                counts[s] += counts[s - r];
            }
        }
        let all_subsets = 2f64.powi(n as i32);
        let cdf = |w: f64| counts.iter().take(w as usize + 1).sum::<f64>() / all_subsets;
        let sf = |w: f64| counts.iter().skip(w as usize).sum::<f64>() / all_subsets;
        ((2.0 * sf(r_plus.floor()).min(cdf(r_plus.ceil()))).min(1.0), WilcoxonMethod::Exact)
    } else if all.len() <= 13 {
        // Every sign flip of the original differences (zeros stay dropped).
        let flips = 1usize << all.len();
        let (mut le, mut ge) = (0usize, 0usize);
        for mask in 0..flips {
            let wp: f64 = all
                .iter()
                .enumerate()
                .filter(|&(_, &v)| v != 0.0)
                .map(|(i, &v)| (i, if mask >> i & 1 == 1 { -v } else { v }))
                .zip(&ranks)
                .filter(|((_, v), _)| *v > 0.0)
                .map(|(_, r)| r)
                .sum();
            let eps = 1e-9 * total.max(1.0);
            le += usize::from(wp <= r_plus + eps);
            ge += usize::from(wp >= r_plus - eps);
        }
        let p = 2.0 * (le.min(ge) as f64) / flips as f64;
        (p.min(1.0), WilcoxonMethod::Permutation)
    } else {
        let nf = n as f64;
        let mut tie_term = 0.0;
        let mut i = 0;
        while i < sorted.len() {
            let j = sorted[i..].iter().take_while(|&&v| v == sorted[i]).count();
            tie_term += (j * j * j - j) as f64;
            i += j;
        }
        let se = ((nf * (nf + 1.0) * (2.0 * nf + 1.0) - tie_term / 2.0) / 24.0).sqrt();
        let z = (r_plus - nf * (nf + 1.0) / 4.0) / se;
        ((2.0 * normal_sf(z.abs())).min(1.0), WilcoxonMethod::Normal)
    };
    Some(Wilcoxon { n, statistic, p, method })
}

/// A bootstrap percentile interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BootstrapCi {
    /// The statistic on the data as given.
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
    pub level: f64,
    /// Resamples on which the statistic was defined (e.g. AUC needs both classes).
    pub resamples: usize,
}

/// Percentile bootstrap interval of `stat` resampling whole groups (patients) with
/// replacement: each resample draws as many groups as there are, and `stat` sees the items of
/// the drawn groups (a patient drawn twice counts twice). Seeded: the same inputs give the same
/// interval. `None` when `stat` is undefined on the data as given.
pub fn bootstrap_ci(
    groups: &[Vec<usize>],
    resamples: usize,
    seed: u64,
    level: f64,
    stat: impl Fn(&[usize]) -> Option<f64>,
) -> Option<BootstrapCi> {
    let all: Vec<usize> = groups.iter().flatten().copied().collect();
    let estimate = stat(&all)?;
    let mut rng = Rng::new(seed);
    let mut values = Vec::with_capacity(resamples);
    let mut items = Vec::with_capacity(all.len());
    for _ in 0..resamples {
        items.clear();
        for _ in 0..groups.len() {
            items.extend_from_slice(&groups[rng.below(groups.len() as u64) as usize]);
        }
        if let Some(v) = stat(&items) {
            values.push(v);
        }
    }
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let alpha = (1.0 - level) / 2.0;
    Some(BootstrapCi {
        estimate,
        low: quantile(&values, alpha),
        high: quantile(&values, 1.0 - alpha),
        level,
        resamples: values.len(),
    })
}

/// Linear-interpolation quantile of sorted values (NumPy's default).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// ln Γ(x), x > 0 (Lanczos, g = 7, n = 9; relative error below 1e-15).
pub fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection.
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Regularised incomplete beta `I_x(a, b)` (continued fraction, modified Lentz).
pub fn reg_inc_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front = (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_cf(a, b, x) / a
    } else {
        1.0 - front * beta_cf(b, a, 1.0 - x) / b
    }
}

fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=300 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// Upper tail of the standard normal, `P(Z > z) = erfc(z/√2)/2`, via the regularised upper
/// incomplete gamma `Q(1/2, z²/2)` for z ≥ 0.
pub fn normal_sf(z: f64) -> f64 {
    if z < 0.0 {
        return 1.0 - normal_sf(-z);
    }
    0.5 * gamma_q(0.5, z * z / 2.0)
}

/// Regularised upper incomplete gamma `Q(a, x)` (series below a + 1, continued fraction above).
fn gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let gln = ln_gamma(a);
    if x < a + 1.0 {
        let (mut ap, mut sum) = (a, 1.0 / a);
        let mut del = sum;
        for _ in 0..1000 {
            ap += 1.0;
            del *= x / ap;
            sum += del;
            if del.abs() < sum.abs() * 1e-16 {
                break;
            }
        }
        1.0 - sum * (-x + a * x.ln() - gln).exp()
    } else {
        const TINY: f64 = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / TINY;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..1000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            d = if d.abs() < TINY { TINY } else { d };
            c = b + an / c;
            c = if c.abs() < TINY { TINY } else { c };
            d = 1.0 / d;
            let del = d * c;
            h *= del;
            if (del - 1.0).abs() < 1e-16 {
                break;
            }
        }
        (-x + a * x.ln() - gln).exp() * h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values from SciPy 1.17.1 (`scipy.stats.ttest_rel`, `wilcoxon`, `t.sf`,
    // `norm.sf`) and Python's `math.lgamma`, computed once and pasted here.
    const A5: [f64; 5] = [0.91, 0.88, 0.93, 0.90, 0.87];
    const B5: [f64; 5] = [0.89, 0.86, 0.92, 0.91, 0.84];
    const A8: [f64; 8] = [1.2, 3.4, 2.2, 5.1, 0.3, 2.8, 4.4, 1.9];
    const B8: [f64; 8] = [1.0, 3.9, 1.7, 4.0, 0.8, 2.1, 3.0, 2.2];

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol * b.abs().max(1e-300), "{a} vs {b}");
    }

    #[test]
    fn special_functions_match_scipy() {
        close(ln_gamma(0.5), 0.5723649429247004, 1e-13);
        close(ln_gamma(10.3), 13.48203678613836, 1e-13);
        close(student_t_two_sided(2.5, 3.0), 0.08770664700806556, 1e-10);
        close(student_t_two_sided(0.7, 30.0), 0.48932044349967163, 1e-10);
        close(normal_sf(1.96), 0.024997895148220435, 1e-10);
        close(normal_sf(4.0), 3.167124183311986e-05, 1e-9);
        close(normal_sf(-1.96), 1.0 - 0.024997895148220435, 1e-12);
    }

    #[test]
    fn paired_t_matches_scipy_ttest_rel() {
        let r = paired_t_test(&A5, &B5).unwrap();
        close(r.t, 2.06418738616856, 1e-10);
        close(r.p, 0.10793882229227654, 1e-9);
        assert_eq!(r.df, 4.0);
        let r = paired_t_test(&A8, &B8).unwrap();
        close(r.t, 1.2652319581735838, 1e-10);
        close(r.p, 0.246275598401982, 1e-9);
        // Symmetric in the sign of the difference.
        close(paired_t_test(&B8, &A8).unwrap().p, 0.246275598401982, 1e-9);
        // Undefined cases.
        assert!(paired_t_test(&[1.0], &[2.0]).is_none());
        assert!(paired_t_test(&[1.0, 2.0], &[0.5, 1.5]).is_none());
    }

    #[test]
    #[allow(clippy::approx_constant)] // 3.14 is data (SciPy's example), not π
    fn wilcoxon_exact_matches_scipy() {
        // SciPy's documentation example (no ties, no zeros: the exact distribution).
        let a = [1.83, 0.50, 1.62, 2.48, 1.68, 1.88, 1.55, 3.06, 1.30];
        let b = [0.878, 0.647, 0.598, 2.05, 1.06, 1.29, 1.06, 3.14, 1.29];
        let r = wilcoxon_signed_rank(&a, &b).unwrap();
        assert_eq!(r.method, WilcoxonMethod::Exact);
        assert_eq!(r.statistic, 5.0);
        close(r.p, 0.0390625, 1e-12);
        // |0.5| ties twice in A8 − B8: enumerated sign flips give SciPy's value too.
        let r = wilcoxon_signed_rank(&A8, &B8).unwrap();
        assert_eq!(r.method, WilcoxonMethod::Permutation);
        assert_eq!(r.statistic, 9.0);
        close(r.p, 0.234375, 1e-12);
        // n = 5, all differences one sign: the smallest two-sided p is 2/32.
        let r = wilcoxon_signed_rank(&[1.0, 2.0, 3.0, 4.0, 5.0], &[0.0; 5]).unwrap();
        assert_eq!((r.statistic, r.p), (0.0, 0.0625));
    }

    #[test]
    fn wilcoxon_with_ties_or_zeros_enumerates_sign_flips_like_scipy() {
        // Floating-point differences of A5 − B5 tie (0.02 twice): SciPy's permutation branch.
        let r = wilcoxon_signed_rank(&A5, &B5).unwrap();
        assert_eq!(r.method, WilcoxonMethod::Permutation);
        assert_eq!(r.statistic, 1.5);
        close(r.p, 0.1875, 1e-12);
        let a = [0.90, 0.85, 0.88, 0.92, 0.80, 0.86];
        let b = [0.88, 0.85, 0.86, 0.90, 0.83, 0.80];
        let r = wilcoxon_signed_rank(&a, &b).unwrap();
        assert_eq!((r.n, r.statistic), (5, 4.0));
        close(r.p, 0.5, 1e-12);
        assert!(wilcoxon_signed_rank(&[1.0, 2.0], &[1.0, 2.0]).is_none());
    }

    #[test]
    fn wilcoxon_normal_approximation_matches_scipy() {
        let a = [0.6, 1.1, 0.6, 0.7, 1.2, 0.7, -0.2, 0.9, 0.7, 0.6, 0.3, 0.8, -0.4, 0.1, -0.2, 0.9, 0.3, 0.0, -0.5, 0.0];
        let r = wilcoxon_signed_rank(&a, &[0.0; 20]).unwrap();
        assert_eq!(r.method, WilcoxonMethod::Normal);
        assert_eq!(r.statistic, 18.0);
        close(r.p, 0.0032453469400554255, 1e-8);
    }

    #[test]
    fn bootstrap_is_seeded_resamples_groups_and_covers_the_estimate() {
        // 40 patients with 1–3 images each; the statistic is the mean of the item values.
        let values: Vec<f64> = (0..80).map(|i| ((i * 37) % 11) as f64).collect();
        let groups: Vec<Vec<usize>> = (0..40).map(|g| (2 * g..2 * g + 1 + g % 2).collect()).collect();
        let mean = |idx: &[usize]| Some(idx.iter().map(|&i| values[i]).sum::<f64>() / idx.len() as f64);
        let ci = bootstrap_ci(&groups, 1000, 7, 0.95, mean).unwrap();
        assert_eq!(ci, bootstrap_ci(&groups, 1000, 7, 0.95, mean).unwrap());
        assert_ne!(ci, bootstrap_ci(&groups, 1000, 8, 0.95, mean).unwrap());
        assert!(ci.low < ci.estimate && ci.estimate < ci.high, "{ci:?}");
        assert_eq!(ci.resamples, 1000);
        // One patient per group of identical items: every resample has the same mean.
        let same: Vec<Vec<usize>> = (0..5).map(|g| vec![g]).collect();
        let one = |idx: &[usize]| Some(idx.len() as f64);
        let c = bootstrap_ci(&same, 100, 1, 0.95, one).unwrap();
        assert_eq!((c.low, c.high), (5.0, 5.0));
        // Undefined statistic on the data → None.
        assert!(bootstrap_ci(&same, 10, 1, 0.95, |_| None).is_none());
    }
}
