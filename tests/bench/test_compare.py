"""bench-compare's systems without a cluster: how each is started and driven, and the
table of what TLS and auth cost."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from tests.bench import compare
from tests.bench.compare import SYSTEMS, Cell, System
from tests.bench.etcd import BenchAuth, EtcdCluster


def _paths_after_flags(flags: list[str]) -> list[Path]:
    return [Path(v) for f, v in itertools.pairwise(flags) if f.endswith("-file")]


def test_tls_systems_point_both_stores_at_the_files_devcerts_wrote(tmp_path: Path) -> None:
    certs = compare.dev_certs(tmp_path, 3)
    kvraft = compare.kvraft_tls_flags(certs, 2)
    etcd = EtcdCluster(3, tmp_path, certs=certs).tls_flags(2)
    for flags in (kvraft, etcd):
        paths = _paths_after_flags(flags)
        assert len(paths) == 5 and all(p.is_file() for p in paths)
        assert flags[flags.index("--cert-file") + 1].endswith("member-2.crt")
        assert flags[flags.index("--peer-cert-file") + 1].endswith("peer-2.crt")
        assert flags[flags.index("--peer-trusted-ca-file") + 1].endswith("ca.crt")
    assert "--peer-client-cert-auth" in etcd  # etcd's peer TLS is mutual only when asked
    assert compare.kvraft_tls_flags(None, 2) == [] == EtcdCluster(3, tmp_path).tls_flags(2)
    tls = compare.client_tls(certs)
    assert tls is not None and tls.cacert == str(certs / "ca.crt")


def test_each_system_is_driven_as_its_name_says() -> None:
    assert SYSTEMS["kvraft-etcdapi"].driver == SYSTEMS["etcd"].driver == compare.ETCD_DRIVER
    assert SYSTEMS["kvraft-etcdapi"].store == "kvraft"
    assert {n for n, s in SYSTEMS.items() if s.tls} == {"kvraft-tls", "etcd-tls"}
    assert {n for n, s in SYSTEMS.items() if s.auth} == {"kvraft-auth", "etcd-auth"}
    auth = BenchAuth()
    system = System("kvraft-auth", 3, ("127.0.0.1:1",), [], "kvraft", None, auth)
    spec = system.load_spec(clients=4, duration_s=1.0)
    assert spec.driver_options() == {"user": auth.user, "password": auth.password}
    assert spec.clients == 4 and spec.driver == "kvraft"
    # The role's range covers every key the load generator uses, and no other prefix.
    assert auth.key_prefix <= b"bench-00000000" < b"bench-99999999" < auth.range_end()
    assert not auth.key_prefix <= b"benchz" < auth.range_end()


def test_unknown_system_is_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        compare.main(["--systems", "kvraft,kvraft-tsl"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown system kvraft-tsl" in err and "kvraft-tls" in err


def _cell(system: str, ops: list[float], cpu_us: list[float]) -> Cell:
    runs = [{"ops_per_s": o, "ops": int(o), "server_cpu_s": o * c / 1e6}
            for o, c in zip(ops, cpu_us, strict=True)]
    return Cell(system, 3, "put", 100, 64, runs)


def test_cost_table_divides_each_variant_by_its_plain_system() -> None:
    cells = [_cell("kvraft", [1000, 800, 1200], [400, 500, 300]),
             _cell("kvraft-tls", [600, 500, 700], [600, 700, 500]),
             _cell("etcd", [2000, 2000, 2000], [100, 100, 100])]
    rows = [r for r in compare.costs(cells) if r.startswith("| kvraft-tls")]
    assert rows == ["| kvraft-tls ÷ kvraft | 3 | put | 100 | 64 | 0.60 (0.42..0.88) | "
                    "400 → 600 | +200 (+0..+400) |"]
    assert compare.costs([cells[0], cells[2]]) == []  # no variant, no table
    assert compare.etcd_baseline("kvraft-tls") == "etcd-tls"
    assert compare.etcd_baseline("kvraft-etcdapi") == "etcd"
    assert compare.etcd_baseline("etcd-tls") is None


def test_markdown_replaces_only_the_generated_part_and_keeps_the_hand_written_text(
        tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# old table\n\n## Notes by hand\nkeep me\n")
    compare.write_generated(path, "# table 1\n")
    first = path.read_text()
    assert first.startswith(compare.GENERATED_BEGIN + "\n# table 1\n" + compare.GENERATED_END)
    assert first.endswith("## Notes by hand\nkeep me\n")
    path.write_text(first.replace("keep me", "keep me too"))
    compare.write_generated(path, "# table 2\n")
    second = path.read_text()
    assert "# table 1" not in second and "# table 2\n" in second
    assert second.count(compare.GENERATED_BEGIN) == second.count(compare.GENERATED_END) == 1
    assert second.endswith("## Notes by hand\nkeep me too\n")


def test_the_asyncio_variant_turns_uvloop_off_and_is_divided_by_plain_kvraft() -> None:
    assert SYSTEMS["kvraft-asyncio"].event_loop == "asyncio"
    assert SYSTEMS["kvraft"].event_loop == "uvloop"
    assert SYSTEMS["kvraft-asyncio"].baseline == "kvraft"
