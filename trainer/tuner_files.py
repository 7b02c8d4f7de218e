"""keras-tuner's project files, written whole and checked before a resumed search trusts them.

keras-tuner writes ``oracle.json``, ``trial_*/trial.json`` and ``<tuner id>.json`` in place and
reads them back unchecked: a kill mid-write, or a zero-byte or hand-edited file, crashed the
resumed ``tune`` with a traceback. Importing this module (trainer.tuning does) replaces
keras-tuner's writer and its two readers:

* every file is written through :mod:`trainer.atomic` (a temporary name, renamed when whole);
* a trial folder whose ``trial.json`` does not read (or is missing) is skipped with one log
  line: the trial stays in the search as a FAILED placeholder, so that its id is not given
  to a new trial, its values are tried again (grid, random, bayesian; hyperband counts it as a
  failed trial), and its files are left as they are;
* an ``oracle.json`` that does not read is skipped with one log line: the search's state
  (trial order, finished trials, values tried) is rebuilt from the trial files;
* a tuner state file that does not read is skipped with one log line (keras-tuner's tuners
  keep no state in it: ``{}``), and a project that has trials or an oracle but no tuner file
  is reloaded rather than started afresh over its trials (:func:`reload_if_orphaned`).
"""

from __future__ import annotations

import copy
import json
import logging
import posixpath
from typing import Any

import keras_tuner as kt
import tensorflow as tf
from keras_tuner.src import utils as kt_utils
from keras_tuner.src.engine import base_tuner, oracle, stateful, trial
from keras_tuner.src.engine.trial import TrialStatus

from trainer import atomic, checkpoints

ORACLE_FILE = "oracle.json"
TRIAL_FILE = "trial.json"
_TRIAL_DIR_PREFIX = "trial_"
_ENDED = (TrialStatus.COMPLETED, TrialStatus.FAILED, TrialStatus.INVALID, TrialStatus.STOPPED)
_PLACEHOLDER_MESSAGE = "facepipe: trial.json unreadable, trial skipped"


def save_json_whole(path: str, obj: Any) -> str:
    """keras-tuner's ``utils.save_json``, whole or not at all."""
    text = json.dumps(obj)
    atomic.write(path, text)
    return text


def is_placeholder(t: trial.Trial) -> bool:
    """Whether ``t`` stands for a trial whose trial.json did not read."""
    return t.status == TrialStatus.FAILED and t.message == _PLACEHOLDER_MESSAGE


def _placeholder(trial_id: str, space: kt.HyperParameters) -> trial.Trial:
    t = trial.Trial(hyperparameters=space.copy(), trial_id=trial_id, status=TrialStatus.FAILED)
    t.message = _PLACEHOLDER_MESSAGE
    return t


def _trial_order(trial_id: str) -> tuple[int, str]:
    return (int(trial_id), "") if trial_id.isdigit() else (-1, trial_id)


def _load_trials(o: oracle.Oracle) -> None:
    """Every trial folder's trial.json into ``o.trials``; a placeholder for one that does not read."""
    for trial_dir in tf.io.gfile.glob(posixpath.join(o._project_dir, _TRIAL_DIR_PREFIX + "*")):
        if not tf.io.gfile.isdir(trial_dir):
            continue
        trial_id = posixpath.basename(trial_dir)[len(_TRIAL_DIR_PREFIX) :]
        path = posixpath.join(trial_dir, TRIAL_FILE)
        reason = checkpoints.problem(path)
        if reason is None:
            try:
                loaded = trial.Trial.load(path)
                if loaded.trial_id != trial_id:
                    reason = f"it names trial {loaded.trial_id!r}, not the folder's {trial_id!r}"
            except Exception as e:  # A parsed file without a trial's fields: KeyError, TypeError, ...
                reason = f"not a trial's state: {type(e).__name__}: {str(e)[:120]}"
        if reason is None:
            o.trials[trial_id] = loaded
        else:
            logging.warning("skipping tuning trial file %s: %s; its values are tried again", path, reason)
            o.trials[trial_id] = _placeholder(trial_id, o.hyperparameters)


