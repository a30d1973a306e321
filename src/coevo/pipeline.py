"""The one-command compression pipeline: teacher -> search -> fine-tune -> export -> benchmark.

Each stage reads the previous stage's folder and writes its own under the run
folder. A stage that finished leaves ``stage.json``; on ``resume`` finished
stages are skipped and an interrupted stage resumes from its own checkpoint.
The run records the data it used (folder, images per split, content
fingerprint) in ``data/stage.json``, whether the images are yours (used where
they are, never written into) or the built-in set (built in ``data/``). A
resume on other images is refused; a resume may change settings only of
stages that have not finished.

Under torchrun (``torchrun --nproc_per_node N -m coevo compress ...``) every
rank runs the pipeline: teacher training, search and fine-tuning run on all
ranks (:mod:`coevo.core.distributed`); data, export and bench run on rank 0 while
the others wait; rank 0 alone writes.

    RUN_DIR/
      config.yaml      resolved config of the whole job
      data/            the built-in data set (when data.root is not set; a folder you give is used where it is)
      teacher/         coevo training run (or teacher.json pointing at the user's checkpoints)
      supernet/        weight-sharing supernet pair (only with search.fitness: supernet; coevo.train.supernet)
      search/          co-evolutionary search run
      finetune/        fine-tuned slim pair (G_A.pt, G_B.pt)
      export/          torch.export / ONNX (+ INT8) / safetensors files, parity and deploy report
      bench/           latency of teacher and compressed, side by side (eager and the deployed runtime)
"""
from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from .core import distributed
from .config import Config, diff_configs, dump_config
from .core.files import atomic_write_text, remove_orphan_temps
from .models.teacher import TeacherPaths, find_teacher, resolve_teacher
from .core.inputs import check_config_file, check_same_inputs, inputs_record, teacher_files, write_inputs
from .core.runlock import check_not_running, lock_run_dir, releasing
from .core.runs import remove_killed_renders
from .core.outputs import check_outputs_apart, data_input, teacher_input
from .core.runs import (
    RUN_MARKER, RunDirError, mark_run_dir, remove_run_dir, remove_run_entry, run_entries, undo_failed_start,
)

log = logging.getLogger(__name__)

STAGES = ("data", "teacher", "search", "finetune", "export", "bench")
# Run between teacher and search when search.fitness is supernet (the weights candidates are cut from).
OPTIONAL_STAGES = ("supernet",)
# The first checkpoints of the stages that take long: a run that fails before any of them
# holds nothing worth resuming (coevo.core.runs.undo_unstarted_run).
UNSTARTED = ("teacher/checkpoint.pt", "supernet/checkpoint.pt", "search/state.pt",
             "finetune/checkpoint.pt", "finetune/stage.json")
# Under torchrun these stages run on every rank; the others (cheap, or measuring one
# process: data, export, bench) run on rank 0 while the other ranks wait.
DISTRIBUTED_STAGES = ("teacher", "supernet", "search", "finetune")
# The config sections each stage reads first; top-level keys (seed, device) belong to every stage.
STAGE_SECTIONS = {"data": ("data",), "teacher": ("model", "train"), "supernet": ("supernet",),
                  "search": ("search",),
                  "finetune": ("finetune",), "export": ("export",), "bench": ("bench",)}


@dataclass
class StageResult:
    name: str
    path: Path
    seconds: float
    skipped: bool = False
    info: Dict = field(default_factory=dict)


def stage_done(path: Path) -> bool:
    return (path / "stage.json").is_file()


