from __future__ import annotations

import pytest

from controller.config import ConfigError, LocalModelConfig


def test_empty_local_model_section_gives_kserves_defaults() -> None:
    config = LocalModelConfig.from_json("{}")
    assert config.job_namespace == "kserve-localmodel-jobs"
    assert config.job_ttl_seconds_after_finished == 3600
    assert config.reconcile_frequency_seconds == 60
    assert config.fs_group is None
    assert config.disable_volume_management is False


def test_kserves_keys_are_read_and_unknown_keys_ignored() -> None:
    config = LocalModelConfig.from_json(
        '{"jobNamespace": "jobs", "fsGroup": 1000, "jobTTLSecondsAfterFinished": 60,'
        ' "reconcilationFrequencyInSecs": 5, "disableVolumeManagement": true,'
        ' "defaultJobImage": "ignored", "enabled": true}'
    )
    assert (config.job_namespace, config.fs_group) == ("jobs", 1000)
    assert (config.job_ttl_seconds_after_finished, config.reconcile_frequency_seconds) == (60, 5)
    assert config.disable_volume_management is True


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("{not json", "not valid JSON", id="syntax"),
        pytest.param("[1]", "must be a JSON object", id="not-object"),
        pytest.param('{"fsGroup": "1000"}', "fsGroup must be of type int", id="string-int"),
        pytest.param('{"fsGroup": true}', "fsGroup must be of type int", id="bool-int"),
        pytest.param('{"jobNamespace": 3}', "jobNamespace must be of type str", id="int-str"),
    ],
)
def test_invalid_local_model_section_is_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LocalModelConfig.from_json(text)
