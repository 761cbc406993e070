#!/usr/bin/env python3
"""Writes tests/fixtures/reliability_golden.json: what scikit-learn, SciPy and NumPy compute for
the measures of calibration, operating points, out-of-distribution detection and undefined
metrics, on small seeded inputs (run only to regenerate it; CI never runs it; the test is
tests/golden_reliability.rs).

- undefined_metrics: per-class recall (sensitivity), specificity (recall of the binarised
  negatives), precision and F1 with zero_division=np.nan, and their macro means over the classes
  present in y_true (labels=np.unique(y_true)) with NaN left out, as scikit-learn averages them;
  null where undefined.
- brier: sklearn.metrics.brier_score_loss(y, P, labels=range(K), scale_by_half=False).
- ece: top-label ECE with 15 bins, edges np.linspace(0, 1, 16), a confidence in bin b when
  lower < conf <= upper (Guo et al. 2017 and their code), some confidences exactly on edges.
- temperature: scipy.optimize.minimize_scalar of the mean NLL of softmax(z / T) over T in
  [0.05, 20] (bounded, xatol 1e-12).
- ledoit_wolf: sklearn.covariance.ledoit_wolf_shrinkage of centred rows; mahalanobis: class
  means, the class-centred rows divided by their standard deviation s (floored at 1e-3 of the
  mean one; one column is constant to exercise the floor), LedoitWolf(assume_centered=True) of
  them, min over classes of ((x - mu)/s)^T inv(Sigma) ((x - mu)/s) for query rows.
- ood_metrics: OpenOOD's openood/evaluators/metrics.py (`auc` with metrics.roc_curve/auc,
  `fpr_recall` at 0.95) on conf = -score.

Usage: python scripts/make_reliability_fixture.py   (needs numpy, scipy, scikit-learn; e.g.
python3 -m venv ~/.cache/magsd/venv-sklearn && ~/.cache/magsd/venv-sklearn/bin/pip install
numpy scipy scikit-learn)
"""
import json
import os

import numpy as np
import scipy
import sklearn
from scipy.optimize import minimize_scalar
from sklearn.covariance import LedoitWolf, ledoit_wolf_shrinkage
from sklearn.metrics import auc as sk_auc
from sklearn.metrics import brier_score_loss, f1_score, precision_score, recall_score, roc_curve

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "reliability_golden.json")


def nan_to_none(v):
    v = float(v)
    return None if np.isnan(v) else v


def undefined_case(y, probs):
    y = np.asarray(y)
    probs = np.asarray(probs, dtype=float)
    k = probs.shape[1]
    pred = probs.argmax(1)
    labels = list(range(k))
    kw = dict(labels=labels, average=None, zero_division=np.nan)
    sen = recall_score(y, pred, **kw)
    prec = precision_score(y, pred, **kw)
    f1 = f1_score(y, pred, **kw)
    spc = np.array([recall_score(y != c, pred != c, pos_label=True, zero_division=np.nan) for c in labels])
    present = np.unique(y)
    macro = lambda v: nan_to_none(np.nanmean(v[present])) if not np.all(np.isnan(v[present])) else None
    # scikit-learn's own macro average over the present classes, NaN left out:
    sk_macro_sen = recall_score(y, pred, labels=present, average="macro", zero_division=np.nan)
    assert (np.isnan(sk_macro_sen) and macro(sen) is None) or abs(sk_macro_sen - macro(sen)) < 1e-15
    return {
        "classes": k,
        "y_true": y.tolist(),
        "probs": probs.tolist(),
        "sensitivity": [nan_to_none(v) for v in sen],
        "specificity": [nan_to_none(v) for v in spc],
        "precision": [nan_to_none(v) for v in prec],
        "f1": [nan_to_none(v) for v in f1],
        "sen_macro": macro(sen),
        "spc_macro": macro(spc),
        "f1_macro": macro(f1),
    }


def softmax(z, t=1.0):
    z = np.asarray(z, dtype=float) / t
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def ece(probs, y, bins=15):
    edges = np.linspace(0, 1, bins + 1)
    conf = probs.max(1)
    acc = (probs.argmax(1) == y).astype(float)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += m.mean() * abs(acc[m].mean() - conf[m].mean())
    return total


