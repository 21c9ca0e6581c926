"""Embedding throughput: the seed server's way vs. the recognizer's limit vs. the pipeline's stage.

All run in one process on the same LFW photos (up to 6 per person, people in sorted order), with
the labelled face's nominal box (x=68, y=68, w=115, h=115) as the "verified" box:

(a) seed      what the original server did: crop the verified box out of the photo and run
              insightface's full ``FaceAnalysis`` (SCRFD at 640x640 + ArcFace) on the crop, one
              face at a time. (a1) ``seed`` crops the box itself: SCRFD misses faces that fill
              its input, so it embeds almost nothing. (a2) ``seed_region`` crops the box grown
              2x, the smallest margin with which that loop finds (nearly) every face: its
              faces/s counts only the faces it embedded, and it is the seed ``ratio_vs_seed``
              compares with.
(b) limit     the recognizer alone on 112x112 crops aligned beforehand (untimed), in batches:
              (b1) one session with default threads, (b2) the pipeline's layout (one
              single-threaded session call per core, run from a thread pool). The faster is the
              limit: the best recognition alone can do on this machine.
(c) pipeline  ``facepipeline.embedding.embed_faces`` with production defaults: decode + detect in
              the box's region + align + batched recognition, all timed. (c2) is the same with no
              box (the face nearest the centre).

Repeats are interleaved (a1, a2, b1, b2, c, c2, a1, ...) so machine noise hits all alike; medians
are reported. (c) is checked against (b): embedded share, and mean cosine of the same face's
vectors. Progress goes to stderr, results to stdout; the last line is
``ratio_vs_limit=X.XX ratio_vs_seed=Y.YY``: pipeline faces/s over the limit's, and over the faces/s
of the seed's loop on the faces it finds (a2).

    .venv/bin/python bench/embed.py [--faces 600] [--seed-faces 200] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from facepipeline.embedding import FaceJob, embed_faces
from facepipeline.geometry import BBox
from facepipeline.images import decode_image
from facepipeline.model import FaceModel

REPO = Path(__file__).resolve().parents[1]
BOX = BBox(68, 68, 115, 115)  # nominal LFW box of the labelled (central) face
PER_PERSON = 6
SEED_REGION_SCALE = 2.0  # the seed's crop grown this much: the smallest margin where FaceAnalysis finds the faces
WARMUP_FACES = 8


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def select_photos(data: Path, count: int) -> list[Path]:
    """Up to PER_PERSON photos per person, people in sorted order, until ``count`` photos."""
    chosen: list[Path] = []
    for person in sorted(p for p in data.iterdir() if p.is_dir()):
        chosen.extend(sorted(person.glob("*.jpg"))[:PER_PERSON])
        if len(chosen) >= count:
            break
    return chosen[:count]


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


# --- (a) seed -------------------------------------------------------------------------------------
def load_face_analysis(model_root: Path, pack: str):
    """insightface's FaceAnalysis wants ``root/models/<pack>``; its chatter goes to stderr."""
    from insightface.app import FaceAnalysis

    root = model_root.parent if (model_root.parent / "models" / pack).is_dir() else model_root
    with contextlib.redirect_stdout(sys.stderr):
        app = FaceAnalysis(name=pack, root=str(root), providers=["CPUExecutionProvider"],
                           allowed_modules=["detection", "recognition"])
        app.prepare(ctx_id=-1, det_size=(640, 640))
    return app


def run_seed(app, photos: list[bytes], scale: float = 1.0) -> int:
    """Decode, crop the verified box (grown ``scale`` times), FaceAnalysis on the crop; returns faces embedded."""
    embedded = 0
    for data in photos:
        image = decode_image(data)
        box = BOX.expanded(scale).clipped(image.shape[1], image.shape[0]) or BOX
        crop = np.ascontiguousarray(image[int(box.y):int(box.y2), int(box.x):int(box.x2)])
        faces = app.get(crop)
        embedded += any(getattr(f, "embedding", None) is not None for f in faces)
    return embedded


# --- (b) limit ------------------------------------------------------------------------------------
def align_all(model: FaceModel, photos: list[bytes]) -> dict[int, np.ndarray]:
    """Aligned 112x112 crops of the central face, by photo index (untimed preparation)."""
    crops: dict[int, np.ndarray] = {}
    for index, data in enumerate(photos):
        image = decode_image(data)
        detection = model.detect_central(image)
        if detection is not None:
            crops[index] = model.align(image, detection)
    return crops


def batches(crops: np.ndarray, size: int) -> list[np.ndarray]:
    return [crops[i:i + size] for i in range(0, len(crops), size)]


