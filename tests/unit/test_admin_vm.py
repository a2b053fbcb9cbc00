"""``imagesvc admin vm ...``: VMs and their disk snapshots by hand (exit codes as ``admin node``:
0 done, 1 refused by what is stored, 2 an argument that could never be stored)."""

from __future__ import annotations

import json

import pytest

from imagesvc.cli import main
from imagesvc.shared.logging import configure_logging

VM = "11111111-2222-4333-8444-555555555501"
VM2 = "11111111-2222-4333-8444-555555555502"
IMAGE = "6f0b3a1e-7c2d-4e5f-8a9b-0c1d2e3f4a5b"


@pytest.fixture(autouse=True)
def logging_to_the_real_stderr():
    """Commands configure logging onto the sys.stderr of the moment, which capsys replaces and
    then closes: put it back for the tests that follow."""
    yield
    configure_logging("tests", fmt="console")


@pytest.fixture
def database(migrated_url, monkeypatch):
    monkeypatch.setenv("IMAGESVC_DATABASE_URL", migrated_url)


def lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def set_vm(uuid=VM, hostname="web01", *more: str) -> int:
    return main(["admin", "vm", "set", uuid, "--hostname", hostname, "--dc", "main", "--node", "cn1",
                 "--status", "running", "--ostype", "1", *more])


def test_admin_vm_set_list_remove(database, capsys):
    assert main(["admin", "vm", "list"]) == 0
    assert lines(capsys) == []
    assert set_vm(VM, "web01", "--disk", f"1:10240:{IMAGE}", "--disk", "2:512") == 0
    assert set_vm(VM2, "db01", "--replica-of", VM.upper()) == 0
    assert f"VM {VM!r} (web01) is running in main on cn1" in capsys.readouterr().out
    assert main(["admin", "vm", "list"]) == 0
    listed = lines(capsys)
    assert [{k: v for k, v in vm.items() if k != "changed_at"} for vm in listed] == [
        {"uuid": VM2, "hostname": "db01", "dc": "main", "node": "cn1", "status": "running", "ostype": 1,
         "replica_of": VM, "disks": []},
        {"uuid": VM, "hostname": "web01", "dc": "main", "node": "cn1", "status": "running", "ostype": 1,
         "replica_of": None, "disks": [{"disk_id": 1, "size": 10240, "image_uuid": IMAGE},
                   {"disk_id": 2, "size": 512, "image_uuid": None}]}]
    assert all(vm["changed_at"].endswith("Z") for vm in listed)

    assert main(["admin", "vm", "remove", VM2]) == 0
    assert main(["admin", "vm", "remove", VM2]) == 1
    assert capsys.readouterr().err.strip() == f"imagesvc: no VM {VM2!r}"
    assert main(["admin", "vm", "list"]) == 0
    assert [vm["hostname"] for vm in lines(capsys)] == ["web01"]


def test_admin_vm_set_refuses_a_replica_of_no_vm_or_of_itself(database, capsys):
    assert set_vm(VM, "web01", "--replica-of", "web00") == 2
    assert "replica_of must be a UUID" in capsys.readouterr().err
    assert set_vm(VM, "web01", "--replica-of", VM) == 2
    assert "replica_of must name another VM" in capsys.readouterr().err


def test_admin_vm_set_notes_a_status_that_is_not_operational(database, capsys):
    assert main(["admin", "vm", "set", VM, "--hostname", "web01", "--dc", "main", "--node", "cn1",
                 "--status", "notcreated", "--ostype", "1"]) == 0
    assert "'notcreated' is not one of running, stopped, stopping, frozen" in capsys.readouterr().err


