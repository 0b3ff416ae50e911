"""scikit-learn estimators trained by fastbp: ``from fastbp.sklearn import MLPClassifier``.

Drop-in replacements for ``sklearn.neural_network.MLPClassifier`` and
``MLPRegressor`` (same parameters, defaults and fitted attributes), with
``sample_weight``, ``class_weight``, optimizer state kept across warm starts
and ``partial_fit``, and fastbp's ``backend``, ``n_threads`` and ``dtype``.
Needs scikit-learn and SciPy: ``pip install "fastbp[sklearn]"``; ``import fastbp``
never imports them.
"""

try:
    import sklearn  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("fastbp.sklearn needs scikit-learn: pip install 'fastbp[sklearn]'") from exc

from ._estimators import MLPClassifier, MLPRegressor

__all__ = ["MLPClassifier", "MLPRegressor"]
