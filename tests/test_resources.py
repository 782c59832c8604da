"""The memory rule of pyro_vae.resources: the smallest of MemAvailable, the cgroup's room and the room under ulimit -v."""

import pytest

from pyro_vae import UserError, resources


def test_available_memory_is_the_smallest_known_room(monkeypatch):
    monkeypatch.setattr(resources, "_meminfo_available", lambda: 8_000)
    monkeypatch.setattr(resources, "_cgroup_room", lambda: None)
    monkeypatch.setattr(resources, "_address_space_room", lambda: None)
    assert resources.available_memory() == 8_000
    monkeypatch.setattr(resources, "_cgroup_room", lambda: 5_000)
    assert resources.available_memory() == 5_000
    monkeypatch.setattr(resources, "_address_space_room", lambda: 3_000)
    assert resources.available_memory() == 3_000
    for name in ("_meminfo_available", "_cgroup_room", "_address_space_room"):
        monkeypatch.setattr(resources, name, lambda: None)
    assert resources.available_memory() is None
    resources.check_memory(10**18, "anything")  # nothing known: nothing refused


def test_meminfo_is_read_in_bytes():
    with open("/proc/meminfo") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    # MemAvailable moves while we read it; it is in kB, so the bytes are ~1024 times the number
    assert abs(resources._meminfo_available() - kb * 1024) < 0.2 * kb * 1024


def test_address_space_room_under_a_limit(monkeypatch):
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda what: (6_000_000_000, resource.RLIM_INFINITY))
    with open("/proc/self/status") as f:
        size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    room = resources._address_space_room()
    assert 0 <= 6_000_000_000 - size - room < 0.05 * 6_000_000_000  # the process grows a little between the reads
    monkeypatch.setattr(resource, "getrlimit", lambda what: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert resources._address_space_room() is None


def test_check_memory_refuses_with_one_line_naming_the_sizes():
    resources.check_memory(999, "x", available=1000)
    resources.check_memory(1000, "x", available=1000)
    with pytest.raises(UserError) as e:
        resources.check_memory(2_500_000_000, "40 images of 9000x9000 pixels", "use fewer", available=1_200_000)
    assert str(e.value) == ("40 images of 9000x9000 pixels would need about 2.5 GB of memory, more than the 1.2 MB "
                            "available; use fewer")  # fmt: skip


@pytest.mark.parametrize("n,text", [(0, "0 bytes"), (999, "999 bytes"), (1000, "1.0 KB"), (1_500_000, "1.5 MB"),
                                    (2 * 10**12, "2.0 TB"), (9 * 10**15, "9000.0 TB")])  # fmt: skip
def test_format_bytes(n, text):
    assert resources.format_bytes(n) == text
