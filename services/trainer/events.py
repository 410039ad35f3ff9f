"""TensorBoard event files for a training job, written without TensorBoard.

Neither ``tensorboard`` nor ``tensorboardX`` is in the environment (``torch.utils.tensorboard``
needs the former), and a job only writes scalars, so this module writes the format itself:
a file named ``events.out.tfevents.<time>.<host>.<pid>`` holding records of

    uint64 length | uint32 masked_crc32c(length) | Event bytes | uint32 masked_crc32c(Event bytes)

(little-endian; TensorFlow's TFRecord framing). Each Event is hand-encoded protobuf wire
format: ``wall_time`` (field 1, double), ``step`` (2, int64), then either ``file_version``
(3, the first record, "brain.Event:2") or ``summary`` (5), a Summary whose ``value`` (1) entries
carry ``tag`` (1) and ``simple_value`` (2, float). TensorBoard reads these files as its own.
``read_scalars`` reads them back (checking every CRC), for the tests and for tools.

A job writes under ``<data_dir>/jobs/<run>/tensorboard/`` (``tensorboard_dir_for``); ``run`` is
``job-<id>`` for a queued job (the API answer's ``tensorboard_dir``) and ``cli-<name>`` for
``hsig train run``. A resumed attempt opens a new file in the same directory.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from services.common.settings import CommonSettings

FILE_VERSION = "brain.Event:2"
_MASK_DELTA = 0xA282EAD8


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli, reflected
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord framing uses; pure Python (records are tiny)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


# --- protobuf wire format (the three fields of three messages this needs) ---------------------


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64: negatives as two's complement, ten bytes
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int, scalars: dict[str, float] | None = None) -> bytes:
    """An Event: the file-version record when ``scalars`` is None, else a Summary of them."""
    event = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3 | 0) + _varint(step)
    if scalars is None:
        return event + _length_delimited(3, FILE_VERSION.encode())
    values = b"".join(
        _length_delimited(
            1, _length_delimited(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value)
        )
        for tag, value in scalars.items()
    )
    return event + _length_delimited(5, values)


def frame(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


class EventWriter:
    """Appends scalar events to one new event file in ``directory``; flushed after each write,
    so TensorBoard (and a crashed job's directory) shows every step written so far."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = directory / name
        self._handle: BinaryIO | None = self.path.open("ab")
        self._write(encode_event(time.time(), 0))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        finite = {tag: float(v) for tag, v in values.items() if v is not None}
        if finite:
            self._write(encode_event(time.time(), step, finite))

    def _write(self, event: bytes) -> None:
        if self._handle is None:
            raise ValueError(f"event file {self.path} is closed")
        self._handle.write(frame(event))
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def tensorboard_dir_for(settings: CommonSettings, run: str) -> Path:
    """Where the job (``job-<id>``) or CLI run (``cli-<name>``) called ``run`` writes its events."""
    return settings.data_dir / "jobs" / run / "tensorboard"


# --- reading back -------------------------------------------------------------------------


def read_records(path: Path) -> Iterator[bytes]:
    """Every record's Event bytes; a bad CRC or a truncated record is a ValueError."""
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
        if offset + 12 > len(data):
            raise ValueError(f"{path}: truncated record header at byte {offset}")
        header = data[offset : offset + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[offset + 8 : offset + 12])
        if header_crc != masked_crc32c(header):
            raise ValueError(f"{path}: bad length CRC at byte {offset}")
        start, end = offset + 12, offset + 12 + length
        if end + 4 > len(data):
            raise ValueError(f"{path}: truncated record at byte {offset}")
        payload = data[start:end]
        (payload_crc,) = struct.unpack("<I", data[end : end + 4])
        if payload_crc != masked_crc32c(payload):
            raise ValueError(f"{path}: bad data CRC at byte {offset}")
        yield payload
        offset = end + 4


def _fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of one message; unknown wire types are a ValueError."""
    offset = 0
    while offset < len(data):
        key, offset = _read_varint(data, offset)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, offset = _read_varint(data, offset)
            yield field, wire, value
        elif wire == 1:
            yield field, wire, data[offset : offset + 8]
            offset += 8
        elif wire == 2:
            length, offset = _read_varint(data, offset)
            yield field, wire, data[offset : offset + length]
            offset += length
        elif wire == 5:
            yield field, wire, data[offset : offset + 4]
            offset += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def _read_varint(data: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, offset


def read_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] over every event file in ``directory``, in file and write order."""
    found: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(directory.glob("events.out.tfevents.*")):
        for record in read_records(path):
            step, summary = 0, b""
            for field, _, value in _fields(record):
                if field == 2:
                    step = int(value)  # type: ignore[arg-type]
                elif field == 5:
                    summary = value  # type: ignore[assignment]
            for field, _, entry in _fields(summary):
                if field != 1:
                    continue
                tag, number = "", None
                for inner, _, value in _fields(entry):  # type: ignore[arg-type]
                    if inner == 1:
                        tag = value.decode()  # type: ignore[union-attr]
                    elif inner == 2:
                        (number,) = struct.unpack("<f", value)  # type: ignore[arg-type]
                if number is not None:
                    found.setdefault(tag, []).append((step, number))
    return found
