"""The device stream through a real controller: who may connect, what gets stored, bad input."""

from __future__ import annotations

import math
import time

import grpc
import pytest
from inproc import DeviceStream, RunningController, sample

from controller.pki import CertificateAuthority
from protos import admin_pb2, admin_pb2_grpc, common_pb2, fleet_pb2


def _batch(batch_id: int, *samples: common_pb2.Sample) -> fleet_pb2.ConnectRequest:
    return fleet_pb2.ConnectRequest(telemetry=fleet_pb2.TelemetryBatch(
        batch_id=batch_id, samples=list(samples)))


def _stored_seqs(ctl: RunningController, device_id: str) -> list[int]:
    now = int(time.time() * 1000)
    points = ctl.store.query_points([device_id], "cpu_percent", now - 3600_000, now + 60_000)
    return sorted(p.timestamp_ms for p in points)


def test_duplicate_batch_is_stored_once(ctl: RunningController) -> None:
    identity = ctl.enroll("edge-1")
    stream = ctl.stream(identity)
    stream.hello()
    now = int(time.time() * 1000)
    samples = [sample(i, now - 1000 + i, cpu_percent=float(i)) for i in range(1, 6)]
    stream.send(_batch(1, *samples))
    first = stream.recv_kind("telemetry_ack")
    stream.send(_batch(2, *samples))
    second = stream.recv_kind("telemetry_ack")
    assert (first.stored, first.duplicates, first.acked_through_seq) == (5, 0, 5)
    assert (second.stored, second.duplicates, second.acked_through_seq) == (0, 5, 5)
    assert len(_stored_seqs(ctl, identity.device_id)) == 5


def test_reconnecting_device_learns_what_the_controller_holds(ctl: RunningController) -> None:
    identity = ctl.enroll("edge-1")
    stream = ctl.stream(identity)
    stream.hello()
    stream.send(_batch(1, sample(1, int(time.time() * 1000), cpu_percent=1.0),
                       sample(2, int(time.time() * 1000) + 1, cpu_percent=2.0)))
    stream.recv_kind("telemetry_ack")
    stream.close()
    assert ctl.stream(identity).hello().acked_through_seq == 2


def test_telemetry_is_stored_under_the_device_of_the_certificate(ctl: RunningController) -> None:
    a, b = ctl.enroll("edge-a"), ctl.enroll("edge-b")
    stream = ctl.stream(a)
    stream.hello()
    stream.send(_batch(1, sample(1, int(time.time() * 1000), cpu_percent=42.0)))
    stream.recv_kind("telemetry_ack")
    assert len(_stored_seqs(ctl, a.device_id)) == 1
    assert _stored_seqs(ctl, b.device_id) == []


