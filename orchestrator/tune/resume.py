"""A study resumed after a stop: trials a crash left RUNNING."""

from __future__ import annotations


def recover_orphans(study) -> int:
    """Mark trials left RUNNING by a crash FAIL (`orphaned`) and enqueue their params again."""
    import optuna
    from optuna.trial import TrialState

    orphans = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for frozen in orphans:
        trial = optuna.trial.Trial(study, frozen._trial_id)
        trial.set_user_attr("orphaned", True)
        study.tell(trial, state=TrialState.FAIL)
        study.enqueue_trial(frozen.params, user_attrs={"retry_of": frozen.number})
    return len(orphans)
