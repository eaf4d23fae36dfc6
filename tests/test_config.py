"""The run config: YAML + `key.sub=value` overrides, paper defaults, and errors that say what to fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from aipo_ray.config import (
    ConfigError,
    RunConfig,
    TrainingConfig,
    build_config,
    load_config,
    parse_override,
)
from aipo_ray.losses import available_losses

REPO = Path(__file__).resolve().parents[1]
MODEL = "model.path=builtin:smollm2-135m-instruct"


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(*overrides: str, path: Path | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        load_config(path, [MODEL, *overrides])
    return err.value


# ---- loading --------------------------------------------------------------------------------


def test_yaml_file_then_overrides_in_order(tmp_path):
    path = write(
        tmp_path,
        """
name: tiny
model: {path: /models/tiny}
training:
  learning_rate: 1e-6        # YAML 1.1 would read this as a string
  global_batch_size: 32
loss: {name: aipo, beta: 0.2}
""",
    )
    cfg = load_config(path, ["training.global_batch_size=64", "loss.alpha=1e-2", "iterations=5"])
    assert cfg.name == "tiny" and cfg.model.path == "/models/tiny"
    assert cfg.training.learning_rate == 1e-6
    assert cfg.training.global_batch_size == 64  # the override wins over the file
    assert cfg.iterations == 5
    assert cfg.loss.hparams == {"beta": 0.2, "alpha": 0.01}
    assert isinstance(cfg.loss.hparams["alpha"], float)
    assert cfg.loss.resolved_hparams() == {"beta": 0.2, "alpha": 0.01, "nll_weight": 0.2}


def test_no_file_means_defaults_plus_overrides():
    cfg = load_config(None, [MODEL])
    assert cfg.model.path == "builtin:smollm2-135m-instruct"
    assert cfg.resolved_run_dir == "runs/aipo-run"


def test_empty_file_is_an_empty_mapping(tmp_path):
    assert load_config(write(tmp_path, "# nothing\n"), [MODEL]).iterations == 3


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("a.b=1", (["a", "b"], 1)),
        ("a=1e-3", (["a"], 1e-3)),
        ("a=-2.5E+2", (["a"], -250.0)),
        ("a=true", (["a"], True)),
        ("a=null", (["a"], None)),
        ("a=[1, 2]", (["a"], [1, 2])),
        ("a={x: 1}", (["a"], {"x": 1})),
        ("a=x=y", (["a"], "x=y")),  # only the first '=' splits
        ("a.0.b=s3://bucket/p", (["a", 0, "b"], "s3://bucket/p")),
        ("a=", (["a"], "")),
    ],
)
def test_override_values_are_yaml(text, want):
    assert parse_override(text) == want


def test_paper_values_are_the_defaults():
    """AIPO paper: β 0.1, α 0.05, λ 0.2, lr 5e-7, cosine, 10% warmup, batch 256, 512/2048, 1 epoch."""
    cfg = load_config(None, [MODEL])
    t = cfg.training
    assert (t.learning_rate, t.lr_scheduler, t.warmup_ratio) == (5e-7, "cosine", 0.1)
    assert (t.global_batch_size, t.num_epochs) == (256, 1)
    assert (t.max_prompt_length, t.max_response_length) == (512, 2048)
    assert cfg.loss.name == "aipo"
    assert cfg.loss.resolved_hparams() == {"beta": 0.1, "alpha": 0.05, "nll_weight": 0.2}


# ---- errors that name the key and what it accepts --------------------------------------------


@pytest.mark.parametrize(
    ("override", "key", "model"),
    [
        ("epochs=3", "epochs", RunConfig),
        ("training.lr=1e-6", "training.lr", TrainingConfig),
    ],
)
def test_unknown_key_names_key_and_allowed_keys(override, key, model):
    err = config_error(override)
    (problem,) = err.problems
    assert problem.startswith(f"{key}: unknown key; allowed keys: ")
    assert problem.endswith(", ".join(sorted(model.model_fields)))


def test_unknown_key_inside_a_list_item_lists_that_items_keys(tmp_path):
    path = write(tmp_path, "prompts:\n  sources:\n    - {path: a.jsonl, fromat: jsonl}\n")
    (problem,) = config_error(path=path).problems
    assert problem.startswith("prompts.sources.0.fromat: unknown key; allowed keys: ")
    assert "format" in problem and "text_field" in problem
    assert str(path) in str(config_error(path=path))


@pytest.mark.parametrize(
    ("override", "key", "says"),
    [
        ("training.global_batch_size=lots", "training.global_batch_size", "valid integer"),
        ("training.use_gpu=[1]", "training.use_gpu", "valid boolean"),
        ("prompts.sources=a.jsonl", "prompts.sources", "valid list"),
        ("training.lr_scheduler=exp", "training.lr_scheduler", "'cosine', 'linear' or 'constant'"),
        ("ranking.mode=best", "ranking.mode", "'full' or 'tournament'"),
    ],
)
def test_wrong_type_names_key_allowed_values_and_the_bad_value(override, key, says):
    (problem,) = config_error(override).problems
    assert problem.startswith(f"{key}: ")
    assert says in problem
    assert f"(got {parse_override(override)[1]!r})" in problem


@pytest.mark.parametrize(
    ("override", "key", "bound"),
    [
        ("training.warmup_ratio=1.5", "training.warmup_ratio", "less than 1"),
        ("training.learning_rate=0", "training.learning_rate", "greater than 0"),
        ("generation.num_candidates=1", "generation.num_candidates", "greater than or equal to 2"),
        ("iterations=0", "iterations", "greater than or equal to 1"),
        ("training.weight_decay=.nan", "training.weight_decay", "finite number"),
        ("storage.retry_backoff_s=.inf", "storage.retry_backoff_s", "finite number"),
    ],
)
def test_out_of_range_names_key_and_bound(override, key, bound):
    (problem,) = config_error(override).problems
    assert problem.startswith(f"{key}: ") and bound in problem


def test_every_problem_is_reported_at_once():
    err = config_error("training.lr=1", "iterations=0", "generation.top_p=2")
    assert [p.split(":")[0] for p in err.problems] == [
        "iterations",
        "generation.top_p",
        "training.lr",
    ]
    assert isinstance(err, ValueError) and str(err).startswith("invalid config:\n  - ")


def test_missing_model_path_is_reported():
    with pytest.raises(ConfigError, match="model: Field required"):
        load_config(None, [])


def test_cross_section_conflict_names_both_keys():
    (problem,) = config_error("generation.max_tokens=4096").problems
    assert "generation.max_tokens (4096)" in problem
    assert "training.max_response_length (2048)" in problem


def test_ranking_callable_backend_needs_its_function():
    (problem,) = config_error("ranking.backend=callable").problems
    assert "ranking.callable" in problem


def test_assignment_is_validated_too():
    cfg = load_config(None, [MODEL])
    with pytest.raises(ValidationError, match="learning_rate"):
        cfg.training.learning_rate = -1.0


# ---- loss section ---------------------------------------------------------------------------


def test_unknown_loss_lists_the_registered_ones():
    (problem,) = config_error("loss.name=dpoo").problems
    assert "unknown loss 'dpoo'" in problem
    assert ", ".join(available_losses()) in problem


def test_unknown_loss_hparam_is_named_with_the_losses_hparams():
    (problem,) = config_error("loss.name=simpo", "loss.alpha=0.1").problems
    assert "loss 'simpo' has no hparam 'alpha'" in problem and "beta, gamma" in problem


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("loss.beta=0", "beta must be > 0"),
        ("loss.beta=abc", "loss.beta must be a number (got 'abc')"),
        ("loss.beta=true", "loss.beta must be a number (got True)"),
        ("loss.beta=.nan", "beta must be a finite number"),
    ],
)
def test_bad_loss_hparam_value_is_named(override, says):
    (problem,) = config_error(override).problems
    assert problem.startswith("loss: ") and says in problem


def test_every_registered_loss_is_accepted_by_name():
    for name in available_losses():
        assert load_config(None, [MODEL, f"loss.name={name}"]).loss.name == name


# ---- override syntax ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("training.learning_rate", "expected key.sub=value"),
        ("=3", "expected key.sub=value"),
        ("training..learning_rate=1", "empty key segment"),
        ("training.=1", "empty key segment"),
        (".iterations=1", "empty key segment"),
        ("training.adam_betas=[0.9,", "value is not valid YAML"),
        ("model.path.x=1", "model.path is a value"),
        ("prompts.sources.3.path=a", "no list index 3"),
    ],
)
def test_bad_override_syntax_names_the_override(override, says):
    (problem,) = config_error(override).problems
    assert repr(override) in problem and says in problem


def test_list_index_overrides_edit_and_append_list_items(tmp_path):
    path = write(
        tmp_path,
        "prompts:\n  sources:\n    - {path: a.jsonl}\n    - {path: b.parquet, limit: 5}\n",
    )
    cfg = load_config(
        path,
        [
            MODEL,
            "prompts.sources.1.path=s3://bucket/b.parquet",
            "prompts.sources.0.limit=10",
            "prompts.sources.2.path=c.csv",  # index == len appends a new source
        ],
    )
    got = [(s.path, s.limit) for s in cfg.prompts.sources]
    assert got == [("a.jsonl", 10), ("s3://bucket/b.parquet", 5), ("c.csv", None)]
    for bad, says in [
        ("prompts.sources.4.path=x", "no list index 4"),
        ("prompts.sources.path=x", "no list index path"),
    ]:
        with pytest.raises(ConfigError, match=says):
            load_config(path, [MODEL, bad])


def test_list_index_override_creates_the_list_when_the_file_has_none():
    cfg = load_config(None, [MODEL, "prompts.sources.0.path=a.jsonl"])
    assert [s.path for s in cfg.prompts.sources] == ["a.jsonl"]


def test_list_item_errors_carry_the_index():
    (problem,) = config_error("prompts.sources.0.path=a", "prompts.sources.0.limit=0").problems
    assert (
        problem.startswith("prompts.sources.0.limit: ") and "greater than or equal to 1" in problem
    )


# ---- files ----------------------------------------------------------------------------------


def test_bad_yaml_file_names_the_file(tmp_path):
    path = write(tmp_path, "training: [1, 2\n")
    err = config_error(path=path)
    assert f"in {path}" in str(err) and "not valid YAML" in err.problems[0]


def test_top_level_list_is_refused(tmp_path):
    err = config_error(path=write(tmp_path, "- model\n- training\n"))
    assert err.problems == ["top level must be a mapping of sections"]


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nope.yaml"
    err = config_error(path=path)
    assert f"in {path}" in str(err) and "cannot read config file" in err.problems[0]


SHIPPED = sorted((REPO / "pipelines" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_configs_validate(path):
    assert isinstance(load_config(path), RunConfig)


# ---- secrets --------------------------------------------------------------------------------

SECRETS = {
    "storage.access_key_id": "AKIA-visible-id-4242",
    "storage.secret_access_key": "s3cr3t-key-do-not-print",
    "storage.session_token": "session-tok-do-not-print",
    "serve.auth_token": "serve-tok-do-not-print",
}


@pytest.fixture
def secret_config() -> RunConfig:
    return load_config(None, [MODEL, *(f"{k}={v}" for k, v in SECRETS.items())])


def test_secrets_stay_out_of_json_repr_and_str(secret_config):
    for text in (
        secret_config.to_json(),
        json.dumps(secret_config.to_public_dict()),
        repr(secret_config),
        str(secret_config),
        repr(secret_config.storage),
        str(secret_config.storage),
    ):
        for value in SECRETS.values():
            assert value not in text
    public = json.loads(secret_config.to_json())
    assert "secret_access_key" not in public["storage"]
    assert "auth_token" not in public["serve"]
    # still usable by the code that needs it
    assert (
        secret_config.storage.secret_access_key.get_secret_value()
        == SECRETS["storage.secret_access_key"]
    )


def test_a_bad_secret_value_is_not_echoed_in_the_error():
    err = config_error("storage.secret_access_key=[s3cr3t-in-a-list]")
    (problem,) = err.problems
    assert problem.startswith("storage.secret_access_key: ") and "s3cr3t" not in str(err)


def test_public_json_loads_back_to_the_same_config(secret_config):
    again = build_config(json.loads(secret_config.to_json()))
    assert again.storage.secret_access_key is None and again.serve.auth_token is None
    secret_keys = {
        "storage": {"access_key_id", "secret_access_key", "session_token"},
        "serve": {"auth_token"},
    }
    assert again.model_dump(exclude=secret_keys) == secret_config.model_dump(exclude=secret_keys)


# ---- docs -----------------------------------------------------------------------------------


def test_configuration_doc_is_generated_from_the_current_models():
    """docs/configuration.md is rendered from the models; after changing a config model run
    `python scripts/gen_config_docs.py`."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "gen_config_docs", REPO / "scripts" / "gen_config_docs.py"
    )
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    text = gen.render()
    for key in ("`learning_rate`", "`secret_access_key`", "### `prompts.sources.N`", "| `aipo` |"):
        assert key in text
    assert (REPO / "docs" / "configuration.md").read_text() == text, (
        "docs/configuration.md is stale: run `python scripts/gen_config_docs.py`"
    )
