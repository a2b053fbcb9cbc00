"""shared.net.fetch: which URLs the importer may fetch (deviations #6).

Every test injects a resolver that records its calls; nothing here touches the network.
"""

from __future__ import annotations

import ipaddress

import pytest

from imagesvc.shared.net.fetch import FetchError, UrlPolicy, is_public_address, literal_address, parse_allow_list

PUBLIC = "93.184.216.34"


class RecordingResolver:
    def __init__(self, answers: dict[str, list[str]] | None = None, default: list[str] | None = None):
        self.answers = answers or {}
        self.default = [PUBLIC] if default is None else default
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        return list(self.answers.get(host, self.default))


def refused(policy: UrlPolicy, url: str) -> FetchError:
    with pytest.raises(FetchError) as caught:
        policy.resolve(url)
    assert caught.value.code == "url_not_allowed", str(caught.value)
    return caught.value


# --- refusals that need no DNS --------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://2130706433/",
        "http://0x7f000001/",
        "http://017700000001/",
        "http://0177.0.0.01/",
        "http://127.1/",
        "http://0.0.0.0/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00::1]/",
        "http://10.0.0.1/",
        "http://100.64.0.1/",
        "http://192.0.0.8/",
        "http://user@127.0.0.1:80@x.test/",
        # more of the same families
        "https://127.0.0.1/",
        "http://127.0.0.1:80/",
        "http://[::]/",
        "http://[fe80::1]/",
        "http://[2002:7f00:1::]/",  # 6to4 wrapping 127.0.0.1
        "http://[64:ff9b::a00:1]/",  # NAT64 of 10.0.0.1
        "http://172.16.0.1/",
        "http://192.168.1.1/",
        "http://198.18.0.1/",
        "http://224.0.0.1/",
        "http://240.0.0.1/",
        "http://255.255.255.255/",
        "http://0/",
        "http://user:pass@example.com/",
        "http://user@example.com/",
    ],
)
def test_private_loopback_encoded_and_credential_urls_are_refused_without_dns(url):
    resolver = RecordingResolver(default=["127.0.0.1"])
    refused(UrlPolicy(resolver=resolver), url)
    assert resolver.calls == []


def test_ipv4_compatible_ipv6_loopback_is_refused():
    # ::a.b.c.d (deprecated IPv4-compatible form) lies in the IETF-reserved ::/8: not global.
    resolver = RecordingResolver()
    refused(UrlPolicy(resolver=resolver), "http://[::127.0.0.1]/")
    assert resolver.calls == []


def test_localhost_is_refused_after_one_lookup():
    resolver = RecordingResolver({"localhost": ["127.0.0.1"]})
    error = refused(UrlPolicy(resolver=resolver), "http://localhost/")
    assert resolver.calls == [("localhost", 80)]
    assert "127.0.0.1" in str(error)


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "file://localhost/etc/passwd",
        "gopher://example.com/_GET",
        "ftp://example.com/image",
        "dict://example.com:11211/stat",
        "data:text/plain,hello",
        "ldap://example.com/",
        "example.com/images/x",
        "//example.com/images/x",
    ],
)
def test_schemes_other_than_http_and_https_are_refused(url):
    resolver = RecordingResolver()
    refused(UrlPolicy(resolver=resolver), url)
    assert resolver.calls == []


@pytest.mark.parametrize("url", ["http://example.com:22/", "https://example.com:8443/x", "http://example.com:8080/",
                                 "http://example.com:25/", "https://93.184.216.34:6379/"])
def test_ports_other_than_80_and_443_are_refused_for_a_public_host(url):
    resolver = RecordingResolver()
    refused(UrlPolicy(resolver=resolver), url)
    assert resolver.calls == []


@pytest.mark.parametrize("url, port", [("http://example.com:80/", 80), ("https://example.com:443/", 443),
                                       ("http://example.com:443/", 443), ("https://example.com:80/", 80)])
def test_ports_80_and_443_are_admitted_for_either_scheme(url, port):
    assert UrlPolicy(resolver=RecordingResolver()).resolve(url)[2:] == (port, PUBLIC)


@pytest.mark.parametrize("url", ["http://", "http:///path", "http://example.com:99999/", "http://[::1/"])
def test_malformed_urls_are_refused(url):
    resolver = RecordingResolver()
    refused(UrlPolicy(resolver=resolver), url)
    assert resolver.calls == []


# --- refusals after DNS ---------------------------------------------------------------------------


