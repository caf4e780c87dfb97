"""The one validator, and property-based fuzzing of everything a user writes in JSON (SleepConfig,
TrainConfig, sweep files, task options): every wrong type, range or extra field gives a ValueError or
TypeError naming the field, never another exception and never a silent acceptance."""
import copy
import math
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmsleep import SleepConfig, validate
from lmsleep.cli import main as cli_main
from lmsleep.config import EVICTION_MODES
from lmsleep.sweep import QUICK, check_sweep, expand
from lmsleep.tasks import TASKS
from lmsleep.train import TrainConfig

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=4,
)
# Values near the edges of what is valid, so that fuzzing also reaches the range checks.
edgy_values = st.sampled_from([0, 1, 2, 3, -1, 7, 8, 64, 2.5, 1.0, "A", "AG", "GGA", "", "hard", "none", True, None])
field_values = json_values | edgy_values
names = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=8)


def is_int(value):
    return type(value) is int


def is_number(value):
    return type(value) in (int, float) and math.isfinite(value)


# ----- the validator itself -----

@pytest.mark.parametrize("check,value,error", [
    (lambda v: validate.positive_int("x.size", v), 0, ValueError),
    (lambda v: validate.positive_int("x.size", v), True, TypeError),
    (lambda v: validate.positive_int("x.size", v), 1.0, TypeError),
    (lambda v: validate.non_negative_int("x.size", v), -1, ValueError),
    (lambda v: validate.integer("x.size", v, 2, 5), 6, ValueError),
    (lambda v: validate.number("x.size", v, 0, 1), float("nan"), ValueError),
    (lambda v: validate.number("x.size", v, 0, 1), "0.5", TypeError),
    (lambda v: validate.positive_number("x.size", v), 0.0, ValueError),
    (lambda v: validate.one_of("x.size", v, ("a", "b")), "c", ValueError),
    (lambda v: validate.one_of("x.size", v, ("a", "b")), ["a"], ValueError),
    (lambda v: validate.one_of("x.size", v, (0, 1, 2)), False, ValueError),
    (lambda v: validate.one_of("x.size", v, (0, 1, 2)), 1.0, ValueError),
    (lambda v: validate.int_list("x.size", v), [1, "2"], TypeError),
    (lambda v: validate.int_list("x.size", v), [1, 0], ValueError),
])
def test_each_check_refuses_with_the_field_name(check, value, error):
    with pytest.raises(error, match=r"x\.size"):
        check(value)


def test_checks_return_good_values_and_wrong_types_are_also_value_errors():
    assert validate.positive_int("n", 3) == 3 and validate.number("p", 0.5, 0, 1) == 0.5
    assert validate.one_of("m", "a", ("a",)) == "a" and validate.int_list("l", [1, 2]) == [1, 2]
    with pytest.raises(ValueError):  # WrongType is both: callers catching ValueError still see it
        validate.positive_int("n", "3")
    assert validate.parse_int("--opt t", "12") == 12
    with pytest.raises(ValueError, match="--opt t must be an integer, got 'abc'"):
        validate.parse_int("--opt t", "abc")


def test_from_json_names_unknown_fields_and_bad_json():
    with pytest.raises(ValueError, match=r"unknown fields \['stepz'\]"):
        TrainConfig.from_json('{"stepz": 3}')
    with pytest.raises(ValueError, match="not valid JSON"):
        TrainConfig.from_json("{")
    with pytest.raises(TypeError, match="JSON object"):
        TrainConfig.from_json("[1, 2]")
    assert TrainConfig.from_json('{"steps": 3}').steps == 3


# ----- fuzzing: SleepConfig -----

BASE_MODEL = dict(vocab_size=23, d_model=32, layout="AGAG", n_heads=2, head_dim=8, window=7)
POSITIVE = ("vocab_size", "d_model", "n_heads", "head_dim", "n_fast_heads", "fast_key_dim", "fast_value_dim",
            "mlp_hidden", "conv_size", "window", "sleep_passes")


def model_is_valid(c: dict) -> bool:
    """An independent statement of what a valid SleepConfig is."""
    if not all(is_int(c[n]) and c[n] >= 1 for n in POSITIVE):
        return False
    if not (isinstance(c["layout"], str) and c["layout"] and set(c["layout"]) <= {"A", "G"}):
        return False
    end = len(c["layout"]) if c["loop_end"] is None else c["loop_end"]
    return (c["eviction"] in EVICTION_MODES and is_int(c["loop_start"]) and is_int(end)
            and 0 <= c["loop_start"] < end <= len(c["layout"]) and (c["eviction"] != "none" or c["sleep_passes"] == 1)
            and c["head_dim"] % 2 == 0 and all(is_number(c[n]) and c[n] > 0 for n in ("rope_theta", "norm_eps"))
            and type(c["tie_embeddings"]) is bool and isinstance(c["vocabulary"], str) and c["vocabulary"] != "")


