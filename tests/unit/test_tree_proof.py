"""workers/tree_proof.FdHints: which descriptor numbers a hinted read tries (no processes)."""

from workers.tree_proof import HINTS_PER_PID, FdHints


def test_a_freed_number_is_a_hint_until_a_connection_is_found_under_it():
    hints = FdHints()
    hints.freed(10, "7", 1001)
    hints.freed(10, "8", 1002)
    assert 10 in hints and hints.get(10) == ["7", "8"]
    hints.taken(10, "7")
    assert hints.get(10) == ["8"]
    assert hints.take_all(10) == {"8": 1002} and 10 not in hints


def test_numbers_a_read_found_free_or_still_holding_the_closed_socket_stay_hints():
    # The client has not seen the server's close on "7" yet (its old socket 1001 is still there) and has not
    # reused "9" at all; "8" holds a new socket. The next socket the client opens gets "7" or "9": before,
    # the read dropped them, and every later hinted read missed that socket and read every descriptor.
    hints = FdHints()
    for fd, inode in (("7", 1001), ("8", 1002), ("9", 1003)):
        hints.freed(10, fd, inode)
    taken = hints.take_all(10)
    assert hints.not_reused(10, taken, seen={1001: "7", 5555: "8"}, free=["9"]) == [1001]
    assert sorted(hints.get(10)) == ["7", "9"]
    assert hints.take_all(10) == {"9": 1003, "7": 1001}


def test_a_number_freed_without_its_socket_is_kept_only_while_free():
    hints = FdHints()
    hints.freed(10, "7")  # inode unknown (0): no socket under it is taken for the closed one
    taken = hints.take_all(10)
    assert hints.not_reused(10, taken, seen={1234: "7"}, free=[]) == []
    assert 10 not in hints


def test_hints_stay_bounded_per_process_dropping_the_oldest():
    hints = FdHints()
    for fd in range(HINTS_PER_PID + 5):
        hints.freed(10, str(fd), fd + 1)
    got = hints.get(10)
    assert len(got) == HINTS_PER_PID and got[0] == "5" and got[-1] == str(HINTS_PER_PID + 4)
    hints.freed(10, "5", 6)  # freed again: now the most recent
    assert hints.get(10)[-1] == "5"