@pytest.mark.parametrize("addresses", [[PUBLIC, "127.0.0.1"], ["127.0.0.1", PUBLIC], [PUBLIC, "::1"],
                                       [PUBLIC, "10.1.2.3"], ["::ffff:169.254.169.254"]])
def test_a_host_with_any_non_public_address_is_refused(addresses):
    resolver = RecordingResolver({"mixed.example.com": addresses})
    refused(UrlPolicy(resolver=resolver), "http://mixed.example.com/")
    assert resolver.calls == [("mixed.example.com", 80)]


def test_resolver_failure_is_a_connection_error():
    def failing(host: str, port: int):
        raise OSError(-2, "Name or service not known")

    with pytest.raises(FetchError) as caught:
        UrlPolicy(resolver=failing).resolve("http://nowhere.example.com/")
    assert caught.value.code == "connection_error"


def test_empty_resolution_is_a_connection_error():
    with pytest.raises(FetchError) as caught:
        UrlPolicy(resolver=RecordingResolver(default=[])).resolve("http://nowhere.example.com/")
    assert caught.value.code == "connection_error"


# --- admission ------------------------------------------------------------------------------------


def test_a_public_host_is_admitted_and_pinned_to_its_address():
    resolver = RecordingResolver({"images.example.com": [PUBLIC]})
    policy = UrlPolicy(resolver=resolver)
    assert policy.resolve("https://images.example.com/images/x") == ("https", "images.example.com", 443, PUBLIC)
    assert resolver.calls == [("images.example.com", 443)]


def test_the_first_resolved_address_is_used_when_all_are_public():
    resolver = RecordingResolver({"multi.example.com": [PUBLIC, "2606:2800:220:1::1"]})
    assert UrlPolicy(resolver=resolver).resolve("http://multi.example.com/")[3] == PUBLIC


@pytest.mark.parametrize("url, address", [("http://93.184.216.34/x", PUBLIC), ("http://[2606:4700::1]/", "2606:4700::1")])
def test_a_public_ip_literal_is_admitted_without_dns(url, address):
    resolver = RecordingResolver()
    assert UrlPolicy(resolver=resolver).resolve(url)[3] == address
    assert resolver.calls == []


def test_check_static_returns_scheme_host_and_default_port():
    policy = UrlPolicy(resolver=RecordingResolver())
    assert policy.check_static("HTTP://Example.COM./path") == ("http", "example.com", 80)


# --- allow-list -----------------------------------------------------------------------------------


def test_allow_list_ip_admits_that_address_on_any_port():
    resolver = RecordingResolver()
    policy = UrlPolicy(["127.0.0.1"], resolver=resolver)
    assert policy.resolve("http://127.0.0.1/")[3] == "127.0.0.1"
    assert policy.resolve("http://127.0.0.1:8080/x")[3] == "127.0.0.1"
    assert resolver.calls == []
    refused(policy, "http://127.0.0.2/")
    refused(policy, "http://10.0.0.1/")


def test_allow_list_cidr_with_port_admits_only_that_port():
    policy = UrlPolicy(["10.0.0.0/8:8080"], resolver=RecordingResolver())
    assert policy.resolve("http://10.1.2.3:8080/")[3] == "10.1.2.3"
    refused(policy, "http://10.1.2.3/")
    refused(policy, "http://10.1.2.3:8081/")
    refused(policy, "http://11.0.0.1:8080/")
    refused(policy, "http://192.168.0.1:8080/")


def test_allow_list_cidr_admits_a_name_resolving_inside_it():
    resolver = RecordingResolver({"repo.lan": ["10.9.8.7"]})
    policy = UrlPolicy(["10.0.0.0/8"], resolver=resolver)
    assert policy.resolve("http://repo.lan/")[3] == "10.9.8.7"
    resolver.answers["repo.lan"] = ["10.9.8.7", "192.168.1.1"]
    refused(policy, "http://repo.lan/")


def test_allow_list_address_admits_a_name_resolving_to_it_on_any_port():
    resolver = RecordingResolver({"localhost": ["127.0.0.1"], "public.test": [PUBLIC]})
    policy = UrlPolicy(["127.0.0.1"], resolver=resolver)
    assert policy.check_static("http://localhost:8124/m") == ("http", "localhost", 8124)  # decided after DNS
    assert policy.resolve("http://localhost:8124/m")[3] == "127.0.0.1"
    refused(policy, "http://public.test:8124/")  # admitted by no entry: standard ports only
    resolver.answers["localhost"] = ["127.0.0.1", "10.0.0.1"]
    refused(policy, "http://localhost:8124/")


