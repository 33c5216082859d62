"""Settings: read once from the environment, failing loudly with the variable's name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.errors import ConfigurationError
from service.settings import Settings

VALID = {
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "VTS_AUTH_ID": "MAXXXXXXXXXXXXXXXXXX",
    "VTS_AUTH_TOKEN": "very-secret-token",
    "PUBLIC_BASE_URL": "https://masking.example.com/",
    "API_KEYS": "first-key-0123456789, second-key-0123456789",
}


def test_a_complete_environment_is_read() -> None:
    """Required values are taken, optional ones default, URLs lose their trailing slash."""
    settings = Settings.from_env(VALID)
    assert settings.public_base_url == "https://masking.example.com"
    assert settings.vts_base_url == "https://api.vtscom.net"
    assert len(settings.api_keys) == 2
    assert settings.webhook_signature == "enforce"
    assert settings.port == 8000
    assert (settings.vts_rate_limit, settings.vts_rate_window) == (300, 5.0)


@pytest.mark.parametrize("missing", sorted(VALID))
def test_each_missing_required_variable_is_named(missing: str) -> None:
    """A missing required variable stops start-up with its name."""
    env = {k: v for k, v in VALID.items() if k != missing}
    with pytest.raises(ConfigurationError, match=f"^{missing}: is required"):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("REDIS_URL", "http://localhost"),
        ("PUBLIC_BASE_URL", "masking.example.com"),
        ("VTS_BASE_URL", "ftp://vts"),
        ("API_KEYS", "short"),
        ("API_KEYS", " , "),
        ("WEBHOOK_SIGNATURE", "sometimes"),
        ("LOG_FORMAT", "xml"),
        ("LOG_LEVEL", "LOUD"),
        ("PORT", "eighty"),
        ("PORT", "70000"),
        ("VTS_RATE_LIMIT", "0"),
        ("VTS_RATE_WINDOW", "-1"),
        ("VTS_TIMEOUT", "soon"),
        ("PHONE_DEFAULT_REGION", "USA"),
        ("NOTIFICATION_RETRY_SCHEDULE", "5,soon"),
        ("NOTIFICATION_RETRY_SCHEDULE", "5,,10"),
        ("NOTIFICATION_RETRY_SCHEDULE", "0"),
        ("RECONCILE_RATE_SHARE", "1.5"),
        ("RECONCILE_RATE_SHARE", "0"),
        ("NOTIFICATION_DISABLE_AFTER", "0"),
        ("NOTIFICATION_DISABLE_AFTER", "five days"),
    ],
)
def test_malformed_values_are_named(name: str, value: str) -> None:
    """A malformed value stops start-up with the variable's name, never its value."""
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({**VALID, name: value})
    assert caught.value.variable == name
    assert str(caught.value).startswith(f"{name}: ")
    if len(value.strip()) > 3:
        assert value not in str(caught.value)


def test_notification_disable_after_is_read_in_seconds() -> None:
    """NOTIFICATION_DISABLE_AFTER is seconds, five days when unset."""
    assert Settings.from_env(VALID).notification_disable_after == 5 * 24 * 3600
    given = Settings.from_env({**VALID, "NOTIFICATION_DISABLE_AFTER": "3600"})
    assert given.notification_disable_after == 3600


def test_secrets_stay_out_of_repr() -> None:
    """Neither the VTS token nor any API key shows in the settings' repr or str."""
    text = repr(Settings.from_env(VALID)) + str(Settings.from_env(VALID))
    assert "very-secret-token" not in text
    assert "first-key" not in text
    assert "second-key" not in text


def test_the_notification_retry_schedule_is_read_in_seconds() -> None:
    """NOTIFICATION_RETRY_SCHEDULE gives the delay before each retry, in order."""
    settings = Settings.from_env({**VALID, "NOTIFICATION_RETRY_SCHEDULE": "1, 2.5,4"})
    assert settings.notification_retry_schedule == (1.0, 2.5, 4.0)


def _documented_defaults() -> dict[str, str]:
    """README's configuration table: each variable whose default is written as a value
    (`300`, or `300`, `5` for two variables), with that value."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme.partition("\n## Configuration\n")[2].partition("\n## ")[0]
    defaults: dict[str, str] = {}
    for row in table.splitlines():
        cells = row.split("|")
        if not row.startswith("| `") or len(cells) < 4:
            continue
        names = re.findall(r"`([A-Z][A-Z0-9_]*)`", cells[1])
        written = re.fullmatch(r" ((?:`[^`]+`(?:, )?)+)(?: \([^)]*\))? ", cells[2])
        if written is None:
            continue
        values = re.findall(r"`([^`]+)`", written[1])
        if len(values) == 1:
            values *= len(names)
        if len(values) == len(names):
            defaults.update(zip(names, values, strict=True))
    return defaults


def test_the_documented_defaults_are_the_code_s() -> None:
    """Setting a variable to the default README gives it changes nothing."""
    documented = _documented_defaults()
    assert {"RECONCILE_INTERVAL", "NOTIFICATION_RETRY_SCHEDULE", "STORAGE_RETRY_FOR"} <= set(
        documented
    )
    assert len(documented) >= 30, documented
    defaults = Settings.from_env(VALID)
    differing = {
        name: value
        for name, value in documented.items()
        if Settings.from_env({**VALID, name: value}) != defaults
    }
    assert not differing
