"""The objective: one Optuna trial is one `fit` through the same CLI classes as `steerlight fit`.

Each trial adds `optuna_integration.PyTorchLightningPruningCallback` to its Trainer. The val
split is cut into fixed shards, one per epoch, and the accuracy over the shards seen so far is
the intermediate value the pruner judges. Activations and fitted vectors come from the on-disk
cache, the frozen model is loaded once per process, and unsteered generations are reused.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from steerlight.layout import StudyFolder
from steerlight.search.memo import UnsteeredMemo
from steerlight.search.space import Space, nest
from steerlight.search.workers import TrialGate, fail_stale_trials, worker_id

TWIN_POLL_S = 0.5
"""How often a trial waiting for another worker's identical trial checks on it."""


def merge(base: Mapping, override: Mapping) -> dict:
    """A deep merge of two config mappings (override wins)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass
class Search:
    """One study: the base config, the space and where its artefacts go."""

    config: dict
    space: Space
    folder: StudyFolder
    rounds: int = 4
    probe_auc: list[float] | None = None
    memo: UnsteeredMemo = field(default_factory=UnsteeredMemo)
    gate: TrialGate | None = None
    worker: str = field(default_factory=worker_id)

    def trial_config(self, params: Mapping[str, Any], version: str) -> dict:
        data = self.config.get("data", {})
        return merge(
            self.config,
            {
                "model": nest(params),
                "data": {
                    "val_shards": self.rounds if self.rounds > 1 else data.get("val_shards", 1)
                },
                "trainer": {
                    "max_epochs": self.rounds,
                    "reload_dataloaders_every_n_epochs": 1,
                    "num_sanity_val_steps": 0,
                    # one line per pass and per trial instead of a bar per trial
                    "enable_progress_bar": False,
                    "logger": {
                        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                        "init_args": {
                            "save_dir": str(self.folder.root),
                            "name": self.folder.name,
                            "version": version,
                            "default_hp_metric": False,
                        },
                    },
                },
            },
        )

    def fit_probes(self) -> list[float]:
        """Fit (or load from cache) the train-split probes once, to rank layers for the space."""
        from steerlight.cli import cli_main

        config = merge(
            self.config,
            {
                "trainer": {
                    "limit_val_batches": 0,
                    "logger": False,
                    "enable_checkpointing": False,
                    "enable_progress_bar": False,
                    "max_epochs": 1,
                },
                "model": {"alpha": 0.0},
            },
        )
        config["trainer"].pop("callbacks", None)
        # no logger: its config.yaml would land in the caller's working directory
        cli = cli_main(args=config, run=False, checkpoint=False, save_config=False)
        cli.trainer.fit(cli.model, cli.datamodule)
        return cli.model.steering["probe_auc"].tolist()

    def __call__(self, trial) -> float:
        import optuna

        from steerlight.cli import cli_main

        if self.gate is not None:
            self.gate.admitted()  # Optuna has created this trial: other workers may go on
        trial.set_user_attr("worker", self.worker)
        params = self.space.suggest(trial, self.probe_auc)
        twin = _finished_twin(trial)
        if twin is not None:
            trial.set_user_attr("duplicate_of", twin.number)
            if twin.state == optuna.trial.TrialState.PRUNED:
                raise optuna.TrialPruned(f"same configuration as trial {twin.number} (pruned)")
            return twin.value
        try:
            pruning = pruning_callback(trial)
            cli = cli_main(
                args=self.trial_config(params, StudyFolder.trial_version(trial.number)),
                run=False,
                extra_callbacks=[pruning],
                progress=f"[{self.folder.name}] trial {trial.number} ",
            )
            self.memo.attach(cli.model)  # unsteered generations: once per study
            cli.model.log_probe_figure = False  # once per study, in <study>/summary
            try:
                cli.trainer.fit(cli.model, cli.datamodule)
            finally:
                trial.set_user_attr("generated_tokens", cli.model.generated_tokens)
            self._check_comparable(trial, cli)
            value = float(cli.trainer.callback_metrics["val/acc"])
            ckpt = cli.trainer.checkpoint_callback.last_model_path
            trial.set_user_attr("checkpoint", ckpt)
            trial.set_user_attr(
                "config", self.trial_config(params, StudyFolder.trial_version(trial.number))
            )
            return value
        except optuna.TrialPruned:
            raise
        except (KeyboardInterrupt, SystemExit):
            # Lightning turns Ctrl-C inside `fit` into SystemExit, which Optuna does not catch
            # (the trial would stay RUNNING forever); as KeyboardInterrupt it ends as FAIL.
            trial.set_user_attr("error", "interrupted")
            raise KeyboardInterrupt from None
        except Exception as err:
            trial.set_user_attr("error", f"{type(err).__name__}: {err}")
            raise

    def _check_comparable(self, trial, cli) -> None:
        """The val questions and the model weights are the study's: values compare only then.

        The first trial records their fingerprints in the study; a trial that sees others
        (a retrained model folder, another data copy) fails and stops this worker.
        """
        from steerlight.errors import SteerlightError

        seen = {
            "val_data": cli.datamodule.fingerprints.get("val"),
            "weights": cli.model.fingerprint,
        }
        recorded = trial.study.user_attrs.get("fingerprints")
        if recorded is None:
            trial.study.set_user_attr("fingerprints", seen)
            return
        changed = [k for k in seen if recorded.get(k) != seen[k]]
        if changed:
            trial.study.stop()
            raise SteerlightError(
                f"this run's {' and '.join(changed)} differ from the study's "
                f"({', '.join(f'{k} {recorded.get(k)} -> {seen[k]}' for k in changed)}): its "
                "values would not compare; use another --study_name"
            )


def pruning_callback(trial):
    """Optuna's Lightning pruning on `val/acc`, except that a pruned trial ends without a value.

    Optuna gives a pruned trial its last intermediate value, a running accuracy on the first
    val shards, which optuna-dashboard's history then plots among the complete trials' values
    on all of val. A NaN reported one round later, after the decision, leaves the trial without
    one (pruners read complete trials only); the intermediate-values plot keeps its rounds.
    """
    import optuna
    from optuna_integration import PyTorchLightningPruningCallback

    class Pruning(PyTorchLightningPruningCallback):
        def on_validation_end(self, trainer, pl_module) -> None:
            try:
                super().on_validation_end(trainer, pl_module)
            except optuna.TrialPruned:
                trial.report(float("nan"), step=pl_module.current_epoch + 1)
                raise

    return Pruning(trial, monitor="val/acc")


def _finished_twin(trial, poll_s: float = TWIN_POLL_S):
    """A finished trial of the same study with exactly these parameters, if any.

    Another worker may be evaluating the same configuration right now: then this trial waits
    for that one (if it started first, so two twins never wait for each other) and takes its
    result, instead of evaluating the configuration twice.
    """
    import optuna

    states = (
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.RUNNING,
    )
    while True:
        twins = [
            other
            for other in trial.study.get_trials(deepcopy=False, states=states)
            if other.number != trial.number and other.params == trial.params
        ]
        finished = [t for t in twins if t.state != optuna.trial.TrialState.RUNNING]
        if finished:
            return finished[0]
        if not any(t.number < trial.number for t in twins):
            return None
        time.sleep(poll_s)
        # If the twin's worker died, its trial turns FAIL (and is retried) rather than
        # keeping this one waiting; this trial then evaluates the configuration itself.
        fail_stale_trials(trial.study)