def test_without_address_entries_a_name_on_another_port_is_refused_before_dns():
    resolver = RecordingResolver()
    policy = UrlPolicy(["repo.internal"], resolver=resolver)
    refused(policy, "http://elsewhere.test:8124/")
    assert resolver.calls == []


def test_a_lookup_that_hangs_times_out():
    import threading

    release = threading.Event()

    def stuck(host, port):
        release.wait(5)
        return [PUBLIC]

    policy = UrlPolicy([], resolver=stuck)
    try:
        with pytest.raises(FetchError) as caught:
            policy.resolve("http://slow.test/", timeout=0.2)
        assert caught.value.code == "timeout"
    finally:
        release.set()


def test_allow_list_host_admits_that_name_on_any_port_whatever_it_resolves_to():
    resolver = RecordingResolver({"repo.internal": ["10.0.0.5"]}, default=["10.0.0.5"])
    policy = UrlPolicy(["repo.internal"], resolver=resolver)
    assert policy.resolve("http://repo.internal/images/x") == ("http", "repo.internal", 80, "10.0.0.5")
    assert policy.resolve("https://REPO.internal.:9443/x")[3] == "10.0.0.5"
    refused(policy, "http://other.internal/")
    refused(policy, "http://sub.repo.internal/")


def test_allow_list_bracketed_ipv6_with_port_admits_only_that_port():
    policy = UrlPolicy(["[::1]:9000"], resolver=RecordingResolver())
    assert policy.resolve("http://[::1]:9000/")[3] == "::1"
    refused(policy, "http://[::1]/")
    refused(policy, "http://[::1]:9001/")
    refused(policy, "http://127.0.0.1:9000/")


def test_allow_list_does_not_admit_credentials():
    policy = UrlPolicy(["127.0.0.1"], resolver=RecordingResolver())
    refused(policy, "http://user@127.0.0.1/")


def test_allow_list_does_not_admit_other_schemes():
    policy = UrlPolicy(["127.0.0.1"], resolver=RecordingResolver())
    refused(policy, "ftp://127.0.0.1/")


def test_parse_allow_list_entries():
    entries = parse_allow_list(["127.0.0.1", " 10.0.0.0/8:8080 ", "Repo.Internal.", "[::1]:9000", "fd00::/8",
                                "[fd00::/8]:9000", "repo.lan:8080", "", "::1"])
    assert [(e.host, e.network, e.port) for e in entries] == [
        (None, ipaddress.ip_network("127.0.0.1/32"), None),
        (None, ipaddress.ip_network("10.0.0.0/8"), 8080),
        ("repo.internal", None, None),
        (None, ipaddress.ip_network("::1/128"), 9000),
        (None, ipaddress.ip_network("fd00::/8"), None),
        (None, ipaddress.ip_network("fd00::/8"), 9000),
        ("repo.lan", None, 8080),
        (None, ipaddress.ip_network("::1/128"), None),
    ]


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "host:port", "10.0.0.1:", "/8", "[::1]:x"])
def test_parse_allow_list_refuses_malformed_entries(entry):
    with pytest.raises(ValueError):
        parse_allow_list([entry])


# --- literal_address and is_public_address --------------------------------------------------------


@pytest.mark.parametrize(
    "host, expected",
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0177.0.0.01", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("0", "0.0.0.0"),
        ("::1", "::1"),
        ("::ffff:127.0.0.1", "::ffff:7f00:1"),
        ("example.com", None),
        ("localhost", None),
        ("deadbeef", None),
        ("1.2.3.4.5", None),
        ("abc.def", None),
    ],
)
def test_literal_address_decodes_ip_literals_and_legacy_ipv4_forms(host, expected):
    assert literal_address(host) == expected


@pytest.mark.parametrize("address", [PUBLIC, "8.8.8.8", "1.1.1.1", "2606:4700::1", "2a00:1450:4001::200e"])
def test_is_public_address_accepts_global_unicast(address):
    assert is_public_address(address) is True


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.0.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
        "192.0.0.8", "192.0.2.1", "198.18.0.1", "198.51.100.1", "203.0.113.1", "224.0.0.1", "240.0.0.1",
        "255.255.255.255", "::", "::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "fd00::1", "fe80::1",
        "ff02::1", "2001:db8::1", "2002:7f00:1::", "2002:a00:1::", "64:ff9b::a00:1", "2001:0:4136:e378:8000:63bf:f5ff:fffe",
    ],
)
def test_is_public_address_refuses_everything_else(address):
    assert is_public_address(address) is False


def test_a_public_address_inside_6to4_is_public():
    assert is_public_address("2002:5db8:d822::1") is True  # 6to4 of 93.184.216.34
