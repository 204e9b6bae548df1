"""The spec's pydantic models are generated from the settings table: one field per run and
sweep key, with the table's default, and unknown keys refused with a hint at every level."""

from __future__ import annotations

import pytest

from rnnsweep.algorithms.settings import PROBE_KEYS, SETTINGS
from rnnsweep.orchestrator.spec_file import SpecError
from rnnsweep.orchestrator.spec_models import MODELS, SweepModel, validate
from rnnsweep.orchestrator.sweep_settings import SWEEP_TABLE


def test_every_sweep_and_run_key_is_a_field_with_the_tables_default():
    fields = SweepModel.model_fields
    for entry in SWEEP_TABLE:
        section, _, key = entry.name.rpartition(".")
        model = MODELS[(section,)] if section else SweepModel
        field = model.model_fields[key]
        if entry.derived == "required":
            assert field.is_required(), entry.name
        else:
            assert field.default == entry.default, entry.name
    for key in ("cell", "hidden", "dtype", "seed"):
        assert fields[key].default == SETTINGS[key].default
    probe = MODELS[("probe",)].model_fields
    assert {k: probe[k.removeprefix("probe_")].default for k in PROBE_KEYS} == {
        k: SETTINGS[k].default for k in PROBE_KEYS
    }


BASE = {"name": "m", "task": "add", "steps": 10, "trials": 1, "estimators": ["uoro"]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"probe": {"samplse": 4}}, "unknown key 'samplse' in probe (did you mean 'samples'?)"),
        ({"objective": {"metrc": "x"}}, "unknown key 'metrc' in objective (did you mean 'metric'"),
        ({"storage": {"optuan": "x"}}, "unknown key 'optuan' in storage (did you mean 'optuna'"),
        ({"resources": [1]}, "resources: must be a mapping, got a list"),
        ({"sampler": "tpee"}, "sampler: unknown sampler 'tpee' (did you mean 'tpe'?)"),
        ({"probe": {"samples": 0}}, "probe.samples: must be an integer >= 1, got 0"),
        ({"fixed": {1: 2}}, "fixed: keys must be strings, got 1"),
    ],
)
def test_model_errors_name_the_key_path(change, message):
    with pytest.raises(SpecError) as info:
        validate({**BASE, **change})
    assert message in str(info.value)


def test_sections_may_be_null_and_defaults_fill_in():
    model = validate({**BASE, "probe": None, "objective": None, "search": None})
    assert model.probe.samples == SETTINGS["probe_samples"].default
    assert model.objective.metric == "final_loss" and model.search == {}
