"""The TensorBoard event files the trainer writes without TensorBoard (services/trainer/events.py):
the framing's CRC is CRC-32C, the records decode with protobuf's own parser (an Event message
class built here from TensorBoard's field numbers, independent of the module's hand-written
encoder), and a damaged record is refused by the reader."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.trainer.events import (
    FILE_VERSION,
    EventWriter,
    crc32c,
    masked_crc32c,
    read_records,
    read_scalars,
)


def _event_class() -> type:
    """tensorflow/core/util/event.proto and summary.proto, the fields the trainer writes."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="hsig_test_event.proto", package="tensorboard")
    summary = proto.message_type.add(name="Summary")
    value = summary.nested_type.add(name="Value")
    value.field.add(name="tag", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    value.field.add(name="simple_value", number=2, type=field.TYPE_FLOAT, label=field.LABEL_OPTIONAL)
    summary.field.add(
        name="value",
        number=1,
        type=field.TYPE_MESSAGE,
        label=field.LABEL_REPEATED,
        type_name=".tensorboard.Summary.Value",
    )
    event = proto.message_type.add(name="Event")
    event.field.add(name="wall_time", number=1, type=field.TYPE_DOUBLE, label=field.LABEL_OPTIONAL)
    event.field.add(name="step", number=2, type=field.TYPE_INT64, label=field.LABEL_OPTIONAL)
    event.field.add(name="file_version", number=3, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    event.field.add(
        name="summary",
        number=5,
        type=field.TYPE_MESSAGE,
        label=field.LABEL_OPTIONAL,
        type_name=".tensorboard.Summary",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorboard.Event"))


def test_the_crc_is_crc32c() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value of CRC-32C
    assert crc32c(b"") == 0
    assert masked_crc32c(b"123456789") != crc32c(b"123456789")


def test_events_decode_with_protobuf_and_read_back(tmp_path: Path) -> None:
    with EventWriter(tmp_path) as writer:
        writer.scalars(1, {"train/loss": 2.5, "train/learning_rate": 1e-3})
        writer.scalars(2, {"train/loss": 2.25, "validation/loss": None})  # None is left out
        writer.scalars(3, {"validation/loss": 2.0})
    assert writer.path.name.startswith("events.out.tfevents.")

    Event = _event_class()
    events = [Event.FromString(record) for record in read_records(writer.path)]
    assert events[0].file_version == FILE_VERSION
    assert [e.step for e in events[1:]] == [1, 2, 3]
    assert {v.tag: v.simple_value for v in events[1].summary.value} == pytest.approx(
        {"train/loss": 2.5, "train/learning_rate": 1e-3}
    )
    assert [v.tag for v in events[2].summary.value] == ["train/loss"]
    assert all(e.wall_time > 1.7e9 for e in events)

    scalars = read_scalars(tmp_path)
    assert scalars["train/loss"] == [(1, 2.5), (2, 2.25)]
    assert scalars["validation/loss"] == [(3, 2.0)]
    assert scalars["train/learning_rate"][0][1] == pytest.approx(1e-3)


def test_a_damaged_record_is_refused(tmp_path: Path) -> None:
    with EventWriter(tmp_path) as writer:
        writer.scalars(1, {"train/loss": 1.0})
    data = bytearray(writer.path.read_bytes())
    data[-6] ^= 0xFF  # inside the last record's payload
    writer.path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="bad data CRC"):
        list(read_records(writer.path))
    writer.path.write_bytes(bytes(data[:-3]))
    with pytest.raises(ValueError, match="truncated"):
        list(read_records(writer.path))
