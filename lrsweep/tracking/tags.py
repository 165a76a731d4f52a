"""The names lrsweep gives things in MLflow: run tags, the per-epoch metrics a report reads back, MLflow's limits.

What a store holds is read by these names, by this version and by later ones: a name here never changes.
"""

TAG_SWEEP_ID = "lrsweep.sweep_id"
TAG_SWEEP_DIR = "lrsweep.sweep_dir"
TAG_ERROR = "lrsweep.error"
TAG_ROLE = "lrsweep.role"  # "sweep" on the parent run of a multirun, "job" on each job's run
TAG_OVERRIDES = "lrsweep.overrides"  # the job's Hydra overrides as a JSON object {key: value}
TAG_JOB_NUM = "lrsweep.job_num"  # the job's number within its multirun
TAG_PARENT = "mlflow.parentRunId"  # MLflow's own nesting tag: the UI shows jobs under their sweep
TAG_CONFIG_HASH = "lrsweep.config_hash"  # what the run's results depend on; resume matches on it
TAG_HOST = "lrsweep.host"
TAG_PROCESS = "lrsweep.process"  # "<pid>:<start time>" of the process that owns a RUNNING run
TAG_STALE = "lrsweep.stale"
TAG_FAILED_JOB_PREFIX = "lrsweep.failed_job."  # on a sweep's parent: job number -> the error of a job with no run
TAG_REUSED_PREFIX = "lrsweep.reused."  # on a sweep's parent: job number -> the FINISHED run it reused
TAG_NEVER_STARTED = "lrsweep.never_started"  # on a sweep's parent: the job numbers that never started, "2,3"
TAG_PACK = "lrsweep.pack"  # the pack a run trained in (`<sweep id>/pack<n>`); absent for a run trained alone
TAG_PACK_SIZE = "lrsweep.pack_size"  # how many runs trained in that pack
TAG_PACK_MEMBER = "lrsweep.pack_member"  # this run's position in it
TAG_HALVING = "lrsweep.halving"  # on every run of a sweep trained by successive halving: "eta=3 min_epochs=1 rule=..."
TAG_STOPPED_RUNG = "lrsweep.halving.stopped_rung"  # on a run halving stopped (FINISHED): the rung, 1-based
TAG_STOPPED_EPOCH = "lrsweep.halving.stopped_epoch"  # ... and how many epochs it trained
TAG_NOTE = "mlflow.note.content"  # a run's description, Markdown, shown on its page in the UI
TAG_OPTIMIZER = "lrsweep.optimizer"  # the optimizer's class, `keras.optimizers.Adam` (config `optimizer._target_`)
TAG_VALIDATION = "lrsweep.validation"  # what val_* was measured on, `Dataset.validation`: "held-out 10000 of train"
TAG_SCHEDULE = "lrsweep.schedule"  # the schedule's function, `lrsweep.schedules.linear_warmup` (`schedule._target_`)
TAG_OPTUNA_TRIAL = "lrsweep.optuna.trial"  # the Optuna trial a run is (hydra/sweeper=optuna), its number in the study
TAG_OPTUNA_PRUNED = "lrsweep.optuna.pruned"  # "true" on a trial's run its pruner stopped (with TAG_STOPPED_EPOCH)
TAG_OPTUNA_STUDY = "lrsweep.optuna.study"  # the name of that trial's study
PARAM_LIMIT = 6000  # characters MLflow keeps of a param's value
NOTE_LIMIT = 5000
# The per-epoch metrics a report reads back as histories.
HISTORY_METRICS = (
    "loss", "val_loss", "accuracy", "val_accuracy", "lr",
    "effective_lr/p10", "effective_lr/p50", "effective_lr/p90", "effective_lr/excluded_fraction",
)  # fmt: skip
