#!/usr/bin/env python3
"""Writes tests/fixtures/probe_sklearn.json: what scikit-learn computes for the shortcut audit's
maths (run only to regenerate it; CI never runs it; tests/probe_sklearn.rs reads it).

* `group_kfold`: fold of every item under `sklearn.model_selection.GroupKFold(n_splits=k)` for
  group lists with distinct sizes, tied sizes and string names (magsd's `group_kfold_assign`).
* `logistic`: `StandardScaler` then `LogisticRegression(C=1.0)` fitted to convergence (tol 1e-12,
  max_iter 10000, so that the optimum is compared, not where lbfgs stops by default): the scaled
  coefficients, intercepts (multinomial ones shifted to sum zero, where lbfgs from zero stays)
  and predicted probabilities, for a binary and a 3-class problem (magsd's `eval::logistic`).
* `probe`: the whole cross-validated probe of `eval::probe` on a small feature table: GroupKFold
  over patients (min(5, patients) folds), in each fold a scaler and a probe fitted on the other
  folds over the targets seen there, and the accuracy of the held-out predictions.

Usage: ~/.cache/magsd/venv-sklearn/bin/python scripts/make_probe_fixture.py
(a venv with scikit-learn; `python3 -m venv ~/.cache/magsd/venv-sklearn && ... pip install scikit-learn`)
"""
import json
import pathlib

import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.preprocessing import StandardScaler

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "probe_sklearn.json"


def group_kfold_case(groups, k):
    folds = np.zeros(len(groups), dtype=int)
    for f, (_, test) in enumerate(GroupKFold(n_splits=k).split(np.zeros(len(groups)), groups=groups)):
        folds[test] = f
    return {"groups": list(groups), "k": k, "folds": folds.tolist()}


def fit(x, y):
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=1.0, tol=1e-12, max_iter=10000).fit(scaler.transform(x), y)
    return scaler, model


def logistic_case(rng, n, d, k):
    centres = rng.normal(0, 1.0, (k, d))
    y = rng.integers(0, k, n)
    x = centres[y] * 0.8 + rng.normal(0, 1.0, (n, d)) + rng.normal(3.0, 2.0, d)  # offset: the scaler matters
    scaler, model = fit(x, y)
    intercept = model.intercept_ - (model.intercept_.mean() if k > 2 else 0.0)
    return {
        "x": x.tolist(),
        "y": y.tolist(),
        "k": k,
        "coef": model.coef_.tolist(),
        "intercept": intercept.tolist(),
        "proba": model.predict_proba(scaler.transform(x)).tolist(),
    }


def probe_case(rng):
    # 3 sources, 40 patients with 1-2 images; feature 0 carries the source, 1-3 noise.
    feats, sources, patients = [], [], []
    for p in range(40):
        src = p % 3
        for _ in range(1 + p % 2):
            feats.append([src + rng.normal(0, 0.6), *rng.normal(0, 1, 3)])
            sources.append(f"src-{src}")
            patients.append(f"patient:{p:02d}")
    x = np.array(feats)
    names = sorted(set(sources))
    t = np.array([names.index(s) for s in sources])
    k = min(5, len(set(patients)))
    predicted = np.zeros(len(t), dtype=int)
    for train, test in GroupKFold(n_splits=k).split(x, groups=patients):
        scaler, model = fit(x[train], t[train])
        predicted[test] = model.predict(scaler.transform(x[test]))
    return {
        "features": x.tolist(),
        "sources": sources,
        "patients": patients,
        "folds": k,
        "predicted": [names[i] for i in predicted],
        "accuracy": float((predicted == t).mean()),
    }


def main():
    rng = np.random.default_rng(22)
    cases = {
        "sklearn": sklearn.__version__,
        "group_kfold": [
            group_kfold_case(["a"] * 5 + ["b"] * 3 + ["c"] * 8 + ["d"] * 1 + ["e"] * 4, 3),
            # Ties: equal sizes are taken later name first.
            group_kfold_case(["p", "q", "r", "s", "t", "u", "p", "q", "r", "s"], 4),
            group_kfold_case([f"src/{i % 7}" for i in range(50)] + ["src/big"] * 20, 5),
            group_kfold_case(["x", "y", "x", "z", "y", "x"], 2),
        ],
        "logistic": [logistic_case(rng, 60, 5, 3), logistic_case(rng, 40, 4, 2)],
        "probe": probe_case(rng),
    }
    OUT.write_text(json.dumps(cases, indent=1) + "\n")
    print(f"wrote {OUT} (scikit-learn {sklearn.__version__})")


if __name__ == "__main__":
    main()
