"""MLLP framing: <VT> message <FS><CR> (0x0B ... 0x1C 0x0D).

`FrameDecoder` is fed whatever TCP delivers: a frame split over many reads, many frames
in one read. Bytes outside a frame (line noise, a message sent without its start block)
are set aside as *discarded* rather than guessed at: without the start block nobody can
tell where such a message began. A start block inside an unfinished frame means the
sender gave up on that frame and started over, so the partial frame is discarded too.
A frame ends at the end block; the CR after it is consumed when present (some senders
leave it out, and 0x1C never occurs inside an HL7 message).
"""

from __future__ import annotations

from hl7_ingest.exceptions import Hl7Error

__all__ = ["CR", "EB", "SB", "FrameDecoder", "FrameTooLarge", "wrap"]

SB = b"\x0b"
EB = b"\x1c"
CR = b"\r"


class FrameTooLarge(Hl7Error):
    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit} bytes without an MLLP end block")
        self.limit = limit


def wrap(message: bytes | str) -> bytes:
    data = message.encode() if isinstance(message, str) else message
    return SB + data + EB + CR


class FrameDecoder:
    def __init__(self, max_frame: int = 1 << 20) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._in_frame = False
        self._garbage = bytearray()
        # Chunks that were not inside a complete frame, collected for the caller.
        self.discarded: list[bytes] = []

    @property
    def in_frame(self) -> bool:
        """A start block was seen and its end block not yet."""
        return self._in_frame

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame (the sender is mid-message)."""
        return len(self._buf) if self._in_frame else 0

    def feed(self, data: bytes) -> list[bytes]:
        """Every frame completed by `data`, in order (without the framing bytes)."""
        self._buf += data
        frames: list[bytes] = []
        while self._buf:
            if not self._in_frame:
                start = self._buf.find(SB)
                if start < 0:
                    self._keep_garbage(self._buf)
                    self._buf.clear()
                    break
                self._keep_garbage(self._buf[:start])
                self._flush_garbage()
                del self._buf[: start + 1]
                self._in_frame = True
                continue
            end = self._buf.find(EB)
            restart = self._buf.find(SB)
            if restart >= 0 and (end < 0 or restart < end):
                self.discarded.append(bytes(SB + self._buf[:restart]))
                del self._buf[: restart + 1]
                continue
            if end < 0:
                if len(self._buf) > self.max_frame:
                    raise FrameTooLarge(self.max_frame)
                break
            frames.append(bytes(self._buf[:end]))
            del self._buf[: end + 1]
            if self._buf[:1] == CR:
                del self._buf[:1]
            self._in_frame = False
        return frames

    def _keep_garbage(self, chunk: bytes | bytearray) -> None:
        self._garbage += chunk
        if len(self._garbage) > self.max_frame:
            raise FrameTooLarge(self.max_frame)

    def _flush_garbage(self) -> None:
        # A lone CR or LF between frames is the usual slack of senders, not noise.
        if self._garbage.strip(b"\r\n"):
            self.discarded.append(bytes(self._garbage))
        self._garbage.clear()

    def close(self) -> None:
        """The connection ended: what lies outside a frame is discarded."""
        self._flush_garbage()

    def take_discarded(self) -> list[bytes]:
        out, self.discarded = self.discarded, []
        return out