def test_admin_vm_snapshots_by_hostname_or_uuid(database, capsys):
    assert set_vm(VM, "web01", "--disk", "1:10240", "--disk", "2:512") == 0
    assert main(["admin", "vm", "snapshot", "set", "web01", "daily", "--disk", "1"]) == 0
    assert main(["admin", "vm", "snapshot", "set", VM, "weekly", "--disk", "2", "--status", "pending"]) == 0
    assert "snapshot 'daily' of VM 'web01' disk 1 is ok" in capsys.readouterr().out
    assert main(["admin", "vm", "snapshot", "list", "web01"]) == 0
    assert [(s["vm_uuid"], s["disk_id"], s["name"], s["status"]) for s in lines(capsys)] == [
        (VM, 1, "daily", "ok"), (VM, 2, "weekly", "pending")]

    assert main(["admin", "vm", "snapshot", "set", "web01", "x", "--disk", "3"]) == 1
    assert capsys.readouterr().err.strip() == "imagesvc: VM 'web01' has no disk 3"
    assert main(["admin", "vm", "snapshot", "set", "nowhere", "x", "--disk", "1"]) == 1
    assert capsys.readouterr().err.strip() == "imagesvc: no VM 'nowhere'"
    assert main(["admin", "vm", "snapshot", "list", "nowhere"]) == 1

    assert main(["admin", "vm", "snapshot", "remove", "web01", "daily", "--disk", "1"]) == 0
    assert main(["admin", "vm", "snapshot", "remove", "web01", "daily", "--disk", "1"]) == 1
    assert "no snapshot 'daily' on disk 1 of VM 'web01'" in capsys.readouterr().err
    assert main(["admin", "vm", "snapshot", "list"]) == 0
    assert [s["name"] for s in lines(capsys)] == ["weekly"]

    assert main(["admin", "vm", "remove", VM]) == 0  # its snapshots go with it
    capsys.readouterr()
    assert main(["admin", "vm", "snapshot", "list"]) == 0
    assert lines(capsys) == []


@pytest.mark.parametrize("arguments", [
    ["set", "web01", "--hostname", "web01", "--dc", "main", "--node", "cn1", "--status", "running", "--ostype", "1"],
    ["set", VM, "--hostname", "web 01", "--dc", "main", "--node", "cn1", "--status", "running", "--ostype", "1"],
    ["set", VM, "--hostname", "web01", "--dc", "d" * 17, "--node", "cn1", "--status", "running", "--ostype", "1"],
    ["set", VM, "--hostname", "web01", "--dc", "main", "--node", "cn1", "--status", "running", "--ostype", "8"],
    ["set", VM, "--hostname", "web01", "--dc", "main", "--node", "cn1", "--status", "", "--ostype", "1"],
    ["set", VM, "--hostname", "web01", "--dc", "main", "--node", "cn1", "--status", "running", "--ostype", "1",
     "--disk", "1"],
    ["set", VM, "--hostname", "web01", "--dc", "main", "--node", "cn1", "--status", "running", "--ostype", "1",
     "--disk", "1:x"],
    ["set", VM, "--hostname", "web01", "--dc", "main", "--node", "cn1", "--status", "running", "--ostype", "1",
     "--disk", "1:10:centos"],
    ["set", VM, "--hostname", "web01", "--dc", "main", "--node", "cn1", "--status", "running", "--ostype", "1",
     "--disk", "1:10", "--disk", "1:20"],
    ["remove", "web01"],
    ["snapshot", "set", "web01", "a b", "--disk", "1"],
    ["snapshot", "set", "web01", "daily", "--disk", "0"],
    ["snapshot", "set", "web01", "daily", "--disk", "1", "--status", ""],
])
def test_admin_vm_refuses_what_could_never_be_stored_with_status_2(database, capsys, arguments):
    assert main(["admin", "vm", *arguments]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("imagesvc: ") and "\n" not in error
    assert main(["admin", "vm", "list"]) == 0
    assert capsys.readouterr().out == ""


def test_admin_vm_set_requires_its_facts(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["admin", "vm", "set", VM, "--hostname", "web01"])
    assert exited.value.code == 2 and "--dc" in capsys.readouterr().err
