"""The code location as Dagster tools see it, and the rule that the core stays Dagster-free."""

import os
import subprocess
import sys

import pytest

from dagster import AssetKey

from definitions import defs
from tests.conftest import MODEL_ROOT, PACK, REPO, environment_without_settings

BIN = os.path.dirname(sys.executable)


def test_the_code_location_has_the_pipeline_we_expect():
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == {
        "verified_faces", "cached_photos", "face_embeddings", "face_index", "index_metrics", "promoted_index", "face_descriptors",
        "training_session", "face_suggestions", "unknown_face_clusters", "evaluation_plot",
    }
    upstream = {key.to_user_string(): {p.to_user_string() for p in graph.get(key).parent_keys} for key in graph.get_all_asset_keys()}
    assert upstream == {
        "verified_faces": set(),
        "cached_photos": {"verified_faces"},
        "face_embeddings": {"verified_faces", "cached_photos"},
        "face_index": {"verified_faces", "face_embeddings"},
        "index_metrics": {"face_index"},
        "promoted_index": {"face_index", "index_metrics"},
        "face_descriptors": {"verified_faces", "face_embeddings"},
        "training_session": {
            "verified_faces", "cached_photos", "face_embeddings", "face_index", "index_metrics", "promoted_index",
            "face_descriptors",
        },
        "face_suggestions": {"promoted_index"},
        "unknown_face_clusters": {"face_suggestions"},
        "evaluation_plot": {"index_metrics"},
    }
    assert graph.get(AssetKey("face_suggestions")).partitions_def.name == "events"
    assert defs.resolve_job_def("recognize").partitions_def.name == "events"
    sensor = defs.resolve_sensor_def("new_event_photos")
    assert sensor.job_name == "recognize" and sensor.default_status.value == "RUNNING"
    assert defs.resolve_sensor_def("auto_retrain").job_name == "retrain"
    for name in ("auto_retrain", "retrain_run_failed", "retrain_run_canceled", "evaluation_reports"):
        assert defs.resolve_sensor_def(name).default_status.value == "RUNNING"
    job = defs.resolve_job_def("retrain")
    assert {hook.name for hook in job.hook_defs} == {"mark_session_failed"}
    embedding_steps = defs.get_assets_def("face_embeddings").node_def  # the journal is pruned after the table is published
    assert {n.name: {hook.name for hook in n.hook_defs} for n in embedding_steps.nodes} == {
        "split_by_event": set(), "embed_event": set(), "combine_embeddings": {"prune_embedding_journal"},
    }
    assert job.tags["facepipeline/retrain"] == "true"  # the run queue's one-at-a-time limit keys on it
    checks = {(key.asset_key.to_user_string(), key.name) for key in job.asset_layer.asset_graph.asset_check_keys}
    assert checks == {("verified_faces", "dataset_valid"), ("face_embeddings", "embeddings_sane"),
                      ("face_index", "index_consistent"), ("index_metrics", "no_regression")}
    assert all(graph.get_check_spec(key).blocking for key in job.asset_layer.asset_graph.asset_check_keys)
    schedule = defs.resolve_schedule_def("nightly_full_retrain")
    assert schedule.cron_schedule == "0 3 * * *" and schedule.default_status.value == "STOPPED"


def test_the_clis_retrain_job_is_built_once_per_settings_and_secrets_set(tmp_path, monkeypatch):
    """Dagster asks a reconstructable job for its definition several times per run."""
    from definitions import retrain_job_from_environment

    monkeypatch.setenv("FACEPIPELINE_HOME", str(tmp_path / "a"))
    monkeypatch.delenv("SUPABASE_DB_URL", raising=False)
    first = retrain_job_from_environment()
    assert retrain_job_from_environment() is first and first.name == "retrain"
    monkeypatch.setenv("SUPABASE_DB_URL", "postgresql://user:secret@127.0.0.1:9/db")
    with_secret = retrain_job_from_environment()
    assert with_secret is not first  # the face source now reads the connection string, by name
    monkeypatch.setenv("FACEPIPELINE_HOME", str(tmp_path / "b"))
    assert retrain_job_from_environment() is not with_secret  # another home: another job


def test_every_schedules_run_config_is_valid_and_means_what_it_says():
    from dagster import build_schedule_context, validate_run_config

    schedule = defs.resolve_schedule_def("nightly_full_retrain")
    [request] = schedule.evaluate_tick(build_schedule_context()).run_requests
    job = defs.resolve_job_def(schedule.job_name)
    resolved = validate_run_config(job, request.run_config)  # raises on config the job does not accept
    assert resolved["resources"]["retrain_options"]["config"]["mode"] == "full"