def test_client_without_a_certificate_from_our_ca_gets_nowhere(ctl, tmp_path) -> None:
    other_ca = CertificateAuthority.load_or_create(tmp_path / "other-ca")
    forged = other_ca.issue("admin", "admin")
    for channel in (ctl.channel(forged.cert_pem, forged.key_pem), ctl.channel()):
        with pytest.raises(grpc.RpcError) as info:
            admin_pb2_grpc.AdminServiceStub(channel).ListDevices(
                admin_pb2.ListDevicesRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails
    assert ctl.admin.ListDevices(admin_pb2.ListDevicesRequest(), timeout=5) is not None


def test_removed_device_is_cut_off_and_its_certificate_refused(ctl: RunningController) -> None:
    identity = ctl.enroll("edge-1")
    stream = ctl.stream(identity)
    stream.hello()
    ctl.admin.RemoveDevice(admin_pb2.RemoveDeviceRequest(id=identity.device_id), timeout=5)
    with pytest.raises(grpc.RpcError) as info:
        stream.recv_kind("never")
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "removed" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        ctl.stream(identity).hello()
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_roles_do_not_cross(ctl: RunningController) -> None:
    identity = ctl.enroll("edge-1")
    device_as_admin = admin_pb2_grpc.AdminServiceStub(ctl.device_channel(identity))
    with pytest.raises(grpc.RpcError) as info:
        device_as_admin.ListDevices(admin_pb2.ListDevicesRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    admin_as_device = ctl.channel(ctl.config.admin_cert_pem, ctl.config.admin_key_pem)
    with pytest.raises(grpc.RpcError) as info:
        DeviceStream(admin_as_device).hello()
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def _nan(now: int) -> fleet_pb2.ConnectRequest:
    return _batch(1, sample(1, now, cpu_percent=math.nan))


def _out_of_order(now: int) -> fleet_pb2.ConnectRequest:
    return _batch(1, sample(5, now, cpu_percent=1.0), sample(4, now, cpu_percent=1.0))


def _too_many(now: int) -> fleet_pb2.ConnectRequest:
    return _batch(1, *(sample(i, now, cpu_percent=1.0) for i in range(1, 1102)))


def _long_metric(now: int) -> fleet_pb2.ConnectRequest:
    return _batch(1, common_pb2.Sample(seq=1, timestamp_ms=now, values=[
        common_pb2.MetricValue(metric="m" * 1000, value=1.0)]))


@pytest.mark.parametrize(("make", "field"), [
    (_nan, "telemetry.samples[0].values[0].value"),
    (_out_of_order, "telemetry.samples[1].seq"),
    (_too_many, "telemetry.samples"),
    (_long_metric, "telemetry.samples[0].values[0].metric"),
    (lambda now: fleet_pb2.ConnectRequest(hello=fleet_pb2.Hello()), "after hello"),
], ids=["nan", "seq-order", "too-many", "long-metric", "second-hello"])
def test_malformed_telemetry_is_invalid_argument_and_others_keep_being_served(
    ctl: RunningController, make, field: str
) -> None:
    bad, good = ctl.enroll("edge-bad"), ctl.enroll("edge-good")
    good_stream = ctl.stream(good)
    good_stream.hello()
    stream = ctl.stream(bad)
    stream.hello()
    stream.send(make(int(time.time() * 1000)))
    with pytest.raises(grpc.RpcError) as info:
        stream.recv_kind("never")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in info.value.details()
    assert _stored_seqs(ctl, bad.device_id) == []
    good_stream.send(_batch(1, sample(1, int(time.time() * 1000), cpu_percent=3.0)))
    assert good_stream.recv_kind("telemetry_ack").stored == 1


def test_first_message_must_be_hello(ctl: RunningController) -> None:
    stream = ctl.stream(ctl.enroll("edge-1"))
    stream.send(_batch(1, sample(1, int(time.time() * 1000), cpu_percent=1.0)))
    with pytest.raises(grpc.RpcError) as info:
        stream.recv()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "hello" in info.value.details()


def test_label_change_reaches_the_connected_device_as_desired_state(ctl) -> None:
    identity = ctl.enroll("edge-1", room="a")
    stream = ctl.stream(identity)
    stream.hello()
    first = stream.recv_kind("desired_state")
    ctl.admin.UpdateDeviceLabels(admin_pb2.UpdateDeviceLabelsRequest(
        id="edge-1", set={"room": "b"}), timeout=5)
    second = stream.recv_kind("desired_state")
    assert dict(second.labels) == {"room": "b"}
    assert second.generation > first.generation


def test_graceful_stop_keeps_everything_acknowledged(tmp_path) -> None:
    ctl = RunningController(tmp_path / "ctl")
    identity = ctl.enroll("edge-1")
    stream = ctl.stream(identity)
    stream.hello()
    now = int(time.time() * 1000)
    stream.send(_batch(1, *(sample(i, now + i, cpu_percent=1.0) for i in range(1, 51))))
    assert stream.recv_kind("telemetry_ack").acked_through_seq == 50
    ctl.stop()
    again = RunningController(tmp_path / "ctl")
    try:
        assert len(_stored_seqs(again, identity.device_id)) == 50
        assert again.stream(identity).hello().acked_through_seq == 50
    finally:
        again.stop()
