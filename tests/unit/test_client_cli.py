"""The user command line's own parts: where settings come from, the profile file's protection,
the progress line, tables and ``--set`` values. (Its commands against a running system:
tests/e2e/test_client_cli.py.)"""

from __future__ import annotations

import io
import json
import os
import stat

import httpx
import pytest

from imagesvc.client import settings as client_settings
from imagesvc.client.cli import UsageError, _fields, key_values, table
from imagesvc.cli import main
from imagesvc.client.progress import ProgressLine, human_bytes, human_duration


@pytest.fixture
def environ(tmp_path):
    return {"HOME": str(tmp_path), "IMAGESVC_CLIENT_CONFIG": str(tmp_path / "conf" / "profiles.json")}


def test_options_win_over_the_environment_which_wins_over_the_profile(environ):
    client_settings.save("default", {"url": "http://profile:1", "api_key": "from-profile",
                                     "broker_url": "amqp://profile"}, environ)
    chosen = client_settings.resolve(environ=environ)
    assert (chosen.url, chosen.api_key, chosen.broker_url) == ("http://profile:1", "from-profile", "amqp://profile")
    environ["IMAGESVC_CLIENT_API_KEY"] = "from-env"
    environ["IMAGESVC_CLIENT_URL"] = "http://env:2"
    chosen = client_settings.resolve(environ=environ)
    assert (chosen.url, chosen.api_key) == ("http://env:2", "from-env")
    chosen = client_settings.resolve(url="http://option:3", broker_url="amqp://option", environ=environ)
    assert (chosen.url, chosen.broker_url) == ("http://option:3", "amqp://option")


def test_without_any_setting_the_local_default_is_used(environ):
    chosen = client_settings.resolve(environ=environ)
    assert chosen.url == client_settings.DEFAULT_URL
    assert chosen.credentials() == {}


def test_profiles_are_separate_and_chosen_by_name_or_environment(environ):
    client_settings.save("prod", {"url": "http://prod", "token": "t-prod"}, environ)
    client_settings.save("default", {"url": "http://dev", "api_key": "k-dev"}, environ)
    assert client_settings.resolve(profile="prod", environ=environ).credentials() == {"token": "t-prod"}
    environ["IMAGESVC_CLIENT_PROFILE"] = "prod"
    assert client_settings.resolve(environ=environ).url == "http://prod"
    assert client_settings.resolve(profile="default", environ=environ).credentials() == {"api_key": "k-dev"}


def test_a_token_wins_over_an_api_key(environ):
    client_settings.save("default", {"url": "http://a", "api_key": "key", "token": "tok"}, environ)
    assert client_settings.resolve(environ=environ).credentials() == {"token": "tok"}
    assert client_settings.resolve(url="http://a/api/", environ=environ).credentials() == {"token": "tok"}


@pytest.mark.parametrize("how", ["option", "environment"])
def test_kept_credentials_are_never_sent_to_another_server(environ, how):
    client_settings.save("default", {"url": "http://a", "api_key": "key", "token": "tok"}, environ)
    if how == "option":
        elsewhere = client_settings.resolve(url="https://evil.example", environ=environ)
    else:
        environ["IMAGESVC_CLIENT_URL"] = "https://evil.example"
        elsewhere = client_settings.resolve(environ=environ)
    assert elsewhere.url == "https://evil.example" and elsewhere.credentials() == {}


def test_a_profile_without_a_url_keeps_its_credentials_for_the_default_server(environ):
    client_settings.save("default", {"api_key": "key"}, environ)
    assert client_settings.resolve(environ=environ).credentials() == {"api_key": "key"}
    assert client_settings.resolve(url="https://evil.example", environ=environ).credentials() == {}


def test_credentials_from_the_environment_go_where_the_user_says(environ):
    client_settings.save("default", {"url": "http://a", "token": "tok"}, environ)
    environ.update(IMAGESVC_CLIENT_URL="http://b", IMAGESVC_CLIENT_API_KEY="env-key")
    assert client_settings.resolve(environ=environ).credentials() == {"api_key": "env-key"}


def test_the_profile_file_is_written_for_its_owner_only(environ):
    path = client_settings.save("default", {"token": "secret"}, environ)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert json.loads(path.read_text()) == {"default": {"token": "secret"}}
    assert [p.name for p in path.parent.iterdir()] == ["profiles.json"]  # no temporary left behind


def test_saving_merges_and_a_none_removes_a_field(environ):
    client_settings.save("default", {"url": "http://a", "token": "t"}, environ)
    client_settings.save("default", {"token": None, "api_key": "k"}, environ)
    stored = json.loads(client_settings.config_path(environ).read_text())
    assert stored == {"default": {"url": "http://a", "api_key": "k"}}


def test_a_profile_file_others_can_read_is_refused(environ):
    path = client_settings.save("default", {"token": "secret"}, environ)
    os.chmod(path, 0o644)
    with pytest.raises(client_settings.ProfileError, match="readable by other users"):
        client_settings.resolve(environ=environ)


def test_a_broken_profile_file_is_a_clear_error(environ):
    path = client_settings.config_path(environ)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    os.chmod(path, 0o600)
    with pytest.raises(client_settings.ProfileError, match="cannot be read"):
        client_settings.resolve(environ=environ)


