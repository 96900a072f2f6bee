import numpy as np

from saganet.classic import classic_features, classic_probs, fit_classic
from saganet.data import load_dataset, load_images
from saganet.preprocess import Preprocessing, channel_stats
from saganet.stain import hed_jitter, reinhard_normalize, reinhard_target


def _crc(data_dir, n=6):
    samples, classes = load_dataset(data_dir / "crc_val_he_7k_test70")
    picked = [s for c in classes[:3] for s in [x for x in samples if x.label == c][:n // 3]]
    raw, picked, _ = load_images(picked)
    return raw, np.array([classes.index(s.label) for s in picked])


def test_preprocessing_roundtrip_and_tensor(data_dir):
    raw, _ = _crc(data_dir)
    prep = Preprocessing(scale=0.5, mean=(0.6, 0.4, 0.7), std=(0.2, 0.2, 0.2))
    im, m = prep.prepare(raw[0])
    assert im.shape == (112, 112, 3) and m.shape == (112, 112) and m.dtype == bool
    assert Preprocessing.from_dict(prep.to_dict()) == prep
    t = prep.to_tensor(np.stack([im, im]))
    assert t.shape == (2, 3, 112, 112)
    assert np.isclose(t[0, 0, 0, 0].item(), (im[0, 0, 0] / 255 - 0.6) / 0.2, atol=1e-5)
    mean, std = channel_stats([im])
    assert np.allclose(mean, (im.reshape(-1, 3) / 255).mean(0))


def test_reinhard_moves_images_to_target(data_dir):
    raw, _ = _crc(data_dir)
    target = reinhard_target(raw[:3])
    out = reinhard_normalize(raw[4], target)
    from saganet.stain import lab_stats

    assert out.dtype == np.uint8 and out.shape == raw[4].shape
    assert np.abs(lab_stats(out)[0] - np.array(target["mean"])).max() < np.abs(lab_stats(raw[4])[0] - np.array(target["mean"])).max() + 1e-6


def test_hed_jitter_is_small_and_seeded(data_dir):
    raw, _ = _crc(data_dir)
    a = hed_jitter(raw[0], np.random.default_rng(3))
    b = hed_jitter(raw[0], np.random.default_rng(3))
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - raw[0].astype(int)).mean() < 20


def test_classic_features_and_classifier(data_dir):
    raw, y = _crc(data_dir, 6)
    f = np.stack([classic_features(im) for im in raw])
    assert f.shape[0] == 6 and np.isfinite(f).all()
    assert np.array_equal(classic_features(raw[0]), f[0])
    clf = fit_classic(f, y)
    p = classic_probs(clf, f)
    assert p.shape == (6, 3) and np.allclose(p.sum(1), 1) and np.array_equal(p.argmax(1), clf.predict(f))


def test_classic_svm_scores_match_its_predictions():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 12)
    X = rng.normal(size=(36, 10))
    X[:, 0] += 3 * np.sin(y * 2.0)  # non-linear in the label, so the SVM has a chance
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    svm = make_pipeline(StandardScaler(), SVC(kernel="rbf")).fit(X, y)
    p = classic_probs(svm, X)
    assert np.allclose(p.sum(1), 1) and np.array_equal(p.argmax(1), svm.predict(X))
