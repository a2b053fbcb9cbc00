"""shared.config: Settings.from_env is a pure function of the mapping it is given."""

from __future__ import annotations

import dataclasses

import pytest

from imagesvc.shared.config import DEFAULT_BROKER_URL, DEFAULT_DATABASE_URL, ConfigError, Settings


def test_empty_environment_gives_the_defaults():
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.broker_url == DEFAULT_BROKER_URL
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.topology_prefix == ""
    assert settings.log_format == "auto"
    assert settings.answer_window == 5.0
    assert settings.heartbeat == 15
    assert settings.prefetch == 16
    assert settings.worker_threads == 8
    assert settings.max_attempts == 5
    assert settings.retry_backoff == (0.5, 2.0, 5.0, 10.0)
    assert settings.fetch_allow == ()
    assert settings.image_store == "none"
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.fetch_timeout == 5.0
    assert settings.long_commands_per_user == 0


def test_every_setting_is_read_from_its_imagesvc_variable():
    settings = Settings.from_env({
        "IMAGESVC_BROKER_URL": "amqp://u:p@rabbit:5672/vh",
        "IMAGESVC_DATABASE_URL": "sqlite:///x.db",
        "IMAGESVC_TOPOLOGY_PREFIX": "t1.",
        "IMAGESVC_LOG_FORMAT": "json",
        "IMAGESVC_LOG_LEVEL": "DEBUG",
        "IMAGESVC_ANSWER_WINDOW": "0.25",
        "IMAGESVC_HEARTBEAT": "30",
        "IMAGESVC_PUBLISH_TIMEOUT": "2.5",
        "IMAGESVC_PREFETCH": "16",
        "IMAGESVC_WORKER_THREADS": "2",
        "IMAGESVC_MAX_ATTEMPTS": "3",
        "IMAGESVC_RETRY_BACKOFF": "0.1, 1,2.5",
        "IMAGESVC_FETCH_ALLOW": "repo.internal, 10.0.0.0/8:8080,,[::1]:9000",
        "IMAGESVC_IMAGE_STORE": "none",
        "IMAGESVC_AUTH_CACHE_SECONDS": "0",
        "IMAGESVC_DATA_DIR": "/srv/imagesvc",
        "IMAGESVC_MAX_BODY_BYTES": "2048",
        "IMAGESVC_DB_POOL_SIZE": "3",
        "IMAGESVC_FETCH_TIMEOUT": "2.5",
        "IMAGESVC_LONG_COMMANDS_PER_USER": "3",
    })
    assert settings.broker_url == "amqp://u:p@rabbit:5672/vh"
    assert settings.database_url == "sqlite:///x.db"
    assert settings.topology_prefix == "t1."
    assert settings.log_format == "json"
    assert settings.log_level == "DEBUG"
    assert settings.answer_window == 0.25
    assert settings.heartbeat == 30
    assert settings.publish_timeout == 2.5
    assert settings.prefetch == 16
    assert settings.worker_threads == 2
    assert settings.max_attempts == 3
    assert settings.retry_backoff == (0.1, 1.0, 2.5)
    assert settings.fetch_allow == ("repo.internal", "10.0.0.0/8:8080", "[::1]:9000")
    assert settings.auth_cache_seconds == 0.0
    assert settings.data_dir == "/srv/imagesvc"
    assert settings.max_body_bytes == 2048
    assert settings.db_pool_size == 3
    assert settings.fetch_timeout == 2.5
    assert settings.long_commands_per_user == 3


def test_every_field_is_configurable_by_its_variable():
    # Guards the loop in from_env: a field whose type _parse does not know would be read as a string.
    for f in dataclasses.fields(Settings):
        assert str(f.type) in {"str", "int", "float", "tuple[float, ...]", "tuple[str, ...]"}, f.name


def test_ints_and_floats_are_typed():
    settings = Settings.from_env({"IMAGESVC_PREFETCH": "12", "IMAGESVC_ANSWER_WINDOW": "3"})
    assert settings.prefetch == 12 and type(settings.prefetch) is int
    assert settings.answer_window == 3.0 and type(settings.answer_window) is float


