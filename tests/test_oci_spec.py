"""OCI spec generation, user/group resolution from a rootfs, the default seccomp profile, and the
container record store (unit tests: no runc, no mounts)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from pyctr.errdefs import AlreadyExists, InvalidArgument, NotFound
from pyctr.metadata.containers import Container, ContainerStore, RuntimeInfo
from pyctr.metadata.db import MetadataDB
from pyctr.oci import (
    DEFAULT_CAPABILITIES,
    DEFAULT_PATH_ENV,
    RunOptions,
    generate_spec,
    merge_env,
    parse_env_file,
    parse_mount,
    parse_size,
    parse_volume,
)
from pyctr.seccomp_default import allowed_syscalls, default_profile
from pyctr.usergroup import DirRoot, LayeredRoot, resolve_user, root_for_mounts

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
    "app:x:1000:1000:app:/home/app:/bin/sh\n"
    "big:x:2147483648:5:big:/:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\nwheel:x:10:root,app\naudio:x:29:app\napp:x:1000:\nstaff:x:50:\n"


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    r = tmp_path / "rootfs"
    (r / "etc").mkdir(parents=True)
    (r / "etc" / "passwd").write_text(PASSWD)
    (r / "etc" / "group").write_text(GROUP)
    return r


def cfg(**kw: Any) -> dict[str, Any]:
    return {"architecture": "amd64", "os": "linux", "config": kw}


def spec(config: dict[str, Any] | None = None, root: Any = None, **opts: Any) -> dict[str, Any]:
    return generate_spec(config if config is not None else cfg(Cmd=["sh"]), root, RunOptions(**opts),
                         container_id="c1", namespace="ns1")


# -- process ----------------------------------------------------------------------------------------

def test_args_are_entrypoint_plus_cmd_or_user_args() -> None:
    c = cfg(Entrypoint=["/bin/tini", "--"], Cmd=["nginx", "-g", "daemon off;"])
    assert spec(c)["process"]["args"] == ["/bin/tini", "--", "nginx", "-g", "daemon off;"]
    assert spec(c, args=["sh"])["process"]["args"] == ["/bin/tini", "--", "sh"]
    assert spec(c, entrypoint=["/bin/echo"], args=["hi"])["process"]["args"] == ["/bin/echo", "hi"]
    # a new entrypoint drops the image's Cmd, as docker does
    assert spec(c, entrypoint=["/bin/true"])["process"]["args"] == ["/bin/true"]
    assert spec(c, entrypoint=[], args=["ls"])["process"]["args"] == ["ls"]


def test_no_command_is_an_error() -> None:
    with pytest.raises(InvalidArgument, match="no command"):
        spec(cfg())


def test_env_default_path_and_overrides() -> None:
    assert spec(cfg(Cmd=["sh"]))["process"]["env"] == [DEFAULT_PATH_ENV]
    c = cfg(Cmd=["sh"], Env=["PATH=/bin", "A=1", "B=2"])
    env = spec(c, env=["A=10", "C=3", "B"])["process"]["env"]
    assert env == ["PATH=/bin", "A=10", "C=3"]
    assert "TERM=xterm" in spec(c, tty=True)["process"]["env"]
    assert spec(c, tty=True)["process"]["terminal"] is True


def test_merge_env_replaces_by_key_only() -> None:
    assert merge_env(["AB=1", "A=2"], ["A=3"]) == ["AB=1", "A=3"]


def test_cwd() -> None:
    assert spec()["process"]["cwd"] == "/"
    assert spec(cfg(Cmd=["sh"], WorkingDir="/srv"))["process"]["cwd"] == "/srv"
    assert spec(cfg(Cmd=["sh"], WorkingDir="/srv"), workdir="/tmp")["process"]["cwd"] == "/tmp"
    with pytest.raises(InvalidArgument):
        spec(workdir="relative")


# -- users ------------------------------------------------------------------------------------------

def test_user_by_name_with_supplementary_groups(rootfs: Path) -> None:
    u = spec(cfg(Cmd=["sh"], User="app"), DirRoot(rootfs))["process"]["user"]
    assert u == {"uid": 1000, "gid": 1000, "additionalGids": [1000, 10, 29]}


def test_root_gets_its_groups_when_no_user(rootfs: Path) -> None:
    assert spec(root=rootfs)["process"]["user"] == {"uid": 0, "gid": 0, "additionalGids": [0, 10]}
    assert spec()["process"]["user"] == {"uid": 0, "gid": 0, "additionalGids": [0]}


@pytest.mark.parametrize(("user", "want"), [
    ("1000", (1000, 1000, [1000, 10, 29])),
    ("4242", (4242, 0, [0])),
    ("app:staff", (1000, 50, [50])),
    ("app:7", (1000, 7, [7])),
    ("0:50", (0, 50, [50])),
    ("daemon", (1, 1, [1])),
])
def test_user_forms(rootfs: Path, user: str, want: tuple[int, int, list[int]]) -> None:
    u = resolve_user(user, rootfs)
    assert (u.uid, u.gid, u.additional_gids) == want


def test_user_errors(rootfs: Path) -> None:
    with pytest.raises(NotFound, match="ghost"):
        resolve_user("ghost", rootfs)
    with pytest.raises(NotFound, match="nogroup"):
        resolve_user("app:nogroup", rootfs)
    with pytest.raises(InvalidArgument, match="out of range"):
        resolve_user("2147483648", rootfs)
    with pytest.raises(InvalidArgument, match="out of range"):
        resolve_user("big", rootfs)  # uid from /etc/passwd above MaxInt32 (CVE-2024-40635)
    with pytest.raises(InvalidArgument, match="out of range"):
        resolve_user("0:4294967295", rootfs)
    with pytest.raises(InvalidArgument):
        resolve_user("app:", rootfs)
    with pytest.raises(InvalidArgument, match="no rootfs"):
        resolve_user("app", None)


def test_passwd_symlink_cannot_escape_the_root(tmp_path: Path) -> None:
    r = tmp_path / "evil"
    (r / "etc").mkdir(parents=True)
    (r / "inside").write_text("inside:x:7:7::/:/bin/sh\n")
    outside = tmp_path / "outside-passwd"
    outside.write_text("host:x:0:0::/:/bin/sh\n")
    # absolute and ../ targets are resolved inside the root, never on the host
    os.symlink(str(outside), r / "etc" / "passwd")
    assert DirRoot(r).read_file("/etc/passwd") is None
    os.unlink(r / "etc" / "passwd")
    os.symlink("../../../../" + str(outside), r / "etc" / "passwd")
    assert DirRoot(r).read_file("/etc/passwd") is None
    os.unlink(r / "etc" / "passwd")
    os.symlink("/inside", r / "etc" / "passwd")
    assert resolve_user("inside", r).uid == 7
    os.unlink(r / "etc" / "passwd")
    os.symlink("passwd", r / "etc" / "passwd")  # a loop
    with pytest.raises(InvalidArgument, match="symbolic links"):
        DirRoot(r).read_file("/etc/passwd")


def test_layered_root_reads_like_overlayfs(tmp_path: Path) -> None:
    lower, mid, upper = (tmp_path / n for n in ("lower", "mid", "upper"))
    for d in (lower, mid, upper):
        (d / "etc").mkdir(parents=True)
    (lower / "etc" / "passwd").write_text("old:x:1:1::/:/bin/sh\n")
    (lower / "etc" / "group").write_text("g:x:5:\n")
    (mid / "etc" / "passwd").write_text("new:x:2:2::/:/bin/sh\n")
    os.mknod(upper / "etc" / "group", 0o600 | 0o020000, os.makedev(0, 0))  # whiteout
    lr = LayeredRoot([str(upper), str(mid), str(lower)])
    assert lr.read_file("/etc/passwd") == b"new:x:2:2::/:/bin/sh\n"
    assert lr.read_file("/etc/group") is None
    options = [f"upperdir={upper}", f"workdir={tmp_path}/w", f"lowerdir={mid}:{lower}"]
    m = root_for_mounts([{"type": "overlay", "source": "overlay", "options": options}])
    assert isinstance(m, LayeredRoot) and m.read_file("/etc/passwd") == b"new:x:2:2::/:/bin/sh\n"
    b = root_for_mounts([{"type": "bind", "source": str(lower), "options": ["rbind", "rw"]}])
    assert isinstance(b, DirRoot) and b.read_file("/etc/passwd") == b"old:x:1:1::/:/bin/sh\n"


def test_layered_root_opaque_dir_hides_lower(tmp_path: Path) -> None:
    lower, upper = tmp_path / "l", tmp_path / "u"
    (lower / "etc").mkdir(parents=True)
    (upper / "etc").mkdir(parents=True)
    (lower / "etc" / "passwd").write_text("x:x:1:1::/:/bin/sh\n")
    try:
        os.setxattr(upper / "etc", "trusted.overlay.opaque", b"y")
    except OSError:
        pytest.skip("cannot set trusted xattrs here")
    assert LayeredRoot([str(upper), str(lower)]).read_file("/etc/passwd") is None


# -- linux: namespaces, mounts, caps, resources, seccomp ------------------------------------------

def test_containerd_defaults() -> None:
    s = spec()
    assert s["ociVersion"].startswith("1.0")
    assert s["root"] == {"path": "rootfs", "readonly": False}
    assert [n["type"] for n in s["linux"]["namespaces"]] == ["pid", "ipc", "uts", "mount", "network"]
    dests = [m["destination"] for m in s["mounts"]]
    for d in ("/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"):
        assert d in dests
    caps = s["process"]["capabilities"]
    assert caps["bounding"] == list(DEFAULT_CAPABILITIES) == caps["effective"] == caps["permitted"]
    assert "CAP_SYS_ADMIN" not in caps["bounding"]
    assert {"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024} in s["process"]["rlimits"]
    assert "/proc/kcore" in s["linux"]["maskedPaths"]
    assert "/proc/sys" in s["linux"]["readonlyPaths"]
    assert s["linux"]["cgroupsPath"] == "/ns1/c1"
    assert s["linux"]["resources"]["devices"][0] == {"allow": False, "access": "rwm"}
    assert s["process"]["noNewPrivileges"] is True
    assert s["hostname"] == "c1"
    assert s["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"


def test_capabilities_add_drop() -> None:
    caps = spec(cap_add=["NET_ADMIN", "cap_sys_ptrace"], cap_drop=["CHOWN"])["process"]["capabilities"]
    assert "CAP_NET_ADMIN" in caps["bounding"] and "CAP_SYS_PTRACE" in caps["bounding"]
    assert "CAP_CHOWN" not in caps["bounding"]
    assert spec(cap_drop=["ALL"])["process"]["capabilities"]["bounding"] == []
    assert spec(cap_drop=["ALL"], cap_add=["KILL"])["process"]["capabilities"]["bounding"] == ["CAP_KILL"]
    with pytest.raises(InvalidArgument, match="unknown capability"):
        spec(cap_add=["NOT_A_CAP"])


def test_privileged() -> None:
    s = spec(privileged=True)
    assert "CAP_SYS_ADMIN" in s["process"]["capabilities"]["bounding"]
    assert "seccomp" not in s["linux"] and "maskedPaths" not in s["linux"]
    assert s["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    sysfs = next(m for m in s["mounts"] if m["destination"] == "/sys")
    assert "ro" not in sysfs["options"]
    assert any(d["path"] == "/dev/null" for d in s["linux"]["devices"])


def test_resources_and_flags() -> None:
    s = spec(memory=parse_size("64m"), cpus=0.5, pids_limit=20, read_only=True, hostname="box")
    r = s["linux"]["resources"]
    assert r["memory"] == {"limit": 64 << 20}
    assert r["cpu"] == {"quota": 50000, "period": 100000}
    assert r["pids"] == {"limit": 20}
    assert s["root"]["readonly"] is True
    assert s["hostname"] == "box"
    with pytest.raises(InvalidArgument):
        spec(memory=1024)


def test_net_modes() -> None:
    host = spec(net="host")
    assert "network" not in [n["type"] for n in host["linux"]["namespaces"]]
    assert "hostname" not in host
    none = spec(net="none")
    assert "network" in [n["type"] for n in none["linux"]["namespaces"]]
    # a network's name: a private namespace too (the network plugin gives its path when the task is made)
    named = spec(net="bridge", publish=["127.0.0.1:8080:80"])
    assert {"type": "network"} in named["linux"]["namespaces"]
    with pytest.raises(InvalidArgument, match="--net"):
        spec(net="no such network!")
    with pytest.raises(InvalidArgument, match="--net host"):
        spec(net="host", publish=["8080:80"])
    with pytest.raises(InvalidArgument, match="-p"):
        spec(net="bridge", publish=["http"])


def test_seccomp_toggle_and_capability_rules() -> None:
    assert "seccomp" not in spec(seccomp=False)["linux"]
    plain = allowed_syscalls(DEFAULT_CAPABILITIES, "amd64")
    assert {"read", "execve", "clone", "socket", "arch_prctl"} <= plain
    assert "mount" not in plain and "reboot" not in plain and "kexec_load" not in plain
    admin = allowed_syscalls([*DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"], "amd64")
    assert {"mount", "unshare", "setns"} <= admin
    prof = default_profile(DEFAULT_CAPABILITIES, "amd64")
    assert prof["architectures"][0] == "SCMP_ARCH_X86_64"
    assert default_profile([], "amd64", x32=True)["architectures"] == [
        "SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert default_profile([], "amd64", x32=False)["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    clone = next(r for r in prof["syscalls"] if r["names"] == ["clone"])
    assert clone["args"][0]["op"] == "SCMP_CMP_MASKED_EQ" and clone["args"][0]["value"] == 0x7E020000
    clone3 = next(r for r in prof["syscalls"] if r["names"] == ["clone3"])
    assert clone3["action"] == "SCMP_ACT_ERRNO" and clone3["errnoRet"] == 38
    assert not any(r["names"] == ["clone3"] for r in default_profile([*DEFAULT_CAPABILITIES, "SYS_ADMIN"])
                   ["syscalls"] if r["action"] != "SCMP_ACT_ALLOW")


# -- option parsing ---------------------------------------------------------------------------------

def test_mount_and_volume_parsing(tmp_path: Path) -> None:
    m = parse_mount(f"type=bind,src={tmp_path},dst=/data,options=rbind:ro")
    assert m == {"destination": "/data", "type": "bind", "source": str(tmp_path), "options": ["rbind", "ro"]}
    m = parse_mount(f"type=bind,source={tmp_path},target=/d2,readonly")
    assert m["options"] == ["rbind", "ro"]
    v = parse_volume(f"{tmp_path}:/v")
    assert v["options"] == ["rbind", "rw"] and v["destination"] == "/v"
    assert parse_volume(f"{tmp_path}:/v:ro")["options"] == ["rbind", "ro"]
    with pytest.raises(InvalidArgument, match="does not exist"):
        parse_volume(f"{tmp_path}/missing:/v")
    with pytest.raises(InvalidArgument):
        parse_volume("named:/v")
    with pytest.raises(InvalidArgument):
        parse_mount("type=bind,src=/tmp")
    t = parse_mount("type=tmpfs,dst=/scratch")
    assert t["type"] == "tmpfs"
    s = spec(mounts=[v, {"destination": "/dev/shm", "type": "tmpfs", "source": "tmpfs", "options": []}])
    assert [m["destination"] for m in s["mounts"]].count("/dev/shm") == 1
    assert s["mounts"][-1]["destination"] == "/dev/shm"


def test_sizes_and_env_files(tmp_path: Path) -> None:
    assert parse_size("512") == 512
    assert parse_size("64m") == 64 << 20
    assert parse_size("1GiB") == 1 << 30
    assert parse_size("1.5k") == 1536
    with pytest.raises(InvalidArgument):
        parse_size("lots")
    f = tmp_path / "env"
    f.write_text("# comment\nA=1\n\nB=two words\nC\n")
    assert parse_env_file(str(f)) == ["A=1", "B=two words", "C"]
    with pytest.raises(InvalidArgument):
        parse_env_file(str(tmp_path / "nope"))


def test_run_options_round_trip() -> None:
    ro = RunOptions(args=["a"], env=["X=1"], memory=1 << 30, cap_add=["NET_ADMIN"])
    assert RunOptions.from_dict(ro.to_dict()) == ro
    with pytest.raises(InvalidArgument):
        RunOptions.from_dict({"bogus": 1})


# -- the record store -------------------------------------------------------------------------------

def test_container_store_crud_and_filters(tmp_path: Path) -> None:
    db = MetadataDB(tmp_path / "meta.db")
    deleted: list[str] = []
    db.add_mutation_hook(deleted.append)
    store = ContainerStore(db)
    rt = RuntimeInfo("pyctr.runtime.runc")
    a = store.create("ns", Container(id="a", image="img:1", snapshotter="overlayfs", snapshot_key="a",
                                     runtime=rt, spec={"x": 1}, labels={"app": "web"}))
    assert a.created_at > 0 and a.created_at == a.updated_at
    store.create("ns", Container(id="b", image="img:2", runtime=rt))
    store.create("other", Container(id="a", image="img:3", runtime=rt))
    with pytest.raises(AlreadyExists):
        store.create("ns", Container(id="a", runtime=rt))
    with pytest.raises(InvalidArgument):
        store.create("ns", Container(id="bad id", runtime=rt))
    assert store.get("ns", "a").spec == {"x": 1}
    assert [c.id for c in store.list("ns")] == ["a", "b"]
    assert [c.id for c in store.list("ns", ["labels.app==web"])] == ["a"]
    assert [c.id for c in store.list("ns", ["image==img:2", "id==a"])] == ["a", "b"]
    c = store.set_labels("ns", "a", {"app": "", "tier": "1"})
    assert c.labels == {"tier": "1"} and c.updated_at >= a.updated_at
    back = Container.from_dict(store.get("ns", "a").to_dict())
    assert back == store.get("ns", "a")
    store.delete("ns", "a")
    assert deleted == ["delete"]
    with pytest.raises(NotFound):
        store.get("ns", "a")
    with pytest.raises(NotFound):
        store.delete("ns", "a")
    assert store.get("other", "a").image == "img:3"
    db.close()
