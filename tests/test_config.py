import pytest

from study import config
from study.config import StudyConfig
from study.errors import UserError


def test_defaults_are_valid_and_name_the_default_models():
    cfg = StudyConfig().validate()
    assert cfg.models == ["mobilevit_xxs", "mobilenetv2_100", "resnet18"]
    assert cfg.data.dataset == "digits"
    assert cfg.storage_url.endswith("study-out/study.db")


def test_toml_file_is_read_and_flags_override_it(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("seeds = 4\nfractions = [0.5, 1.0]\n[train]\nepochs = 3\nlr = 0.01\n[data]\nimage_size = 24\n")
    cfg = config.load(path, {"train.epochs": "5", "seeds": None})
    assert cfg.seeds == 4  # None overrides are ignored
    assert cfg.train.epochs == 5  # a flag wins over the file
    assert cfg.train.lr == 0.01 and cfg.data.image_size == 24 and cfg.fractions == [0.5, 1.0]


def test_example_config_written_by_init_loads(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text(config.EXAMPLE_TOML)
    assert config.load(path) == StudyConfig()


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"fractions": "0.1,1.5"}, "fraction 1.5 is invalid"),
        ({"fractions": "0,0.5"}, "fraction 0.0 is invalid"),
        ({"fractions": "-0.2"}, "fraction -0.2 is invalid"),
        ({"fractions": "0.1,abc"}, "fractions='abc' is not a number"),
        ({"seeds": "0"}, "seeds=0 is invalid"),
        ({"seeds": "two"}, "seeds='two' is not a whole number"),
        ({"train.augment": "wild"}, "train.augment='wild' is unknown"),
        ({"device": "tpu"}, "device='tpu' is unknown"),
        ({"per_class": "5,0"}, "per_class value 0 is invalid"),
        ({"models": "resnet18,resnet18"}, "lists a model twice"),
    ],
)
def test_bad_values_are_refused_with_the_value_named(overrides, fragment):
    with pytest.raises(UserError, match=None) as info:
        config.load(None, overrides)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_key_in_file_names_valid_keys(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("[train]\nepoch = 3\n")
    with pytest.raises(UserError, match=r"unknown config key 'train.epoch'.*train.epochs"):
        config.load(path)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        config.load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("seeds = = 3")
    with pytest.raises(UserError, match="not valid TOML"):
        config.load(bad)


def test_a_worker_rebuilds_the_config_from_the_stored_one_with_its_own_machine_settings():
    from study.config import from_stored, to_dict

    stored = to_dict(
        config.load(
            None,
            {
                "models": "test_resnet",
                "seeds": "2",
                "train.epochs": "3",
                "device": "cuda",
                "jobs": "4",
                "backend": "dask",
                "scheduler": "tcp://head:8786",
                "grace_period": "60",
                "data.root": "/shared/data",
                "compile": True,
                "channels_last": "on",
            },
        )
    )
    stored["retired_key"] = 1  # written by an older version
    cfg = from_stored(stored, {"storage": "postgresql+psycopg://db/study", "data.root": "/local/data", "threads": "2"})
    assert (
        cfg.models == ["test_resnet"] and cfg.seeds == 2 and cfg.train.epochs == 3 and cfg.grace_period == 60
    )  # the study's
    assert (cfg.device, cfg.jobs, cfg.backend, cfg.scheduler, cfg.threads, cfg.compile) == (
        "auto",
        0,
        "loky",
        "",
        2,
        False,
    )  # this machine's
    assert cfg.channels_last == "on"  # the study's layout, unless this worker forces another
    assert cfg.data.root == "/local/data" and cfg.storage_url == "postgresql+psycopg://db/study"