def test_unrelated_variables_are_ignored():
    assert Settings.from_env({"PATH": "/bin", "PREFETCH": "abc", "imagesvc_prefetch": "abc"}) == Settings()


def test_overrides_win_over_the_environment():
    settings = Settings.from_env({"IMAGESVC_PREFETCH": "12", "IMAGESVC_BROKER_URL": "amqp://env//"},
                                 prefetch=3, broker_url="memory://")
    assert settings.prefetch == 3
    assert settings.broker_url == "memory://"
    assert settings.embedded_broker is True


@pytest.mark.parametrize(
    "variable, value",
    [
        ("IMAGESVC_PREFETCH", "abc"),
        ("IMAGESVC_PREFETCH", "1.5"),
        ("IMAGESVC_HEARTBEAT", ""),
        ("IMAGESVC_WORKER_THREADS", "four"),
        ("IMAGESVC_MAX_ATTEMPTS", "3x"),
        ("IMAGESVC_ANSWER_WINDOW", "soon"),
        ("IMAGESVC_PUBLISH_TIMEOUT", "5s"),
        ("IMAGESVC_RETRY_BACKOFF", "0.5,fast"),
        ("IMAGESVC_MAX_BODY_BYTES", "1MB"),
        ("IMAGESVC_FETCH_TIMEOUT", "5s"),
        ("IMAGESVC_LONG_COMMANDS_PER_USER", "half"),
    ],
)
def test_unparseable_values_raise_config_error_naming_the_variable(variable, value):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: value})
    assert variable in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    "variable, value",
    [
        ("IMAGESVC_LOG_FORMAT", "xml"),
        ("IMAGESVC_ANSWER_WINDOW", "-1"),
        ("IMAGESVC_MAX_ATTEMPTS", "0"),
        ("IMAGESVC_RETRY_BACKOFF", ""),
        ("IMAGESVC_RETRY_BACKOFF", " , "),
        ("IMAGESVC_PREFETCH", "0"),
        ("IMAGESVC_WORKER_THREADS", "0"),
        ("IMAGESVC_IMAGE_STORE", "s3://"),
        ("IMAGESVC_IMAGE_STORE", ""),
        ("IMAGESVC_FETCH_TIMEOUT", "0"),
        ("IMAGESVC_LONG_COMMANDS_PER_USER", "-1"),
    ],
)
def test_out_of_range_values_raise_config_error_naming_the_variable(variable, value):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: value})
    assert variable in str(caught.value)


def test_an_s3_image_store_is_accepted_without_connecting():
    # More in tests/unit/test_s3_store_spec.py.
    settings = Settings.from_env({"IMAGESVC_IMAGE_STORE": "s3://bucket/images"})
    assert settings.image_store == "s3://bucket/images"


def test_the_embedded_mode_keeps_images_under_its_data_dir_unless_told_otherwise(tmp_path):
    embedded = Settings.from_env({"IMAGESVC_DATA_DIR": str(tmp_path)}, embedded=True)
    assert embedded.image_store == str(tmp_path / "images")
    assert Settings.from_env({"IMAGESVC_IMAGE_STORE": "none"}, embedded=True).image_store == "none"
    assert Settings.from_env({}).image_store == "none"  # distributed: no image server unless configured


def test_repositories_are_name_url_pairs():
    settings = Settings.from_env({"IMAGESVC_IMAGE_REPOSITORIES": "b=https://b.test/, a=http://a.test"})
    assert settings.repositories() == {"a": "http://a.test", "b": "https://b.test/"}
    with pytest.raises(ConfigError, match="IMAGESVC_IMAGE_REPOSITORIES"):
        Settings.from_env({"IMAGESVC_IMAGE_REPOSITORIES": "nourl"})
    for bad_name in ("a b=https://x.test", "a/b=https://x.test", "r" * 65 + "=https://x.test"):
        with pytest.raises(ConfigError, match="repository name"):
            Settings.from_env({"IMAGESVC_IMAGE_REPOSITORIES": bad_name})