@FUZZ
@given(field=st.sampled_from(sorted(SleepConfig.__dataclass_fields__)) | names, value=field_values)
def test_fuzz_sleep_config(field, value):
    data = {**BASE_MODEL, field: value}
    try:
        config = validate.from_dict(SleepConfig, data, "config")
    except (ValueError, TypeError) as error:
        assert field in str(error)
        return
    assert model_is_valid(vars(config)), f"accepted {field}={value!r}"
    assert SleepConfig.from_json(config.to_json()) == config


# ----- fuzzing: task options -----

@FUZZ
@given(task=st.sampled_from(sorted(TASKS)), field=names, value=field_values, known=st.integers(-1, 50))
def test_fuzz_task_options(task, field, value, known):
    options_class = TASKS[task].Options
    if known >= 0:  # a field the task has (chosen by index: str hashes differ between processes)
        field = sorted(options_class.__dataclass_fields__)[known % len(options_class.__dataclass_fields__)]
    try:
        options = validate.from_dict(options_class, {field: value}, f"{task} options")
    except (ValueError, TypeError) as error:
        assert field in str(error)
        return
    assert all(is_int(getattr(options, f)) for f in options_class.__dataclass_fields__), f"accepted {field}={value!r}"


# ----- fuzzing: TrainConfig -----

BASE_TRAIN = {"task": "rule110", "task_options": {"strings": 2, "bits": 4, "t_min": 1, "t_max": 1},
              "model": {"d_model": 16, "mlp_hidden": 32, "n_heads": 2, "head_dim": 8}, "steps": 4, "batch_size": 2}
TRAIN_FIELDS = sorted(TrainConfig.__dataclass_fields__)


@FUZZ
@given(where=st.sampled_from(["top", "model", "task_options"]), field=st.sampled_from(TRAIN_FIELDS) | names,
       model_field=st.sampled_from(sorted(SleepConfig.__dataclass_fields__)) | names, value=field_values)
def test_fuzz_train_config(where, field, model_field, value):
    data = copy.deepcopy(BASE_TRAIN)
    if where == "top":
        data[field] = value
        named = field
    elif where == "model":
        data["model"][model_field] = value
        named = model_field
    else:
        data["task_options"][field] = value
        named = field
    try:
        config = validate.from_dict(TrainConfig, data, "train config")
    except (ValueError, TypeError) as error:
        assert named in str(error), (named, str(error))
        return
    # Accepted: every value has its declared type and the nested parts are valid objects.
    validate.check_types(config)
    assert is_int(config.steps) and config.steps >= 1 and is_int(config.seed)
    assert all(is_number(getattr(config, n)) for n in ("lr", "adamw_lr", "clip", "weight_decay", "min_lr_ratio"))
    assert isinstance(config.model_config(), SleepConfig) and config.task_options_object() is not None
    assert TrainConfig.from_json(config.to_json()) == config


# ----- fuzzing: sweep files -----

@FUZZ
@given(part=st.sampled_from(["top", "base", "grid"]), field=st.sampled_from(TRAIN_FIELDS + ["model", "passes", "name"]) | names,
       value=field_values, as_list=st.booleans())
def test_fuzz_sweep_files(part, field, value, as_list):
    sweep = copy.deepcopy(QUICK)
    sweep["base"].update(steps=4, eval_every=2, checkpoint_every=2, log_every=1)
    sweep["grid"] = {"model": ["sleep"], "passes": [1, 2], "seed": [0]}
    if part == "top":
        sweep[field] = value
    elif part == "base":
        sweep["base"][field] = value
    else:
        sweep["grid"][field] = [value] if as_list else value
    try:
        check_sweep(sweep, "sweep")
        runs = expand(sweep)
    except (ValueError, TypeError) as error:
        assert field in str(error) or (part == "grid" and field in ("passes", "model")), (field, str(error))
        return
    assert runs and all(isinstance(cfg, TrainConfig) for _, cfg in runs)


# ----- the command line -----

def test_train_cli_names_bad_option_values_and_config_fields(tmp_path, capsys):
    assert cli_main(["train", "--task", "rule110", "--opt", "t_min=abc", "--out", str(tmp_path / "r")]) == 2
    assert "--opt t_min must be an integer, got 'abc'" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"steps": 3, "stepz": 4}')
    assert cli_main(["train", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "stepz" in err and str(bad) in err
    bad.write_text('{"steps": "many"}')
    assert cli_main(["train", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "TrainConfig.steps" in capsys.readouterr().err