def test_a_connection_string_in_the_source_setting_is_refused_so_no_password_reaches_the_ui(tmp_path):
    import pytest

    from definitions import build_definitions
    from facepipeline.errors import SourceError
    from facepipeline.settings import Settings

    settings = Settings.from_env({"FACEPIPELINE_HOME": str(tmp_path), "FACEPIPELINE_SOURCE": "postgresql://u:pw@db:5432/g"})
    with pytest.raises(SourceError, match="SUPABASE_DB_URL") as caught:
        build_definitions(settings)
    assert "pw" not in str(caught.value).replace("password", "")


def test_dagster_definitions_validate_and_dg_check_defs_pass():
    env = {**os.environ, "DAGSTER_HOME": ""}
    env.pop("DAGSTER_HOME")
    for command in ([f"{BIN}/dagster", "definitions", "validate", "-w", "workspace.yaml"], [f"{BIN}/dg", "check", "defs"]):
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-2000:])


def test_the_domain_core_imports_no_dagster():
    code = (
        "import importlib, pkgutil, sys, facepipeline\n"
        "for m in pkgutil.walk_packages(facepipeline.__path__, 'facepipeline.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in ('dagster', 'dagster_shared')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_real_environment_variables_win_over_the_checkouts_defaults_in_the_code_location(tmp_path):
    """``dagster dev`` imports definitions.py: the checkout's facepipeline.env fills only what is unset."""
    env = environment_without_settings(FACEPIPELINE_SOURCE=f"folder:{tmp_path}")
    script = (
        "import os, definitions; r = definitions.defs.resources;"
        "print(r['face_source'].source, '|', r['face_model'].pack, '|', os.environ['FACEPIPELINE_HOME'])"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    source, pack, home = (part.strip() for part in done.stdout.strip().splitlines()[-1].split("|"))
    assert source == f"folder:{tmp_path}"  # the real variable, not the checkout's "embedded"
    assert pack == "buffalo_sc" and home == str(REPO / ".facepipeline")  # defaults from facepipeline.env, resolved


@pytest.mark.parametrize("entry", ["definitions", "cli.main"])
def test_the_code_location_and_the_cli_give_freed_arrow_memory_back(entry):
    """Arrow's default allocator (mimalloc) keeps freed memory, so a run's RSS only grows with the
    tables it held; the entry points choose the system allocator before pyarrow loads, and a
    10,000 x 512 table freed is handed back."""
    code = (
        f"import {entry}, gc, pyarrow as pa, numpy as np\n"
        "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20\n"
        "base = rss()\n"
        "t = pa.table({'v': pa.FixedSizeListArray.from_arrays(pa.array(np.ones(10000 * 512, np.float32)), 512)})\n"
        "t = t.take(pa.array(np.arange(10000)[::-1]))\n"
        "held = rss() - base\n"
        "del t; gc.collect()\n"
        "print(pa.default_memory_pool().backend_name, round(held), round(rss() - base))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    backend, held, left = done.stdout.split()
    assert backend == "system", done.stderr[-2000:]
    assert int(held) >= 19 and int(left) < int(held) / 2  # 20 MiB held, most of it given back


def test_a_detection_reads_the_graphs_with_onnx_and_never_imports_insightface_scipy_or_scikit_image():
    """onnx reads the recognizer's graph (and fixes the detector's input size) at the first
    detection; a process that embeds nothing skips it, as a retrain with nothing new does (it loads
    the model only for its fingerprint). The InsightFace package, which would bring SciPy and
    scikit-image (0.3-0.5 s), is never imported: its detection and alignment are reimplemented."""
    probe = (
        "import sys; from pathlib import Path; import numpy as np; import definitions, cli.retrain, cli.main\n"
        "from facepipeline.model import FaceModel\n"
        "loaded = lambda: sorted(m for m in ('insightface', 'onnx', 'scipy', 'skimage') if m in sys.modules)\n"
        f"model = FaceModel.load(Path({str(MODEL_ROOT)!r}), {PACK!r}); print(loaded(), model.embedding_dim)\n"
        "from facepipeline.model.face_model import Detection; from facepipeline.geometry import BBox\n"
        "image = np.zeros((160, 160, 3), np.uint8); model.detect(image)\n"
        "points = np.array([[50, 60], [100, 60], [75, 90], [55, 120], [95, 120]], np.float32)\n"
        "model.embed(model.align(image, Detection(BBox(40, 40, 80, 100), 0.9, points))[None]); print(loaded())\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["[] 512", "['onnx']"]


def _usual_thresholds() -> list[int]:
    """The collector's thresholds of a plain Python process here (CPython's defaults)."""
    done = subprocess.run([sys.executable, "-c", "import gc; print(*gc.get_threshold())"], capture_output=True, text=True, check=True)
    return [int(n) for n in done.stdout.split()]


def test_the_code_location_freezes_what_it_loaded_and_keeps_the_usual_collections():
    """Run workers and code servers import the code location: Dagster and it stay alive as long as
    the process, so later full collections need not walk them; the thresholds are left alone."""
    code = "import gc; import definitions; print(*gc.get_threshold(), gc.get_freeze_count())"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    *thresholds, frozen = (int(n) for n in done.stdout.split())
    assert thresholds == _usual_thresholds() and frozen > 100_000


OLD_CYCLE_PROBE = """\
import gc, weakref
from cli.collector import freeze_what_is_loaded
loaded = [[] for _ in range(1_000_000)]  # what a command's start-up leaves: long-lived objects
gc.collect()
freeze_what_is_loaded()
class Cycle: pass
c = Cycle(); c.me = c; gone = weakref.ref(c)
gc.collect(1)  # the cycle reaches the oldest generation...
del c  # ...and becomes garbage there, which only a full collection frees
kept = []
while gone() is not None and len(kept) < 400_000:
    kept.append([])
print(len(kept))
"""


def test_after_freezing_the_start_up_an_old_garbage_cycle_is_freed_at_the_usual_pace():
    """CPython runs a full collection only once a quarter as many objects as it last counted
    long-lived have been added: still counting the frozen start-up, a run's old garbage waited for
    250,000 new objects here (37 MiB more at 10,000 photos); after freezing, it is freed as in any
    process. (CPython 3.11's collector, the one pyproject.toml allows.)"""
    done = subprocess.run([sys.executable, "-c", OLD_CYCLE_PROBE], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout) < 120_000


CLI_GC_PROBE = """\
import gc, sys
from contextlib import contextmanager
import cli.main, cli.retrain
real_open_instance = cli.retrain.open_instance
frozen = []

@contextmanager
def open_instance():
    frozen.append(gc.get_freeze_count())
    print("start-up", gc.get_threshold()[0])
    with real_open_instance() as instance:
        yield instance

def execute_job(*args, **kwargs):
    print("run", gc.get_threshold()[0], gc.get_freeze_count() > frozen[0])
    raise SystemExit(0)

cli.retrain.open_instance, cli.retrain.execute_job = open_instance, execute_job
sys.argv = ["facepipeline", "retrain", "--source", "folder:" + sys.argv[1]]
cli.main.run()
"""


def test_a_cli_retrain_collects_rarely_while_it_starts_and_as_usual_during_its_run(tmp_path):
    """The command's start-up (Dagster, the code location, the instance) makes millions of objects
    that live to its end: collections every 50,000 new objects then; once the instance is open, what
    it loaded is frozen (more than the code location froze on its import), and the run is collected
    with the usual thresholds (the raised ones held up to 58 MiB more of cyclic garbage at 10,000
    photos). The probe replaces only the run itself."""
    (tmp_path / "faces" / "someone").mkdir(parents=True)
    env = environment_without_settings(FACEPIPELINE_HOME=str(tmp_path / "home"), FACEPIPELINE_MODEL_ROOT=str(MODEL_ROOT), FACEPIPELINE_MODEL=PACK)
    done = subprocess.run([sys.executable, "-c", CLI_GC_PROBE, str(tmp_path / "faces")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.stdout.splitlines() == ["start-up 50000", f"run {_usual_thresholds()[0]} True"], done.stderr[-2000:]


NO_JOB_GC_PROBE = """\
import gc, importlib, sys
import cli.main
module, handler = sys.argv[1].split(":")
module = importlib.import_module(module)
at_start = gc.get_freeze_count()

def probe(args):
    print(gc.get_threshold()[0], gc.get_freeze_count() > at_start)
    return 0

setattr(module, handler, probe)
sys.argv = ["facepipeline", *sys.argv[2:]]
cli.main.run()
"""


@pytest.mark.parametrize("handler, command", [("cli.versions:versions", ["versions"]), ("cli.recognize:clusters", ["clusters"])])
def test_a_command_that_runs_no_job_collects_as_usual_once_its_module_is_loaded(tmp_path, handler, command):
    """``prepare``, ``config calibrate``, ``search`` or ``clusters`` (showing them) read the gallery
    or load the model without opening an instance: their start-up ends with their module's import."""
    env = environment_without_settings(FACEPIPELINE_HOME=str(tmp_path / "home"))
    done = subprocess.run([sys.executable, "-c", NO_JOB_GC_PROBE, handler, *command], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == [str(_usual_thresholds()[0]), "True"], done.stderr[-2000:]