def test_overrides_are_validated_too():
    with pytest.raises(ConfigError, match="IMAGESVC_MAX_ATTEMPTS"):
        Settings.from_env({}, max_attempts=0)


def test_settings_are_immutable():
    settings = Settings.from_env({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.prefetch = 1  # type: ignore[misc]


def test_embedded_broker_only_for_memory_urls():
    assert Settings.from_env({}).embedded_broker is False
    assert Settings.from_env({"IMAGESVC_BROKER_URL": "memory://"}).embedded_broker is True


@pytest.mark.parametrize("value", ["10.0.0.0/33", "repo.internal:http", "[::1]:port"])
def test_malformed_fetch_allow_entries_raise_config_error_naming_the_variable(value):
    with pytest.raises(ConfigError, match="IMAGESVC_FETCH_ALLOW"):
        Settings.from_env({"IMAGESVC_FETCH_ALLOW": value})


def test_the_node_agents_settings_are_read_and_checked(tmp_path):
    defaults = Settings()
    assert (defaults.snapshot_driver, defaults.snapshot_dir, defaults.snapshot_gzip_level) == ("file", "", 6)
    assert (defaults.zfs_command, defaults.zfs_dataset, defaults.local_node) == (
        "zfs", "zones/{vm_uuid}-disk{disk_index}", "")
    settings = Settings.from_env({
        "IMAGESVC_SNAPSHOT_DRIVER": "zfs",
        "IMAGESVC_SNAPSHOT_DIR": "/srv/vms",
        "IMAGESVC_SNAPSHOT_GZIP_LEVEL": "9",
        "IMAGESVC_ZFS_COMMAND": "/usr/sbin/zfs",
        "IMAGESVC_ZFS_DATASET": "tank/{vm_uuid}/disk{disk_id}",
        "IMAGESVC_LOCAL_NODE": "cn1.example.com",
    })
    assert (settings.snapshot_driver, settings.snapshot_dir, settings.snapshot_gzip_level) == ("zfs", "/srv/vms", 9)
    assert (settings.zfs_command, settings.zfs_dataset) == ("/usr/sbin/zfs", "tank/{vm_uuid}/disk{disk_id}")
    assert settings.local_node == "cn1.example.com"
    embedded = Settings.from_env({"IMAGESVC_DATA_DIR": str(tmp_path)}, embedded=True)
    assert embedded.snapshot_dir == str(tmp_path / "vms")


@pytest.mark.parametrize("variable, value", [
    ("IMAGESVC_SNAPSHOT_DRIVER", "lvm"),
    ("IMAGESVC_SNAPSHOT_GZIP_LEVEL", "0"),
    ("IMAGESVC_SNAPSHOT_GZIP_LEVEL", "10"),
    ("IMAGESVC_SNAPSHOT_GZIP_LEVEL", "best"),
    ("IMAGESVC_ZFS_COMMAND", " "),
    ("IMAGESVC_ZFS_DATASET", "zones/{uuid}"),
    ("IMAGESVC_ZFS_DATASET", "zones/{vm_uuid}@snap"),
    ("IMAGESVC_LOCAL_NODE", "bad host"),
])
def test_bad_node_agent_settings_raise_config_error_naming_the_variable(variable, value):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: value})
    assert variable in str(caught.value)


def test_the_broker_trust_settings_name_users_per_role():
    settings = Settings.from_env({"IMAGESVC_SERVICE_USERS": "imagesvc, imagesvc-gw", "IMAGESVC_NODE_PUBLISHERS":
                                  "nodewatch", "IMAGESVC_VM_PUBLISHERS": "vmbridge,vmbridge2"})
    assert settings.service_users == ("imagesvc", "imagesvc-gw")
    assert settings.node_publishers == ("nodewatch",) and settings.vm_publishers == ("vmbridge", "vmbridge2")


