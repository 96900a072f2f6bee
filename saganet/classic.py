"""The non-deep anchor: hand-crafted colour and texture features with a cross-validated classifier.

Colour and HED statistics, haematoxylin grey-level co-occurrence (GLCM), local binary patterns
and an optical-density histogram (scikit-image), then standardisation and either logistic
regression or an RBF-SVM, the classifier and its C chosen by stratified cross-validation inside the
training images (scikit-learn).
"""
from __future__ import annotations

import numpy as np
from skimage.color import rgb2gray, rgb2hed
from skimage.feature import graycomatrix, graycoprops, local_binary_pattern
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation")


def classic_features(rgb: np.ndarray) -> np.ndarray:
    feats = []
    x = rgb.reshape(-1, 3).astype(np.float64) / 255.0
    feats += [x.mean(0), x.std(0)]
    hed = rgb2hed(rgb).reshape(-1, 3)
    feats += [hed.mean(0), hed.std(0), np.percentile(hed, [10, 50, 90], axis=0).ravel()]
    h = rgb2hed(rgb)[..., 0]
    lo, hi = np.percentile(h, [1, 99])
    hq = np.clip((h - lo) / max(hi - lo, 1e-6) * 31, 0, 31).astype(np.uint8)
    glcm = graycomatrix(hq, distances=[1, 2, 4], angles=[0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=32, symmetric=True, normed=True)
    feats += [graycoprops(glcm, p).mean(axis=1) for p in GLCM_PROPS]
    grey = (rgb2gray(rgb) * 255).astype(np.uint8)
    for p, r in ((8, 1), (16, 2)):
        lbp = local_binary_pattern(grey, p, r, method="uniform")
        feats.append(np.histogram(lbp, bins=p + 2, range=(0, p + 2), density=True)[0])
    od = -np.log((rgb.astype(np.float64) + 1) / 256).sum(2)
    feats.append(np.histogram(od, bins=16, range=(0, 3), density=True)[0])
    return np.concatenate([np.ravel(f) for f in feats]).astype(np.float64)


def fit_classic(features: np.ndarray, labels: np.ndarray, seed: int = 0):
    """Standardise + (logistic regression | RBF-SVM); model and C picked by stratified CV inside
    the training images. Ties go to the first candidate (the simpler, linear model)."""
    folds = int(min(3, np.bincount(labels).min()))
    pipe = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=5000))])
    if folds < 2:  # one image in some class: nothing to cross-validate, keep the linear default
        return pipe.fit(features, labels)
    grid = [{"clf": [LogisticRegression(max_iter=5000)], "clf__C": [0.01, 0.1, 1.0, 10.0]},
            {"clf": [SVC(kernel="rbf", decision_function_shape="ovr")], "clf__C": [0.1, 1.0, 10.0, 100.0]}]
    search = GridSearchCV(pipe, grid, cv=StratifiedKFold(folds, shuffle=True, random_state=seed), scoring="balanced_accuracy")
    return search.fit(features, labels).best_estimator_


def classic_probs(model, features: np.ndarray) -> np.ndarray:
    """Class scores summing to one: logistic-regression probabilities, or a softmax over the
    SVM's one-vs-rest decision values (its argmax is the SVM's own prediction)."""
    if hasattr(model, "predict_proba"):
        return model.predict_proba(features)
    d = model.decision_function(features)
    if d.ndim == 1:  # two classes
        d = np.stack([-d, d], axis=1)
    e = np.exp(d - d.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