def test_the_default_location_follows_xdg_config_home(tmp_path):
    assert client_settings.config_path({"HOME": "/home/u"}) == \
        client_settings.Path("/home/u/.config/imagesvc/profiles.json")
    assert client_settings.config_path({"HOME": "/home/u", "XDG_CONFIG_HOME": str(tmp_path)}) == \
        tmp_path / "imagesvc" / "profiles.json"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_progress_line_shows_bar_bytes_rate_and_time_left():
    clock = Clock()
    out = io.StringIO()
    line = ProgressLine("importing centos", out, interactive=True, width=10, clock=clock)
    line.update(0, 100 * 2**20)
    assert "[----------]" in out.getvalue() and "0%" in out.getvalue()
    assert "ETA" not in out.getvalue()  # no rate before a second sample
    clock.now += 2
    line.update(20 * 2**20, 100 * 2**20)
    shown = out.getvalue().rsplit("\r\x1b[2K", 1)[1]
    assert shown == "importing centos  [##--------]   20%  20.0 MiB / 100.0 MiB  10.0 MiB/s  ETA 0:08"


def test_the_rate_follows_the_last_ten_seconds():
    clock = Clock()
    line = ProgressLine("x", io.StringIO(), interactive=True, clock=clock)
    line.update(0, None)
    clock.now += 30
    line.update(30 * 2**20, None)  # 1 MiB/s over the first 30 s
    clock.now += 5
    line.update(80 * 2**20, None)  # then 10 MiB/s
    assert line.rate() == pytest.approx(10 * 2**20)


def test_off_a_terminal_the_progress_is_a_plain_line_now_and_then():
    clock = Clock()
    out = io.StringIO()
    line = ProgressLine("task", out, interactive=False, quiet_seconds=10, clock=clock)
    for _ in range(5):
        line.update(1, 10)
        clock.now += 3
    line.finish("done")
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 3 and lines[-1] == "done"  # at 0 s, at 12 s, and the end


def test_human_units():
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(3 * 2**30) == "3.0 GiB"
    assert human_duration(65) == "1:05"
    assert human_duration(3725) == "1:02:05"


def test_set_values_are_json_where_they_parse_and_text_otherwise():
    assert _fields(["access=3", "resize=true", 'tags=["a","b"]', "desc=A new image", "version=2.0.1", "alias="]) == {
        "access": 3, "resize": True, "tags": ["a", "b"], "desc": "A new image", "version": "2.0.1", "alias": ""}
    with pytest.raises(UsageError, match="FIELD=VALUE"):
        _fields(["desc"])
    with pytest.raises(UsageError, match="not an image field"):
        _fields(["dc=main"])


def test_tables_align_their_columns():
    assert table([["a", "1"], ["long-name", "22"]], ["NAME", "N"]).splitlines() == [
        "NAME       N", "a          1", "long-name  22"]
    assert key_values([["task", "t1"], ["status", "SUCCESS"]]).splitlines() == ["task    t1", "status  SUCCESS"]


@pytest.fixture
def user_env(monkeypatch, tmp_path):
    for key in list(os.environ):
        if key.startswith("IMAGESVC_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("IMAGESVC_CLIENT_CONFIG", str(tmp_path / "profiles.json"))
    return tmp_path


@pytest.mark.parametrize(("argv", "code", "said"), [
    (["image", "update", "x", "--set", "dc=main"], 2, "not an image field"),
    (["image", "import", "x", "http://o/m", "--set", "manifest_url=http://o/n"], 2, "not an image field"),
    (["image", "list", "--url", "ftp://nowhere.example"], 2, "ftp"),
    (["events", "tail", "--broker-url", "amqp://u:p@127.0.0.1:9/"], 3, "ConnectionFailed"),
    (["events", "tail"], 2, "broker user's URL"),
])
def test_failures_are_a_sentence_and_an_exit_code_never_a_traceback(user_env, capsys, argv, code, said):
    assert main(argv) == code
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err


def test_logout_forgets_the_token_even_when_the_server_refuses_it(user_env, capsys, monkeypatch):
    from imagesvc.client import Client
    from imagesvc.client import cli as user_cli

    refusing = httpx.MockTransport(lambda request: httpx.Response(403, json={"detail": "Invalid token"}))
    monkeypatch.setattr(user_cli, "_client", lambda args: Client("http://api.example", token="stale",
                                                                 transport=refusing))
    client_settings.save("default", {"url": "http://api.example", "token": "stale"})
    assert main(["logout"]) == 1  # refused (the token had expired) ...
    assert "refused (403): Invalid token" in capsys.readouterr().err
    stored = json.loads(client_settings.config_path().read_text())
    assert stored == {"default": {"url": "http://api.example"}}  # ... and forgotten anyway


def test_the_imagesvc_command_loads_the_sdk_only_for_the_commands_that_use_it():
    """Every worker and gateway starts through ``imagesvc``, whose parser holds the user's
    commands: building it must not load httpx or the SDK's HTTP and broker halves."""
    import subprocess
    import sys

    probe = ("import sys, imagesvc.cli; "
             "print(sorted(m for m in ('httpx', 'imagesvc.client.http', 'imagesvc.client.broker') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert loaded.stdout.strip() == "[]"
