"""kslm.checkpoint.schema: the settings and head options a checkpoint may hold are exactly what each task records
(its init arguments less its run-time options, its head_options), and the type check of the typed configs."""

import pytest

from kslm.checkpoint import schema
from kslm.errors import CheckpointError
from kslm.tasks.lm import LanguageModel
from kslm.tasks.ner import EntityExtraction
from kslm.tasks.re import RelationExtraction


def init_parameters(cls) -> set:
    """The names of a task's init arguments, its own and its base classes' (read from the signatures)."""
    import inspect

    from kslm.tasks.base import KslmTask

    names = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None and issubclass(klass, KslmTask):
            names.update(p.name for p in inspect.signature(init).parameters.values()
                         if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
    return names


@pytest.mark.parametrize("cls", [LanguageModel, EntityExtraction, RelationExtraction])
def test_the_schema_knows_each_tasks_settings(cls):
    assert set(schema.SETTINGS[cls.__name__]) == init_parameters(cls) - set(cls.runtime_options)
    assert set(schema.HEAD[cls.__name__]) == set(getattr(cls, "head_options", ()) if cls is not LanguageModel else ())
    assert set(schema.DATA_KEYS) == set(schema.SETTINGS)


@pytest.mark.parametrize("value,ok", [({"d_model": 16}, True), ({"d_model": True}, False), ({"d_model": 1.5}, False),
                                      ({"block": "gau"}, True), ({"block": "lstm"}, False), ({"d_ff": None}, True),
                                      ({"vocab_size": "8"}, False), ({"dropout": 0}, True), ({"nope": 1}, False)])
def test_typed_configs_are_checked_field_by_field(value, ok):
    from kslm.nn import BackboneConfig

    if ok:
        schema.check_config(BackboneConfig, value, "x.ckpt", "backbone")
    else:
        with pytest.raises(CheckpointError, match="x.ckpt: invalid checkpoint payload: backbone"):
            schema.check_config(BackboneConfig, value, "x.ckpt", "backbone")


def test_optim_betas_and_options():
    from kslm.optim import OptimConfig

    schema.check_config(OptimConfig, {"betas": (0.9, 0.98), "options": {"xi": 0.1}}, "x", "optim")
    for bad in ({"betas": [0.9]}, {"betas": [0.9, "a"]}, {"name": "sgd"}):
        with pytest.raises(CheckpointError):
            schema.check_config(OptimConfig, bad, "x", "optim")
    with pytest.raises(CheckpointError, match=r"options\.x\.class_path"):
        schema.check_plain({"options": {"x": {"class_path": "os.system"}}}, "x", "optim")
    with pytest.raises(CheckpointError, match="nested deeper"):
        deep = []
        for _ in range(40):
            deep = [deep]
        schema.check_plain(deep, "x", "settings")