def test_a_renamed_variable_is_refused_rather_than_ignored():
    """Ignored, it would silently trust the default service user instead of the configured ones."""
    with pytest.raises(ConfigError, match="IMAGESVC_TRUSTED_BROKER_USERS was renamed IMAGESVC_SERVICE_USERS"):
        Settings.from_env({"IMAGESVC_TRUSTED_BROKER_USERS": "imagesvc"})


@pytest.mark.parametrize("variable, value", [("IMAGESVC_MAX_MESSAGE_BYTES", "1000"),
                                             ("IMAGESVC_QUEUE_MAX_LENGTH", "0"),
                                             ("IMAGESVC_DEAD_LETTER_MAX_LENGTH", "-1")])
def test_message_and_queue_limits_must_be_usable(variable, value):
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env({variable: value})


@pytest.mark.parametrize("threads, setting, cap", [(8, 0, 4), (2, 0, 1), (1, 0, 1), (8, 6, 6)])
def test_the_cap_on_a_users_long_running_commands_is_half_the_threads_unless_set(threads, setting, cap):
    from imagesvc.bootstrap import LONG_RUNNING_COMMANDS, user_slots

    slots = user_slots(Settings(long_commands_per_user=setting), threads)
    assert slots.per_user == cap and slots.command_types == frozenset(LONG_RUNNING_COMMANDS)


def test_the_http_edge_settings_have_their_defaults_and_are_read():
    defaults = Settings.from_env({})
    assert (defaults.header_timeout, defaults.body_timeout, defaults.max_header_bytes, defaults.max_connections) == (
        10.0, 30.0, 16384, 4096)
    assert (defaults.trusted_proxies, defaults.login_throttle) == ((), "10/minute")
    assert (defaults.password_hash_threads, defaults.password_hash_queue) == (1, 8)
    settings = Settings.from_env({
        "IMAGESVC_HEADER_TIMEOUT": "2.5", "IMAGESVC_BODY_TIMEOUT": "7", "IMAGESVC_MAX_HEADER_BYTES": "8192",
        "IMAGESVC_MAX_CONNECTIONS": "100", "IMAGESVC_TRUSTED_PROXIES": "10.0.0.1, 192.168.0.0/16, ::1",
        "IMAGESVC_LOGIN_THROTTLE": "off", "IMAGESVC_PASSWORD_HASH_THREADS": "2", "IMAGESVC_PASSWORD_HASH_QUEUE": "0",
    })
    assert (settings.header_timeout, settings.body_timeout, settings.max_header_bytes, settings.max_connections) == (
        2.5, 7.0, 8192, 100)
    assert settings.trusted_proxies == ("10.0.0.1", "192.168.0.0/16", "::1")
    assert (settings.login_throttle, settings.password_hash_threads, settings.password_hash_queue) == ("off", 2, 0)


@pytest.mark.parametrize("variable, value", [
    ("IMAGESVC_HEADER_TIMEOUT", "0"), ("IMAGESVC_HEADER_TIMEOUT", "nan"), ("IMAGESVC_BODY_TIMEOUT", "inf"),
    ("IMAGESVC_BODY_TIMEOUT", "-1"), ("IMAGESVC_MAX_HEADER_BYTES", "512"), ("IMAGESVC_MAX_CONNECTIONS", "0"),
    ("IMAGESVC_TRUSTED_PROXIES", "proxy.example"), ("IMAGESVC_TRUSTED_PROXIES", "10.0.0.0/33"),
    ("IMAGESVC_LOGIN_THROTTLE", "lots"), ("IMAGESVC_PASSWORD_HASH_THREADS", "0"),
    ("IMAGESVC_PASSWORD_HASH_QUEUE", "-1"), ("IMAGESVC_MAX_CONNECTIONS", "1" * 5000),
])
def test_bad_http_edge_settings_raise_config_error_naming_the_variable(variable, value):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: value})
    assert variable in str(caught.value)