def _mark_done(path: Path, name: str, seconds: float, info: Dict | None = None) -> None:
    record = {"stage": name, "seconds": round(seconds, 2), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    record.update(info or {})
    atomic_write_text(path / "stage.json", json.dumps(record, indent=2))


def _stage_seconds(path: Path) -> float:
    try:
        return float(json.loads((path / "stage.json").read_text()).get("seconds", 0.0))
    except (OSError, ValueError):
        return 0.0


class Pipeline:
    """Runs the stages of a compression job in order; see the module docstring for the layout.

    ``teacher`` is an existing teacher: a coevo run or reference checkpoint folder, or
    :class:`TeacherPaths` (e.g. two generator files, :func:`resolve_teacher`); without it
    the teacher is trained from ``cfg``. ``on_stage`` is called with
    each :class:`StageResult` (the CLI uses it to print progress).
    """

    def __init__(self, cfg: Config, out_dir: str | Path, teacher: Optional[str | Path | TeacherPaths] = None,
                 resume: bool = False, force: bool = False,
                 on_stage: Optional[Callable[[StageResult], None]] = None) -> None:
        self.cfg = copy.deepcopy(cfg)  # resolved below (data.root); the caller's config stays as it was
        self.out = Path(out_dir)
        self.data: Dict = {}  # the data record of this run (coevo.data.record.data_record)
        # A given teacher is resolved (and checked) now, before any stage runs.
        self.teacher_src: Optional[TeacherPaths] = (
            teacher if teacher is None or isinstance(teacher, TeacherPaths) else resolve_teacher(teacher))
        if self.teacher_src is not None:
            from .evaluation.perceptual import resolve_perceptual

            resolve_perceptual(self.cfg.search.perceptual, self.teacher_src.has_discriminators,
                               self.cfg.search.lpips_net)
        from .config import COMMAND_STAGES, check_resources

        check_resources(self.cfg, COMMAND_STAGES["compress"])  # what later stages need, before the teacher
        self.resume = resume
        self.force = force
        self.on_stage = on_stage or (lambda r: None)
        self.results: List[StageResult] = []

    # -- folders
    def dir(self, stage: str) -> Path:
        return self.out / stage

    def prepare(self) -> None:
        check_outputs_apart(self.out, {"data folder": data_input(self.cfg.data.root, self.out),
                                       "teacher": teacher_input(self.teacher_src)})
        check_not_running(self.out)  # before --force may delete it
        if run_entries(self.out):
            if self.force:
                remove_run_dir(self.out)
            elif not self.resume:
                raise RunDirError(
                    f"{self.out} already exists and is not empty; pass --resume to continue that run, "
                    "--force to overwrite it, or choose another --out"
                )
            elif not (self.out / RUN_MARKER).exists() and not (self.out / "config.yaml").exists():
                # Resuming replaces unfinished stage folders: only ever inside a coevo run.
                raise RunDirError(f"cannot resume {self.out}: it holds no coevo run (no {RUN_MARKER} or "
                                  "config.yaml); choose another --out to start one")
        self.out.mkdir(parents=True, exist_ok=True)
        if self.resume:
            remove_orphan_temps(self.out)
            remove_killed_renders(self.out)  # locked by check_not_running above
        if not run_entries(self.out) or not (self.out / RUN_MARKER).exists():
            # a new run, or a pipeline run from before markers (it holds its config.yaml, checked above)
            mark_run_dir(self.out, "compress")
        lock_run_dir(self.out)
        if self.resume and (self.out / "config.yaml").exists():
            check_config_file(self.out)
            self._check_resumable()
            check_same_inputs(self.out, self._teacher_files())
        dump_config(self.cfg, self.out / "config.yaml")
        write_inputs(self.out, inputs_record(self.cfg, self._teacher_files()))

    def _teacher_files(self) -> Dict[str, Path]:
        """The given teacher's files (``--teacher`` now, or recorded by the teacher stage); none for a trained one."""
        paths = self.teacher_src
        if paths is None and (self.dir("teacher") / "teacher.json").is_file():
            paths = TeacherPaths.from_dict(json.loads((self.dir("teacher") / "teacher.json").read_text()))
        return teacher_files(paths) if paths is not None else {}

    def _check_resumable(self) -> None:
        """Refuse a resume whose config changes a setting of a stage that has already finished."""
        from .config import load_config

        old = load_config(self.out / "config.yaml")
        blocked = []
        for change in diff_configs(old, self.cfg):
            section = change.split(" ", 1)[0].split(".")[0]
            owners = [st for st, secs in STAGE_SECTIONS.items() if section in secs] or list(STAGES)
            done = [st for st in owners if stage_done(self.dir(st))]
            if done:
                blocked.append(f"{change} (stage {done[0]} has finished)")
        if blocked:
            raise RunDirError(
                f"cannot resume {self.out}: the config changes settings of finished stages: "
                f"{', '.join(blocked)}. Resume with the run's settings for those (drop these --set values), "
                "or start a new run. Settings of stages that have not finished may change"
            )

    # -- stages
    def _open_stage(self, name: str, path: Path):
        """``(seconds, None)`` for a finished stage, else ``(None, resume)``; removes a stage folder
        that was killed before its first write."""
        if stage_done(path):
            return _stage_seconds(path), None
        # A stage folder holding its config.yaml was interrupted mid-run: resume it.
        # One without (killed before its first write) starts over.
        resume = (path / "config.yaml").is_file()
        if resume:
            log.info("stage %s: resuming in %s", name, path)
        elif path.exists():
            remove_run_entry(path, self.out)
        return None, resume

    def _run_stage(self, name: str, fn: Callable[[Path, bool], Dict]) -> StageResult:
        """Run one stage. Under torchrun the stages in :data:`DISTRIBUTED_STAGES` run on every
        rank; the others run on rank 0 while the rest wait. Rank 0 alone touches stage folders."""
        path = self.dir(name)
        done, resume = distributed.on_main(self._open_stage, name, path)
        if done is not None:
            result = StageResult(name, path, done, skipped=True)
        else:
            t0 = time.perf_counter()
            if name in DISTRIBUTED_STAGES:
                info = fn(path, resume) or {}
            else:
                info = distributed.on_main(fn, path, resume) or {}
            seconds = time.perf_counter() - t0
            if self.data and "data" not in info:  # which images this stage saw (full record: data/stage.json)
                info = {**info, "data_fingerprint": self.data["fingerprint_all"]}
            distributed.on_main(_mark_done, path, name, seconds, info)
            result = StageResult(name, path, seconds, info=info)
        self.results.append(result)
        self.on_stage(result)
        return result

    def data_root(self) -> Path:
        """``data.root`` when given (always used as it is), else the run's own ``data/`` folder."""
        from .data import resolve_root

        root = self.cfg.data.root
        if not root and self.resume and (self.out / "config.yaml").is_file():
            from .config import load_config

            root = load_config(self.out / "config.yaml").data.root
        if root and Path(root).exists():
            return Path(root).resolve()
        if (self.dir("data") / "meta.json").is_file():  # a moved or copied run with its own built-in set
            return self.dir("data").resolve()
        return Path(resolve_root(self.cfg.data, self.out) if not root else Path(root).resolve())

    @releasing
    def run(self) -> List[StageResult]:
        """Run every stage (CPU threads are the caller's: the CLI applies ``--threads``/``threads``).

        Under torchrun every rank calls it: see :data:`DISTRIBUTED_STAGES`.
        """
        self.cfg.data.root = str(distributed.on_main(self.data_root))
        self.data, self.results = distributed.on_main(self._start)
        self._run_stage("teacher", self._teacher)
        if self.cfg.search.fitness == "supernet":  # the weights every candidate of the search is cut from
            self._run_stage("supernet", self._supernet)
        self._run_stage("search", self._search)
        self._run_stage("finetune", self._finetune)
        self._run_stage("export", self._export)
        self._run_stage("bench", self._bench)
        return self.results

    def _start(self):
        """The run folder and the data stage (rank 0); returns the data record and the stage results."""
        # Bad data (or any failure) before the first real work leaves nothing that blocks a plain rerun.
        with undo_failed_start(self.out, resume=self.resume):
            self.prepare()
            self._run_stage("data", self._data)
            self._check_data()
        return self.data, self.results

    def _data(self, path: Path, resume: bool) -> Dict:
        """Use the given folder, or build the built-in set (only into a missing, empty or built-in folder)."""
        from .data import data_record, ensure_data_root
        from .data.record import short

        ensure_data_root(self.cfg.data)
        self.data = data_record(self.cfg.data.root, self.cfg.data.skip_bad_images)
        log.info("data: %s", short(self.data))
        return {"data": self.data}

    def _check_data(self) -> None:
        """On resume, the data must be the data the run started with (by content, not by path)."""
        from .data import check_same_data, data_record

        saved = json.loads((self.dir("data") / "stage.json").read_text()).get("data")
        if not self.data:
            self.data = data_record(self.cfg.data.root, self.cfg.data.skip_bad_images)
        check_same_data(saved, self.data, str(self.out))

    def _teacher(self, path: Path, resume: bool) -> Dict:
        if self.teacher_src is not None:
            return distributed.on_main(self._given_teacher, path)
        from .train.teacher import train_teacher

        train_teacher(self.cfg, path, resume=resume)
        return {"source": "trained"}

    def _given_teacher(self, path: Path) -> Dict:
        paths = self.teacher_src
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path / "teacher.json", json.dumps(paths.to_dict(), indent=2))
        return {"source": "given", "files": paths.to_dict()}

    def teacher_paths(self) -> TeacherPaths:
        path = self.dir("teacher")
        if (path / "teacher.json").exists():
            return TeacherPaths.from_dict(json.loads((path / "teacher.json").read_text()))
        return find_teacher(path)

    def _supernet(self, path: Path, resume: bool) -> Dict:
        from .train.supernet import train_supernet

        train_supernet(self.cfg, path, teacher=self.teacher_paths(), resume=resume)
        record = json.loads((path / "supernet.json").read_text())
        return {"steps": record["steps"], "l1_to_teacher": record["l1_to_teacher"]}

    def _search(self, path: Path, resume: bool) -> Dict:
        from .search import run_search

        # teacher.json (a given teacher) or the trained run: a resume needs no teacher flags.
        supernet = self.dir("supernet") if self.cfg.search.fitness == "supernet" else None
        result = run_search(self.cfg, path, teacher=self.teacher_paths(), resume=resume, supernet=supernet)
        return {"best_fitness": {d: result.summary.get("best", {}).get(d) for d in ("G_A", "G_B")}}

    def _finetune(self, path: Path, resume: bool) -> Dict:
        from .train.finetune import finetune_genomes, read_search_dir

        # the pipeline's config, not the search folder's: finetune settings may change on resume
        _, teacher_paths, genomes = read_search_dir(self.dir("search"))
        finetune_genomes(self.cfg, teacher_paths, genomes, path, resume=resume,
                         source={"search_dir": str(self.dir("search").resolve())})
        return {"recipe": self.cfg.finetune.mode}

    def _export(self, path: Path, resume: bool) -> Dict:
        from . import load_generator
        from .deploy.targets import ExportOptions, export_for_target, find_deploy_data, resolve_target

        if path.exists():
            remove_run_entry(path, self.out)  # exporting is cheap and idempotent: redo rather than patch
        path.mkdir(parents=True)
        target = resolve_target(self.cfg.export.target, self.cfg.device)
        options = ExportOptions.from_config(self.cfg, target)
        report = {}
        for name in ("G_A", "G_B"):
            model = load_generator(self.dir("finetune") / f"{name}.pt")
            # INT8 calibrates on the run's training images of the generator's input domain
            report[name] = export_for_target(model, path, name, options,
                                             data=find_deploy_data(self.cfg.data.root, name))
        return {"target": target,
                "deployed": {g: rep["deploy"]["deployed"] for g, rep in report.items()},
                "max_abs_diff": {g: {f: r.get("max_abs_diff") for f, r in rep.items()
                                     if isinstance(r, dict) and f != "deploy"} for g, rep in report.items()}}

    def _bench(self, path: Path, resume: bool) -> Dict:
        """Teacher and compressed side by side: in eager PyTorch and on the runtime export deployed."""
        from . import load_generator
        from .deploy.bench import benchmark_models, machine_info, plot_results, save_results
        from .deploy.targets import deployed_artifact

        path.mkdir(parents=True, exist_ok=True)
        b = self.cfg.bench
        teacher = self.teacher_paths()
        summary = {}
        all_results = []
        for name in ("G_A", "G_B"):
            models = {
                f"teacher {name}": load_generator(getattr(teacher, name)),
                f"coevo {name}": load_generator(self.dir("finetune") / f"{name}.pt"),
            }
            deployed = deployed_artifact(self.dir("export"), name)
            backends = ["eager"]
            if deployed is not None and deployed["backend"] != "eager":
                backends.append(deployed["backend"])
                # the run's own export stage wrote it: its program is what the deployment runs
                models[f"coevo {name} deployed"] = load_generator(deployed["path"], trust=True)
            results = benchmark_models(models, size=b.size, batch=b.batch, threads=b.threads or None,
                                       device=self.cfg.device, backends=backends, warmup=b.warmup,
                                       repeats=b.repeats, seed=self.cfg.seed,
                                       only={f"coevo {name}": ["eager"]})
            all_results += results
            summary[name] = {f"{r.name} [{r.backend}]": {"latency_ms_median": r.latency_ms_median,
                                                          "speedup_vs_first": r.speedup_vs_first,
                                                          "speedup_vs_first_eager": r.speedup_vs_first_eager}
                             for r in results}
            summary[name]["deployed_backend"] = backends[-1]
        save_results(all_results, path / "bench.json", machine_info(self.cfg.device, b.threads or None),
                     extra={"deployed_backend": {g: s["deployed_backend"] for g, s in summary.items()}})
        plot_results(all_results, path / "bench.png")
        return summary

