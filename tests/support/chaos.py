"""What the chaos, crash and durability harnesses (tests/mp) share: the failure
marker a worker leaves before it exits, the workers' binary logs (fixed-size records
appended with one write(2) each, so a kill never tears one in the middle of the file),
and the serializer that checks a message while it is still claimed."""
import os
import struct
import time

#: a worker's log record: kind, flag, pad, sender, seq, t (monotonic), arg (32 bytes)
REC = struct.Struct("<BBHIQdQ")
assert REC.size == 32
#: record kinds of a consumer's loads(): it began copying a message, it checked it
K_BEGIN, K_LOADED = b"BL"


def fail(fail_path, text):
    """append text to the failure marker the supervisor reads, and exit (code 3)"""
    with open(fail_path, "a") as f:
        f.write(text + "\n")
    os._exit(3)


def rec(fd, kind, flag=0, who=0, seq=0, arg=0):
    """append one REC, stamped now"""
    os.write(fd, REC.pack(kind, flag, 0, who, seq, time.monotonic(), arg))


def read_recs(path, st=REC):
    """the records of st in a log; a record cut short by a kill is dropped"""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    n = len(data) // st.size * st.size
    return list(st.iter_unpack(memoryview(data)[:n]))


class CheckingSerializer:
    """loads() runs inside the call, the message claimed: log "B", copy the message out
    of the ring and check it (a few ms for MiBs), log "L"; a damaged message writes
    the failure marker and exits.  ``log(kind, who, seq, nbytes)`` writes the log;
    the default appends a REC to fd."""

    def __init__(self, fd, fail_path, messages, log=None):
        self.fd, self.fail_path, self.messages = fd, fail_path, messages
        self.log = log or self._rec

    def _rec(self, kind, who, seq, nbytes):
        rec(self.fd, kind, who=who & 0xFFFFFFFF, seq=seq, arg=nbytes if kind == K_BEGIN else 0)

    def dumps(self, obj):
        return obj

    def loads(self, data):
        who, seq = self.messages.header(data)
        self.log(K_BEGIN, who, seq, len(data))
        buf = bytes(data)  # the copy out of the ring
        if self.messages.check(buf) is None:
            hdr = self.messages.HDR
            head = hdr.unpack_from(buf) if len(buf) >= hdr.size else buf
            fail(self.fail_path, f"consumer pid {os.getpid()}: corrupt message: len={len(buf)} "
                                 f"header={head!r}")
        self.log(K_LOADED, who, seq, len(data))
        return who, seq
