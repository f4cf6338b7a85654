"""The pure parts of the etcd services: URLs to addresses, member ids (picked and
parsed), the database size Status reports."""
from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from kvraft.server.config import parse_member_id
from kvraft.server.etcd import errors
from kvraft.server.etcd.cluster import (
    address_of_url,
    member_name,
    new_member_id,
    single_peer_address,
    url_of_address,
)
from kvraft.server.etcd.errors import EtcdError
from kvraft.server.etcd.maintenance import db_size_bytes
from kvraft.storage import MemberRecord
from kvraft.storage.mvcc import CompactedError, FutureRevisionError


@pytest.mark.parametrize(("url", "address"), [
    ("http://127.0.0.1:2380", "127.0.0.1:2380"),
    ("http://127.0.0.1:2380/", "127.0.0.1:2380"),
    ("https://node-1.example:443", "node-1.example:443"),
    ("http://[::1]:2380", "[::1]:2380"),
    (" http://h:1 ", "h:1"),
])
def test_a_peer_url_is_a_host_and_port(url: str, address: str) -> None:
    assert address_of_url(url) == address
    assert address_of_url(url_of_address(address)) == address


@pytest.mark.parametrize("url", [
    "127.0.0.1:2380", "http://127.0.0.1", "ftp://h:1", "http://h:1/path", "http://h:1?x=1",
    "http://u:p@h:1", "http://h:0", "http://h:65536", "http://::1:2380", "", "unix://sock:1",
])
def test_a_url_that_is_not_a_peer_url_is_etcds_bad_urls(url: str) -> None:
    with pytest.raises(EtcdError) as refused:
        address_of_url(url)
    assert (refused.value.code, refused.value.message) == (
        grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: given member URLs are invalid")


def test_a_member_has_exactly_one_peer_url() -> None:
    assert single_peer_address(["http://h:1"]) == "h:1"
    with pytest.raises(EtcdError) as refused:
        single_peer_address([])
    assert refused.value.message == errors.MEMBER_BAD_URLS.message
    with pytest.raises(EtcdError) as refused:
        single_peer_address(["http://h:1", "http://h:2"])
    assert "exactly one peer URL" in refused.value.message


def test_new_member_ids_are_random_nonzero_64_bit_and_unused() -> None:
    taken = {1, 2, 3}
    ids = {new_member_id(taken) for _ in range(200)}
    assert len(ids) == 200 and not ids & taken
    assert all(0 < i < 1 << 64 for i in ids)
    assert any(i >= 1 << 63 for i in ids), "ids use the whole 64 bits, as etcd's"


def test_a_member_has_a_name_once_it_started() -> None:
    assert member_name(None, 7) == ""
    assert member_name(MemberRecord(7, "h:1"), 7) == ""
    assert member_name(MemberRecord(7, "h:1", "h:2"), 7) == "kvraft-7"


@pytest.mark.parametrize(("text", "member_id"), [
    ("12", 12), ("0x8e9e05c52164694d", 0x8E9E05C52164694D), ("0XFF", 255),
    (str((1 << 64) - 1), (1 << 64) - 1), (" 5 ", 5),
])
def test_a_member_id_is_decimal_or_0x_hex(text: str, member_id: int) -> None:
    assert parse_member_id(text) == member_id


@pytest.mark.parametrize("text", ["0", "0x0", "0x", "x1", "-1", "0x1g", str(1 << 64),
                                  "8e9e05c52164694d", "1.5", ""])
def test_a_member_id_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="invalid member id"):
        parse_member_id(text)


def test_mvcc_refusals_keep_etcds_code_and_message() -> None:
    compacted = errors.from_mvcc_error(CompactedError(5))
    assert (compacted.code, compacted.message) == (
        grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
    future = errors.from_mvcc_error(FutureRevisionError())
    assert future.code == grpc.StatusCode.OUT_OF_RANGE


def test_the_database_size_is_the_bytes_of_its_files(tmp_path: Path) -> None:
    assert db_size_bytes(tmp_path / "absent") == 0
    (tmp_path / "000001.ldb").write_bytes(b"x" * 1000)
    (tmp_path / "LOG").write_bytes(b"y" * 24)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "ignored").write_bytes(b"z" * 7)
    assert db_size_bytes(tmp_path) == 1024