def _without_skipped(o: oracle.Oracle, state: dict[str, Any]) -> dict[str, Any]:
    """``state`` (oracle.json) less every trial that is a placeholder; placeholders added for the ids it
    names that have no trial folder (so that keras-tuner gives no new trial one of their ids)."""
    for trial_id in state["start_order"]:
        if trial_id not in o.trials:
            logging.warning("tuning trial %s has no folder in %s; its values are tried again", trial_id, o._project_dir)
            o.trials[trial_id] = _placeholder(trial_id, o.hyperparameters)
    skipped = {trial_id for trial_id, t in o.trials.items() if is_placeholder(t)}
    if not skipped:
        return state
    state = dict(state)
    hashes = {state["id_to_hash"].get(trial_id) for trial_id in skipped}
    state["tried_so_far"] = [h for h in state["tried_so_far"] if h not in hashes]
    state["id_to_hash"] = {k: v for k, v in state["id_to_hash"].items() if k not in skipped}
    for key in ("start_order", "end_order", "retry_queue"):
        state[key] = [trial_id for trial_id in state[key] if trial_id not in skipped]
    state["ongoing_trials"] = {k: v for k, v in state["ongoing_trials"].items() if v not in skipped}
    return state


def _state_from_trials(o: oracle.Oracle, fresh: dict[str, Any]) -> dict[str, Any]:
    """An oracle state rebuilt from the loaded trials over ``fresh`` (a new oracle's state)."""
    state = copy.deepcopy(fresh)
    readable = sorted((i for i, t in o.trials.items() if not is_placeholder(t)), key=_trial_order)
    hashes = {i: o._compute_values_hash(o.trials[i].hyperparameters.values) for i in readable}
    state.update(
        start_order=readable,
        end_order=[i for i in readable if o.trials[i].status in _ENDED],
        retry_queue=[i for i in readable if o.trials[i].status not in _ENDED],
        ongoing_trials={},
        tried_so_far=sorted(set(hashes.values())),
        id_to_hash=hashes,
        seed_state=fresh["seed_state"] + len(o.trials),
    )
    return state


def reload_oracle(self: oracle.Oracle) -> None:
    """keras-tuner's ``Oracle.reload``, trusting no file it has not checked (see the module docstring)."""
    fresh = copy.deepcopy(self.get_state())
    _load_trials(self)
    path = posixpath.join(self._project_dir, ORACLE_FILE)
    state = checkpoints.read_json(path, "tuning oracle state")
    if state is not None:
        try:
            self.set_state(_without_skipped(self, state))
        except Exception as e:  # A parsed file without an oracle's fields: KeyError, TypeError, ...
            logging.warning("skipping tuning oracle state %s: %s: %s", path, type(e).__name__, str(e)[:120])
            state = None
    if state is None:
        logging.warning(
            "rebuilding the search's state from its %d readable trial file(s)",
            sum(not is_placeholder(t) for t in self.trials.values()),
        )
        self.set_state(fresh)
        self.set_state(_state_from_trials(self, fresh))
    # As keras-tuner's: the trials that were running when the process died are tried again.
    self._retry_queue.extend(t.trial_id for t in self.ongoing_trials.values())
    self.ongoing_trials = {}
    # A placeholder holds a trial id, not one of the --max_trials trials.
    if self.max_trials:
        self.max_trials += sum(is_placeholder(t) for t in self.trials.values())


def reload_tuner(self: base_tuner.BaseTuner) -> None:
    """keras-tuner's ``BaseTuner.reload``, its oracle given the search space first (what a rebuilt
    oracle state starts from) and its own state file checked."""
    if not self._is_worker():
        self._populate_initial_space()
        self.oracle.reload()
    path = self._get_tuner_fname()
    if checkpoints.read_json(path, "tuning tuner state") is not None:
        stateful.Stateful.reload(self, path)


def reload_if_orphaned(tuner: base_tuner.BaseTuner) -> None:
    """Reloads a project that keras-tuner started afresh because its tuner file is missing, though it
    has trials or an oracle state (a tuner file deleted, or another tuner id's): new trials would
    overwrite the old ones' files."""
    if tuner._is_worker() or tf.io.gfile.exists(tuner._get_tuner_fname()):
        return
    project = tuner.project_dir
    found = tf.io.gfile.exists(posixpath.join(project, ORACLE_FILE)) or tf.io.gfile.glob(
        posixpath.join(project, _TRIAL_DIR_PREFIX + "*")
    )
    if found:
        logging.warning("%s has no %s: resuming the search from its files", project, tuner._get_tuner_fname())
        tuner.reload()


kt_utils.save_json = save_json_whole
oracle.Oracle.reload = reload_oracle
base_tuner.BaseTuner.reload = reload_tuner
