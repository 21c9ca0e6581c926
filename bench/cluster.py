"""Unknown-face clustering: scikit-learn's HDBSCAN vs the ``hdbscan`` package, on real embeddings.

The faces are real LFW photos embedded with the real model (buffalo_sc; the labelled face is the
one nearest the centre), then clustered as unknown faces. Three sets:

  distractors  the 712 people of ``distractors/`` (2-3 photos each): people the index never saw
  mixed        those + the 408 people of ``faces/`` capped at ``--faces-cap`` photos each
  bald         dlib's collage of 4 bald actors (24 faces, labelled by hand by position below)

In the first two, faces are grouped ``--per-photo`` at a time (distinct people) into synthetic
photos, as on event photos; the collage is 24 separate photos, so each face has its own photo id.

Rows, each timed (median of ``--repeats``; a row slower than 10 s once) and scored by pairwise precision / recall / F1 against
the true identities (noise = a singleton):

  baseline         sklearn.cluster.HDBSCAN, dense ("brute"), min_cluster_size=2, min_samples=2
                   (its min_samples counts the point itself: hdbscan's 1), no epsilon
  sklearn eps=1.0  the same with cluster_selection_epsilon=1.0 (raises on NumPy 2.x, sklearn #33219)
  hdbscan ...      the ``hdbscan`` package, dense ("generic"), and the variants that were tuned
  pipeline         facepipeline.clustering.cluster_unknown_faces (hdbscan eps 1.0 + the root rule
                   + one face per photo), with the synthetic photo ids and with one photo per face

F1 and seconds are also given as ratios to the baseline of the same set. Then epsilon is swept on
two disjoint halves of the mixed people (chosen on one, checked on the other), and the install
cost of both packages is read from their installed metadata (wheel tag, size). Progress goes to
stderr, results to stdout; the last line is ``f1_ratio_vs_baseline=X time_ratio_vs_baseline=Y``
for the pipeline on the mixed set.

    .venv/bin/python bench/cluster.py [--faces-cap 10] [--per-photo 4] [--repeats 3] [--cache /tmp/emb.npz]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from facepipeline.clustering import UnknownFace, cluster_unknown_faces, pairwise_scores
from facepipeline.images import decode_image
from facepipeline.model import FaceModel

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
COLLAGE = "group_photos/dlib_bald_guys.jpg"
SLOW_ROW_S = 10.0
# The collage's 24 faces, labelled by hand: (x, y) of the face's centre in the photo's pixels.
COLLAGE_FACES = {
    "Vin_Diesel": [(148, 146), (638, 180), (388, 291), (141, 451), (647, 508), (154, 1374)],
    "Jason_Statham": [(392, 99), (958, 175), (393, 512), (959, 478), (143, 764), (498, 909)],
    "Bruce_Willis": [(859, 898), (1149, 841), (121, 1050), (1188, 1132), (459, 1338), (853, 1318)],
    "Dwayne_Johnson": [(1598, 240), (1884, 484), (1698, 749), (1167, 1388), (1515, 1396), (1871, 1386)],
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- real embeddings --------------------------------------------------------------------------------
def embed_portraits(model: FaceModel, folder: Path, cap: int) -> tuple[np.ndarray, list[str]]:
    """The central face of up to ``cap`` photos per person (folder name = identity)."""
    crops, labels = [], []
    for person in sorted(p for p in folder.iterdir() if p.is_dir()):
        for photo in sorted(person.glob("*.jpg"))[:cap]:
            image = decode_image(photo.read_bytes())
            detection = model.detect_central(image)
            if detection is not None:
                crops.append(model.align(image, detection))
                labels.append(person.name)
    return model.embed(np.stack(crops)), labels


def embed_collage(model: FaceModel) -> tuple[np.ndarray, list[str]]:
    """Every face of the collage, named by the hand-labelled centre nearest to it."""
    image = decode_image((DATA / COLLAGE).read_bytes())
    detections = model.detect(image)
    labelled = [(name, np.array(centre)) for name, centres in COLLAGE_FACES.items() for centre in centres]
    labels = []
    for detection in detections:
        name, centre = min(labelled, key=lambda item: np.linalg.norm(item[1] - detection.bbox.center))
        labels.append(name if np.linalg.norm(centre - detection.bbox.center) < 60 else f"unlabelled-{len(labels)}")
    return model.embed(np.stack([model.align(image, d) for d in detections])), labels


def load_sets(args: argparse.Namespace) -> dict[str, tuple[np.ndarray, list[str]]]:
    key = f"{args.pack}:{args.faces_cap}"
    if args.cache and args.cache.is_file():
        cached = np.load(args.cache, allow_pickle=False)
        if str(cached["key"]) == key:
            log(f"embeddings from {args.cache}")
            return {name: (cached[f"{name}_x"], cached[f"{name}_y"].tolist()) for name in ("distractors", "faces", "bald")}
    model = FaceModel.load(args.model_root, args.pack)
    sets = {}
    for name, make in (
        ("distractors", lambda: embed_portraits(model, DATA / "distractors", 3)),
        ("faces", lambda: embed_portraits(model, DATA / "faces", args.faces_cap)),
        ("bald", lambda: embed_collage(model)),
    ):
        start = time.perf_counter()
        sets[name] = make()
        log(f"embedded {name}: {len(sets[name][1])} faces in {time.perf_counter() - start:.0f} s")
    if args.cache:
        arrays = {f"{n}_{part}": np.asarray(v[i]) for n, v in sets.items() for i, part in enumerate("xy")}
        np.savez(args.cache, key=key, **arrays)
    return sets


def synthetic_photos(labels: list[str], per_photo: int, seed: int = 0) -> list[str]:
    """Photo ids: faces grouped ``per_photo`` at a time, never two of one person on a photo."""
    photos: list[list[int]] = []
    unfilled: list[list[int]] = []
    for index in np.random.default_rng(seed).permutation(len(labels)).tolist():
        target = next((p for p in unfilled if all(labels[i] != labels[index] for i in p)), None)
        if target is None:
            target = []
            photos.append(target)
            unfilled.append(target)
        target.append(index)
        if len(target) == per_photo:
            unfilled.remove(target)
    photo_of = [""] * len(labels)
    for number, members in enumerate(photos):
        for index in members:
            photo_of[index] = f"p{number}"
    return photo_of


# --- the rows ----------------------------------------------------------------------------------------
def sklearn_rows(X: np.ndarray) -> dict[str, Callable[[], list]]:
    from sklearn.cluster import HDBSCAN

    def run(**options) -> Callable[[], list]:
        base = {"min_cluster_size": 2, "min_samples": 2, "algorithm": "brute", "copy": True}
        return lambda: [int(v) if v >= 0 else None for v in HDBSCAN(**{**base, **options}).fit_predict(X)]

    return {"baseline (sklearn, no epsilon)": run(), "sklearn eps=1.0": run(cluster_selection_epsilon=1.0)}


def hdbscan_rows(X: np.ndarray) -> dict[str, Callable[[], list]]:
    import hdbscan

    def run(**options) -> Callable[[], list]:
        base = {"min_cluster_size": 2, "min_samples": 1, "algorithm": "generic", "cluster_selection_epsilon": 1.0}
        return lambda: [int(v) if v >= 0 else None for v in hdbscan.HDBSCAN(**{**base, **options}).fit_predict(X)]

    return {
        "hdbscan no epsilon": run(cluster_selection_epsilon=0.0),
        "hdbscan eps=1.0 (chosen)": run(),
        "hdbscan eps=1.0 min_samples=2": run(min_samples=2),
        "hdbscan eps=1.0 leaf": run(cluster_selection_method="leaf"),
        "hdbscan eps=0 metric=cosine": run(metric="cosine", cluster_selection_epsilon=0.0),
        "hdbscan eps=1.0 boruvka kd-tree": run(algorithm="boruvka_kdtree"),
    }


def pipeline_rows(X: np.ndarray, photos: list[str]) -> dict[str, Callable[[], list]]:
    def run(photo_ids: list[str]) -> Callable[[], list]:
        faces = [UnknownFace(f"f{i:05d}", photo_ids[i], None, X[i]) for i in range(len(X))]

        def labels() -> list:
            of = {f: c.cluster_id for c in cluster_unknown_faces(faces).clusters for f in c.face_ids}
            return [of.get(face.face_id) for face in faces]

        return labels

    return {"pipeline": run(photos), "pipeline, one photo per face": run([f"own{i}" for i in range(len(X))])}


def measure(rows: dict[str, Callable[[], list]], truth: list[str], repeats: int) -> list[dict]:
    results = []
    for name, fn in rows.items():
        seconds: list[float] = []
        try:
            while len(seconds) < repeats and sum(seconds) < SLOW_ROW_S:  # a slow row is timed once
                start = time.perf_counter()
                labels = fn()
                seconds.append(time.perf_counter() - start)
        except Exception as exc:  # a candidate that crashes is a result, not a bench failure
            results.append({"row": name, "error": f"{type(exc).__name__}: {exc}"})
            continue
        precision, recall, f1 = pairwise_scores(truth, labels)
        found = {v for v in labels if v is not None}
        results.append(
            {"row": name, "precision": precision, "recall": recall, "f1": f1, "clusters": len(found),
             "noise": labels.count(None), "seconds": statistics.median(seconds)}
        )
    return results


def print_table(title: str, results: list[dict]) -> None:
    base = results[0]
    print(f"\n== {title}")
    print(f"{'row':34} {'P':>6} {'R':>6} {'F1':>6} {'clusters':>8} {'noise':>6} {'s':>7} {'F1/base':>8} {'s/base':>7}")
    for r in results:
        if "error" in r:
            print(f"{r['row']:34} error: {r['error'][:90]}")
            continue
        print(
            f"{r['row']:34} {r['precision']:6.3f} {r['recall']:6.3f} {r['f1']:6.3f} {r['clusters']:8d} {r['noise']:6d}"
            f" {r['seconds']:7.2f} {r['f1'] / base['f1']:8.3f} {r['seconds'] / base['seconds']:7.2f}"
        )


def install_cost(package: str) -> dict:
    dist = importlib.metadata.distribution(package)
    tags = [line.split(": ", 1)[1] for line in (dist.read_text("WHEEL") or "").splitlines() if line.startswith("Tag: ")]
    size = sum(f.size or 0 for f in dist.files or [])
    requires = [r.split(";")[0] for r in dist.requires or [] if "extra ==" not in r]
    return {"package": package, "version": dist.version, "wheel_tags": tags, "installed_mb": round(size / 2**20, 1), "requires": requires}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-root", type=Path, default=REPO.parent / "shared" / "models")
    parser.add_argument("--pack", default="buffalo_sc")
    parser.add_argument("--faces-cap", type=int, default=10, help="photos per person of faces/ in the mixed set")
    parser.add_argument("--per-photo", type=int, default=4, help="faces per synthetic photo")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", type=Path, help="npz to keep the embeddings in between runs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    sets = load_sets(args)
    Xd, yd = sets["distractors"]
    Xf, yf = sets["faces"]
    scenarios = {
        "distractors": (Xd, yd, synthetic_photos(yd, args.per_photo)),
        "mixed": (np.concatenate([Xd, Xf]), yd + yf, synthetic_photos(yd + yf, args.per_photo)),
        "bald": (sets["bald"][0], sets["bald"][1], [f"tile{i}" for i in range(len(sets["bald"][1]))]),
    }
    report: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "sets": {}}
    for name, (X, truth, photos) in scenarios.items():
        X = X.astype(np.float64)
        log(f"clustering {name}: {len(truth)} faces of {len(set(truth))} people")
        rows = {**sklearn_rows(X), **hdbscan_rows(X), **pipeline_rows(X, photos)}
        results = measure(rows, truth, args.repeats)
        print_table(f"{name}: {len(truth)} faces, {len(set(truth))} people, {len(set(photos))} photos", results)
        report["sets"][name] = results

    # Epsilon, chosen on one half of the mixed people and checked on the other.
    import hdbscan

    X, truth, _ = scenarios["mixed"]
    half = np.array([int(hashlib.sha256(p.encode()).hexdigest(), 16) % 2 for p in truth])
    print("\n== epsilon sweep, mixed set split by person (hdbscan, min_samples=1): F1 half A / half B")
    report["epsilon_sweep"] = {}
    for eps in (0.0, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2):
        scores = []
        for h in (0, 1):
            labels = hdbscan.HDBSCAN(min_cluster_size=2, min_samples=1, algorithm="generic", cluster_selection_epsilon=eps).fit_predict(
                X[half == h].astype(np.float64)
            )
            scores.append(pairwise_scores([t for t, k in zip(truth, half, strict=True) if k == h], [v if v >= 0 else None for v in labels]))
        print(f"eps={eps:.2f} (cosine {1 - eps * eps / 2:.3f})  " + "  ".join(f"P={p:.3f} R={r:.3f} F1={f:.3f}" for p, r, f in scores))
        report["epsilon_sweep"][eps] = scores

    print("\n== install cost (installed metadata)")
    report["install"] = [install_cost(p) for p in ("hdbscan", "scikit-learn")]
    for item in report["install"]:
        wheel = ", ".join(item["wheel_tags"]) or "none (built from source)"
        print(f"{item['package']} {item['version']}: {item['installed_mb']} MB, wheel {wheel}; requires {', '.join(item['requires'])}")

    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    mixed = {r["row"]: r for r in report["sets"]["mixed"]}
    base, chosen = mixed["baseline (sklearn, no epsilon)"], mixed["pipeline"]
    print(f"f1_ratio_vs_baseline={chosen['f1'] / base['f1']:.3f} time_ratio_vs_baseline={chosen['seconds'] / base['seconds']:.2f}")


if __name__ == "__main__":
    main()
