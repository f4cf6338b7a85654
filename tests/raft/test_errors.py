"""The exception hierarchy of SPEC §1: one base, storage errors grouped, useful messages."""

from __future__ import annotations

import pytest

from kvraft.raft import errors

STORAGE_ERRORS = [
    (errors.CompactedError, "compacted"),
    (errors.UnavailableError, "unavailable"),
    (errors.LogTemporarilyUnavailableError, "temporarily unavailable"),
    (errors.SnapshotOutOfDateError, "out of date"),
    (errors.SnapshotTemporarilyUnavailableError, "snapshot temporarily unavailable"),
]


@pytest.mark.parametrize(("cls", "fragment"), STORAGE_ERRORS)
def test_storage_errors_are_storage_and_raft_errors(cls, fragment):
    err = cls()
    assert isinstance(err, errors.StorageError) and isinstance(err, errors.RaftError)
    assert fragment in str(err)
    assert str(cls("custom")) == "custom"


@pytest.mark.parametrize("cls", [errors.ConfigInvalid, errors.ProposalDropped,
                                 errors.StepLocalMsg, errors.StepPeerNotFound,
                                 errors.ConfChangeError])
def test_protocol_errors_are_raft_errors_not_storage_errors(cls):
    assert issubclass(cls, errors.RaftError)
    assert not issubclass(cls, errors.StorageError)
    assert issubclass(errors.StorageError, errors.RaftError)


def test_messages_name_the_cause():
    assert str(errors.ProposalDropped()) == "proposal dropped"
    assert str(errors.ProposalDropped("no leader")) == "no leader"
    assert str(errors.StepLocalMsg()) == "cannot step a local message"
    assert str(errors.StepLocalMsg("MsgHup")) == "cannot step a local message: MsgHup"
    assert str(errors.StepPeerNotFound()) == "response from unknown peer"
    assert str(errors.StepPeerNotFound(7)) == "response from unknown peer 7"
    assert str(errors.ConfigInvalid("election tick must be greater than heartbeat tick")) \
        == "election tick must be greater than heartbeat tick"


def test_all_lists_every_error():
    assert sorted(errors.__all__) == sorted(
        name for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, Exception))
