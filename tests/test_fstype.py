"""SQLite refuses network filesystems (issue 5 point 4, reliability test P7)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

import provstore
from provstore import fstype
from provstore.errors import StoreError


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return tmp_path.resolve()


@pytest.fixture
def mounts(base: Path) -> Path:
    """A fake /proc/mounts with network, local and nested mounts under ``base``."""
    (base / "nfs" / "local").mkdir(parents=True)
    (base / "my share").mkdir()
    for name in ("lustre", "scratch", "container", "home4"):
        (base / name).mkdir()
    lines = [
        "/dev/sda1 / ext4 rw,relatime 0 0",
        "proc /proc proc rw,nosuid 0 0",
        f"server:/export {base}/nfs nfs rw,vers=3 0 0",
        f"/dev/sdb1 {base}/nfs/local ext4 rw 0 0",
        f"//win/share {str(base).replace(' ', chr(92) + '040')}/my\\040share cifs rw 0 0",
        f"10.0.0.1@tcp:/fs {base}/lustre lustre rw,flock 0 0",
        f"tmpfs {base}/scratch tmpfs rw 0 0",
        f"overlay {base}/container overlay rw,lowerdir=/a 0 0",
        f"server:/home {base}/home4 nfs4 rw 0 0",
        "malformed line",
    ]
    path = base / "mounts"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("sub", "expected"),
    [
        ("nfs", "nfs"),
        ("nfs/deep/not/yet/created/provstore.db", "nfs"),
        ("nfs/local", "ext4"),  # longest prefix wins
        ("nfs/local/x", "ext4"),
        ("my share", "cifs"),  # \040 unescaped
        ("my share/study", "cifs"),
        ("lustre", "lustre"),
        ("scratch", "tmpfs"),
        ("container/x", "overlay"),
        ("home4", "nfs4"),
        ("nfsx", "ext4"),  # a sibling sharing a prefix string is not inside the mount
        ("", "ext4"),
    ],
)
def test_filesystem_type_from_a_mounts_file(base: Path, mounts: Path, sub: str,
                                            expected: str) -> None:
    assert fstype.filesystem_type(base / sub, mounts) == expected


def test_symlinks_are_resolved(base: Path, mounts: Path) -> None:
    (base / "link").symlink_to(base / "nfs")
    assert fstype.filesystem_type(base / "link" / "study", mounts) == "nfs"


def test_later_mount_on_the_same_point_wins(base: Path) -> None:
    m = base / "mounts"
    m.write_text(f"/dev/sda1 / ext4 rw 0 0\nsrv:/x {base} nfs rw 0 0\ntmpfs {base} tmpfs rw 0 0\n")
    assert fstype.filesystem_type(base, m) == "tmpfs"


def test_unreadable_mounts_is_unknown(base: Path) -> None:
    assert fstype.filesystem_type(base, base / "no-such-file") == "unknown"


def test_unescape() -> None:
    assert fstype._unescape(r"/a\040b\011c\134d") == "/a b\tc\\d"
    assert fstype._unescape(r"/a\04") == r"/a\04"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/mounts is Linux")
def test_real_mounts(tmp_path: Path) -> None:
    assert fstype.filesystem_type(tmp_path) not in ("unknown", *fstype.NETWORK_FILESYSTEMS)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:////data/x/provstore.db", "/data/x"),
        ("sqlite+pysqlite:////data/y.db", "/data"),
        ("sqlite:///file:/data/z.db?mode=rwc&uri=true", "/data"),
        ("sqlite://", None),
        ("sqlite:///:memory:", None),
        ("postgresql+psycopg://lab@dbhost/study", None),
    ],
)
def test_sqlite_directory(url: str, expected: str | None) -> None:
    got = fstype.sqlite_directory(url)
    assert (None if got is None else str(got)) == expected


def test_relative_sqlite_path_is_from_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert fstype.sqlite_directory("sqlite:///sub/p.db") == Path.cwd() / "sub"


@pytest.fixture
def on_nfs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(fstype.ALLOW_ENV, raising=False)
    monkeypatch.setattr(fstype, "_warned", False)
    monkeypatch.setattr(fstype, "filesystem_type", lambda path, mounts=None: "nfs")


@pytest.mark.usefixtures("on_nfs")
def test_open_refuses_sqlite_on_nfs(tmp_path: Path) -> None:
    loc = tmp_path / "study"
    with pytest.raises(StoreError, match="PostgreSQL") as err:
        provstore.open(loc)
    msg = str(err.value)
    assert str(loc) in msg
    assert "nfs filesystem" in msg
    assert "db='sqlite:////local/path/provstore.db'" in msg
    assert "postgresql+psycopg://" in msg
    assert fstype.ALLOW_ENV in msg
    assert isinstance(err.value, OSError)
    assert not loc.exists()  # neither the directory nor the database was created
    assert not list(tmp_path.rglob("*.db*"))


@pytest.mark.usefixtures("on_nfs")
def test_open_refuses_a_sqlite_url_on_nfs(tmp_path: Path) -> None:
    db = tmp_path / "dbdir" / "provstore.db"
    with pytest.raises(StoreError, match="PostgreSQL"):
        provstore.open(tmp_path / "objects", db=f"sqlite:///{db}")
    assert not db.exists()


@pytest.mark.parametrize("fs", ["nfs", "nfs4", "cifs", "lustre"])
def test_p7_each_network_type_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         fs: str) -> None:
    """Reliability P7: mounts-table detection of 4 filesystem types, end to end."""
    if not sys.platform.startswith("linux"):
        pytest.skip("/proc/mounts is Linux")
    base = tmp_path.resolve()
    (base / "shared").mkdir()  # the mount point
    m = base / "mounts"
    m.write_text(f"/dev/sda1 / ext4 rw 0 0\nsrv:/x {base}/shared {fs} rw 0 0\n")
    monkeypatch.setattr(fstype, "_MOUNTS_FILES", (str(m),))
    monkeypatch.delenv(fstype.ALLOW_ENV, raising=False)
    with pytest.raises(StoreError, match=f"on a {fs} filesystem.*PostgreSQL"):
        provstore.open(base / "shared" / "study")
    assert not (base / "shared" / "study").exists()
    # The recommended layout works: database on a local disk, objects on the share.
    (base / "local").mkdir()
    ctx = provstore.open(base / "shared" / "objects", db=f"sqlite:///{base}/local/provstore.db")
    ctx.x = 1
    assert ctx.x == 1


@pytest.mark.usefixtures("on_nfs")
def test_non_sqlite_urls_are_not_checked(tmp_path: Path) -> None:
    fstype.check_sqlite_url("postgresql+psycopg://lab@dbhost/study")  # no raise
    fstype.check_sqlite_url("sqlite://")


@pytest.mark.usefixtures("on_nfs")
def test_escape_hatch_warns_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fstype.ALLOW_ENV, "1")
    with pytest.warns(UserWarning, match=f"nfs filesystem.*{fstype.ALLOW_ENV}=1"):
        ctx = provstore.open(tmp_path / "a")
    ctx.x = 41
    assert ctx.x == 41
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        provstore.open(tmp_path / "b")


@pytest.mark.usefixtures("on_nfs")
def test_escape_hatch_needs_exactly_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fstype.ALLOW_ENV, "yes")
    with pytest.raises(StoreError):
        provstore.open(tmp_path / "a")


def test_local_path_opens_normally(tmp_path: Path) -> None:
    assert fstype.filesystem_type(tmp_path) not in fstype.NETWORK_FILESYSTEMS
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        ctx = provstore.open(tmp_path / "study")
    ctx.y = [1, 2]
    assert ctx.y == [1, 2]
    assert (tmp_path / "study" / "provstore.db").exists()