def main():
    rng = np.random.default_rng(17)
    out = {"versions": {"numpy": np.__version__, "scipy": scipy.__version__, "scikit-learn": sklearn.__version__}}

    # Undefined ratios.
    covid_only = rng.dirichlet(np.ones(4), size=12)
    out["undefined_metrics"] = [
        undefined_case([0] * 12, covid_only),  # a COVID-only cohort of a 4-class model
        undefined_case([0, 0, 1, 1, 0], [[0.9, 0.1, 0.0], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.3, 0.6, 0.1]]),
        undefined_case([0, 1, 2, 2], [[0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.2, 0.1, 0.7]]),  # class 1 never predicted
        undefined_case([1, 1, 0, 0], [[0.6, 0.4], [0.7, 0.3], [0.9, 0.1], [0.8, 0.2]]),  # everything predicted 0
    ]

    # Brier.
    out["brier"] = []
    for k, n in [(2, 30), (3, 40), (4, 50)]:
        p = rng.dirichlet(np.ones(k), size=n)
        y = rng.integers(0, k, size=n)
        out["brier"].append({"classes": k, "y_true": y.tolist(), "probs": p.tolist(),
                             "brier": float(brier_score_loss(y, p, labels=list(range(k)), scale_by_half=False))})

    # ECE, with confidences exactly on bin edges.
    edges = np.linspace(0, 1, 16)
    out["ece"] = []
    for k, n in [(2, 60), (4, 80)]:
        p = rng.dirichlet(np.ones(k) * 0.5, size=n)
        y = rng.integers(0, k, size=n)
        if k == 2:
            for i, e in enumerate(edges[8:14]):  # confidences 8/15 .. 13/15 exactly as linspace gives them
                p[i] = [e, 1.0 - e]
        out["ece"].append({"classes": k, "y_true": y.tolist(), "probs": p.tolist(), "ece": float(ece(p, y))})

    # Temperature scaling.
    z = rng.normal(size=(300, 3)) * 2.0
    p_true = softmax(z)
    y = np.array([rng.choice(3, p=row) for row in p_true])
    logits = 3.0 * z  # overconfident by 3

    def nll(t):
        p = softmax(logits, t)
        return -np.mean(np.log(p[np.arange(len(y)), y]))

    res = minimize_scalar(nll, bounds=(0.05, 20.0), method="bounded", options={"xatol": 1e-12})
    out["temperature"] = {"logits": logits.tolist(), "y_true": y.tolist(), "temperature": float(res.x), "nll": float(res.fun),
                          "nll_at_1": float(nll(1.0))}

    # Ledoit-Wolf and Mahalanobis.
    x = rng.normal(size=(40, 10)) @ rng.normal(size=(10, 10))
    x[:, 3] *= 100.0  # scales that differ by orders of magnitude
    x[:, 7] = 2.5  # a number that never varies (a silent channel)
    labels = rng.integers(0, 3, size=40)
    xc = x - x.mean(0)
    means = np.stack([x[labels == c].mean(0) for c in range(3)])
    within = x - means[labels]
    std = np.sqrt((within ** 2).mean(0))
    scale = np.maximum(std, 1e-3 * std.mean())
    z = within / scale
    cov = LedoitWolf(assume_centered=True).fit(z).covariance_
    prec = np.linalg.inv(cov)
    queries = np.vstack([x[:3], rng.normal(size=(3, 10)) * 5.0])
    d2 = np.array([[((q - m) / scale) @ prec @ ((q - m) / scale) for m in means] for q in queries]).min(1)
    out["ledoit_wolf"] = {"x_centred": xc.tolist(), "shrinkage": float(ledoit_wolf_shrinkage(xc))}
    out["mahalanobis"] = {"x": x.tolist(), "labels": labels.tolist(), "queries": queries.tolist(), "distance": d2.tolist(),
                          "shrinkage": float(ledoit_wolf_shrinkage(z, assume_centered=True))}

    # OpenOOD's AUROC and FPR@95TPR (conf = -score; ID labelled 0, OOD -1).
    id_scores = np.round(rng.normal(0.0, 1.0, size=57), 1)  # rounded: ties within and across sets
    ood_scores = np.round(rng.normal(1.5, 1.0, size=43), 1)
    conf = -np.concatenate([id_scores, ood_scores])
    label = np.concatenate([np.zeros(57), -np.ones(43)])
    ind_indicator = (label != -1).astype(int)
    fpr_c, tpr_c, _ = roc_curve(ind_indicator, conf)
    auroc = sk_auc(fpr_c, tpr_c)
    ind_conf, ood_conf = conf[label != -1], conf[label == -1]
    recall_num = int(np.floor(0.95 * len(ind_conf)))
    thresh = np.sort(ind_conf)[-recall_num]
    fpr95 = np.sum(ood_conf > thresh) / len(ood_conf)
    out["ood_metrics"] = {"id_scores": id_scores.tolist(), "ood_scores": ood_scores.tolist(), "auroc": float(auroc), "fpr_at_95_tpr": float(fpr95)}

    with open(OUT, "w") as f:
        json.dump(out, f)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
