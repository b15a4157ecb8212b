"""Typological similarity of languages and choice of the nearest training language (Ch. 02 / thesis Ch. 4).

The thesis picks, for each test language, the training language whose URIEL ``syntax_knn`` vector (lang2vec) has
the highest cosine, and fine-tunes under that language's subnetwork. The synthetic world supplies its own typology
vectors; both go through :func:`nearest_language`.

URIEL vectors are read from the data files that the ``lang2vec`` 1.1.2 wheel bundles (extra ``full``:
``pip install 'mlmc[full]'``). Its Python module imports ``pkg_resources``, which recent setuptools no longer ships,
so the arrays are loaded directly; they are the ones ``lang2vec.get_features(isos, "syntax_knn")`` returns.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics.pairwise import cosine_similarity

from mlmc.errors import check_choice

# feature set -> (file, source, feature-name prefix), as in lang2vec's FEATURE_SETS_DICT (complete, kNN-imputed sets)
URIEL_FEATURES = {
    "syntax_knn": ("feature_predictions.npz", "predicted", "S_"),
    "phonology_knn": ("feature_predictions.npz", "predicted", "P_"),
    "inventory_knn": ("feature_predictions.npz", "predicted", "INV_"),
}


def _lang2vec_data() -> Path:
    spec = importlib.util.find_spec("lang2vec")
    if spec is None or spec.origin is None:
        raise ImportError(
            "URIEL vectors need the 'lang2vec' package (10 MB, data bundled, works offline): "
            "pip install 'mlmc[full]'  (or: pip install --no-deps lang2vec==1.1.2)"
        )
    return Path(spec.origin).parent / "data"


def uriel_vectors(isos: Sequence[str], feature: str = "syntax_knn") -> dict[str, np.ndarray]:
    """URIEL feature vectors (float64) for ISO 639-3 codes or the 2-letter codes lang2vec maps; keys as given."""
    check_choice("feature", feature, list(URIEL_FEATURES))
    filename, source, prefix = URIEL_FEATURES[feature]
    data_dir = _lang2vec_data()
    letter_codes = json.loads((data_dir / "letter_codes.json").read_text())
    db = np.load(data_dir / filename)
    row = {code: i for i, code in enumerate(db["langs"].tolist())}
    cols = [i for i, name in enumerate(db["feats"].tolist()) if name.startswith(prefix)]
    src = db["sources"].tolist().index(source)
    codes = {iso: letter_codes.get(iso, iso) for iso in isos}
    unknown = [iso for iso, code in codes.items() if code not in row]
    if unknown:
        raise ValueError(f"parameter 'isos' has code(s) unknown to URIEL: {unknown}")
    data = db["data"]
    return {iso: data[row[code], cols, src].astype(np.float64) for iso, code in codes.items()}


def cosine_similarity_matrix(vectors: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Language x language cosine similarity of typology vectors."""
    if not vectors:
        raise ValueError("parameter 'vectors' must hold at least one language")
    names = list(vectors)
    matrix = cosine_similarity(np.stack([np.asarray(vectors[n], dtype=np.float64) for n in names]))
    return pd.DataFrame(matrix, index=names, columns=names)


def nearest_language(
    target: str | np.ndarray,
    sources: Sequence[str],
    vectors: Mapping[str, np.ndarray] | None = None,
) -> tuple[str, float]:
    """The source language with the highest cosine to ``target`` (a name in ``vectors`` or a vector) and that cosine.

    Without ``vectors``, names are looked up as URIEL ``syntax_knn`` vectors. Ties go to the first source listed.
    """
    sources = list(sources)
    if not sources:
        raise ValueError("parameter 'sources' must name at least one language")
    if vectors is None:
        vectors = uriel_vectors(sources + ([target] if isinstance(target, str) else []))
    missing = [s for s in sources if s not in vectors]
    if isinstance(target, str) and target not in vectors:
        missing.append(target)
    if missing:
        raise ValueError(f"parameter 'vectors' has no vector for {missing}")
    t = np.asarray(vectors[target] if isinstance(target, str) else target, dtype=np.float64)
    cos = cosine_similarity(t[None, :], np.stack([np.asarray(vectors[s], dtype=np.float64) for s in sources]))[0]
    best = int(np.argmax(cos))
    return sources[best], float(cos[best])