def run_limit_single(model: FaceModel, crops: np.ndarray) -> np.ndarray:
    return np.concatenate([model.embed(batch) for batch in batches(crops, 32)])


def run_limit_pool(model: FaceModel, crops: np.ndarray) -> np.ndarray:
    with ThreadPoolExecutor(max_workers=model.workers) as pool:
        return np.concatenate(list(pool.map(model.embed, batches(crops, model.batch_size))))


# --- (c) pipeline ---------------------------------------------------------------------------------
def run_pipeline(model: FaceModel, keys: list[str], store: dict[str, bytes], bbox: BBox | None) -> dict[int, np.ndarray]:
    """``embed_faces`` over all faces; returns embeddings of the faces it embedded, by index."""
    jobs = [FaceJob(face_id=str(i), photo_sha256=key, bbox=bbox) for i, key in enumerate(keys)]
    return {int(r.face_id): r.embedding for r in embed_faces(model, jobs, store.__getitem__) if r.ok}


# --- driver ---------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "faces")
    parser.add_argument("--model-root", type=Path, default=REPO.parent / "shared" / "models")
    parser.add_argument("--pack", default="buffalo_sc")
    parser.add_argument("--faces", type=int, default=600, help="photos (one face each) for (b) and (c)")
    parser.add_argument("--seed-faces", type=int, default=200, help="the first this many of them for (a)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write all figures here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    paths = select_photos(args.data, args.faces)
    photos = [p.read_bytes() for p in paths]
    keys = [hashlib.sha256(data).hexdigest() for data in photos]
    store = dict(zip(keys, photos, strict=True))
    seed_photos = photos[: args.seed_faces]
    log(f"{len(photos)} photos of {len({p.parent for p in paths})} people; seed on {len(seed_photos)}")

    app = load_face_analysis(args.model_root, args.pack)
    single = FaceModel.load(args.model_root, args.pack, workers=1, intra_op_threads=0)
    pooled = FaceModel.load(args.model_root, args.pack)  # production defaults, also used for (c)
    log(f"pipeline model: {pooled.workers} workers, batch {pooled.batch_size}")

    log("aligning crops for (b) (untimed) ...")
    aligned = align_all(pooled, photos)
    crop_ids = sorted(aligned)
    crops = np.stack([aligned[i] for i in crop_ids])

    runs: dict[str, Callable[[], tuple[int, object]]] = {
        "seed": lambda: (run_seed(app, seed_photos), None),
        "seed_region": lambda: (run_seed(app, seed_photos, SEED_REGION_SCALE), None),
        "limit_single": lambda: (len(crops), run_limit_single(single, crops)),
        "limit_pool": lambda: (len(crops), run_limit_pool(pooled, crops)),
        "pipeline": lambda: _count(run_pipeline(pooled, keys, store, BOX)),
        "pipeline_nobox": lambda: _count(run_pipeline(pooled, keys, store, None)),
    }
    attempts = {"seed": len(seed_photos), "seed_region": len(seed_photos), "limit_single": len(crops), "limit_pool": len(crops),
                "pipeline": len(keys), "pipeline_nobox": len(keys)}

    log("warming up ...")
    run_seed(app, seed_photos[:WARMUP_FACES])
    run_seed(app, seed_photos[:WARMUP_FACES], SEED_REGION_SCALE)
    run_limit_single(single, crops[:WARMUP_FACES])
    run_limit_pool(pooled, crops[: pooled.batch_size * pooled.workers])
    run_pipeline(pooled, keys[:WARMUP_FACES], store, BOX)
    run_pipeline(pooled, keys[:WARMUP_FACES], store, None)

    seconds: dict[str, list[float]] = {name: [] for name in runs}
    embedded: dict[str, int] = {}
    outputs: dict[str, object] = {}
    for rep in range(args.repeats):
        for name, fn in runs.items():
            elapsed, (count, output) = timed(fn)
            seconds[name].append(elapsed)
            embedded[name] = count
            outputs.setdefault(name, output)
            log(f"  repeat {rep + 1}/{args.repeats} {name:15s} {elapsed:6.2f} s  {count / elapsed:7.1f} faces/s")

    figures = summarise(seconds, embedded, attempts)
    figures["faces_per_call"] = getattr(pooled, "faces_per_call", pooled.batch_size)
    figures["cosine_pipeline_vs_limit"] = mean_cosine(outputs["pipeline"], dict(zip(crop_ids, outputs["limit_single"], strict=True)))
    figures["cosine_nobox_vs_limit"] = mean_cosine(outputs["pipeline_nobox"], dict(zip(crop_ids, outputs["limit_single"], strict=True)))
    report(figures, pooled)
    if args.json:
        args.json.write_text(json.dumps(_finite(figures), indent=2))
        log(f"wrote {args.json}")


def _finite(value: object) -> object:
    """JSON has no infinity: an undefined ratio (seed embedded nothing) is written as null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return None if isinstance(value, float) and not np.isfinite(value) else value


def _count(result: dict[int, np.ndarray]) -> tuple[int, dict[int, np.ndarray]]:
    return len(result), result


def summarise(seconds: dict[str, list[float]], embedded: dict[str, int], attempts: dict[str, int]) -> dict:
    figures: dict = {"methods": {}}
    for name, times in seconds.items():
        median = statistics.median(times)
        per_s = 1 / median if median > 0 else 0.0
        figures["methods"][name] = {
            "faces_per_s": embedded[name] * per_s, "attempts_per_s": attempts[name] * per_s,
            "embedded": embedded[name], "attempts": attempts[name], "share": embedded[name] / max(1, attempts[name]),
            "seconds": times, "median_s": median,
        }
    methods = figures["methods"]
    limit = max(("limit_single", "limit_pool"), key=lambda n: methods[n]["faces_per_s"])
    figures["limit_from"] = limit
    figures["ratio_vs_limit"] = methods["pipeline"]["faces_per_s"] / methods[limit]["faces_per_s"]
    seed, seed_region = methods["seed"], methods["seed_region"]
    # The seed's loop on the faces it finds at all: with the box grown 2x it finds (nearly) every one.
    figures["ratio_vs_seed"] = methods["pipeline"]["faces_per_s"] / (seed_region["faces_per_s"] or float("nan"))
    # On the tight crop it finds almost none; credited with every face it *tried*, it gives a lower
    # bound that stays finite even when it embeds nothing.
    figures["ratio_vs_seed_tight_attempts"] = methods["pipeline"]["faces_per_s"] / (seed["attempts_per_s"] or float("nan"))
    figures["seed_embedded_share"] = seed["share"]
    figures["seed_region_embedded_share"] = seed_region["share"]
    return figures


def mean_cosine(a: dict[int, np.ndarray], b: dict[int, np.ndarray]) -> dict:
    common = sorted(a.keys() & b.keys())
    cos = [float(np.dot(a[i], b[i])) for i in common]  # both are L2-normalised
    return {"faces": len(common), "mean": statistics.fmean(cos) if cos else float("nan"), "min": min(cos, default=float("nan"))}


def report(figures: dict, model: FaceModel) -> None:
    m = figures["methods"]
    per_call = getattr(model, "faces_per_call", model.batch_size)  # FaceModel may split a batch into calls
    notes = {
        "seed": f"FaceAnalysis on the box crop, 1 at a time; {m['seed']['attempts_per_s']:.1f} attempts/s",
        "seed_region": f"FaceAnalysis on the box grown {SEED_REGION_SCALE:g}x, 1 at a time; faces/s = faces it embedded",
        "limit_single": f"recognizer only, 1 session default threads, batch 32, {min(per_call, 32)} face(s)/call",
        "limit_pool": f"recognizer only, {model.workers} workers x 1 thread, batch {model.batch_size}, {per_call} face(s)/call",
        "pipeline": "embed_faces, verified box, production defaults; cos vs limit "
                    f"{figures['cosine_pipeline_vs_limit']['mean']:.3f} (min {figures['cosine_pipeline_vs_limit']['min']:.3f})",
        "pipeline_nobox": "embed_faces, bbox=None (central face); cos vs limit "
                          f"{figures['cosine_nobox_vs_limit']['mean']:.3f}",
    }
    print(f"{'method':16s} {'faces/s':>8s} {'embedded':>12s} {'share':>7s}  notes")
    for name, row in m.items():
        mark = " *" if name == figures["limit_from"] else ""
        print(f"{name + mark:16s} {row['faces_per_s']:8.1f} {row['embedded']:>5d}/{row['attempts']:<6d} "
              f"{row['share']:7.1%}  {notes[name]}")
    print("(* = the limit: the faster recognizer-only configuration; faces/s are medians)")
    print(f"seed on the tight box crop: embedded {figures['seed_embedded_share']:.1%}; pipeline / its attempts/s = "
          f"{figures['ratio_vs_seed_tight_attempts']:.2f}")
    print(f"ratio_vs_seed: pipeline / seed_region faces/s (it embedded {figures['seed_region_embedded_share']:.1%} of the faces)")
    print(f"ratio_vs_limit={figures['ratio_vs_limit']:.2f} ratio_vs_seed={figures['ratio_vs_seed']:.2f}")


if __name__ == "__main__":
    main()
