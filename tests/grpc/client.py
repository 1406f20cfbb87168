"""A client of qkv's gRPC service written with Python's grpcio, an implementation that shares no code
with tonic: run by tests/grpc.rs as `python3 client.py HOST:PORT CA_FILE STUBS_DIR`. Every check
raises on failure; the last line printed is "all checks passed"."""

import sys
import threading
import time

address, ca_file, stubs = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, stubs)

import grpc  # noqa: E402
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (  # noqa: E402
    ProtoReflectionDescriptorDatabase,
)

import kv_pb2  # noqa: E402
import rpc_status_pb2  # noqa: E402
from qkv.v1 import kv_pb2 as service_pb2, kv_pb2_grpc  # noqa: E402

with open(ca_file, "rb") as f:
    credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
channel = grpc.secure_channel(address, credentials)
kv = kv_pb2_grpc.KvStub(channel)


def check(condition, what):
    if not condition:
        raise AssertionError(what)
    print("ok:", what, flush=True)


def failure(call):
    """The RpcError a call raises, with its qkv status and the frame its details carry."""
    try:
        call()
    except grpc.RpcError as error:
        trailers = dict(error.trailing_metadata() or ())
        # The details (grpc-status-details-bin) are a google.rpc.Status, as the rich error model has
        # them: the call's code and message, and the whole qkv frame as its one detail.
        # (A call the server never reached, such as an unknown method, has none.)
        frame = kv_pb2.CommandResponse()
        details = trailers.get("grpc-status-details-bin")
        if details is not None:
            status = rpc_status_pb2.RpcStatus()
            status.ParseFromString(details)
            check(status.code == error.code().value[0], "the details' code is the call's")
            check(status.message == error.details(), "and so is their message")
            check(len(status.details) == 1 and status.details[0].Unpack(frame), "the one detail is the qkv frame")
        return error, trailers.get("qkv-status"), frame
    raise AssertionError("the call did not fail")


def request(**command):
    return kv_pb2.CommandRequest(**command)


def hset(table, key, value, expected=None):
    pair = kv_pb2.Kvpair(key=key, value=kv_pb2.Value(string=value))
    command = kv_pb2.Hset(table=table, pair=pair)
    if expected is not None:
        command.expected_version = expected
    return kv.Execute(request(hset=command), timeout=10)


written = hset("users", "ada", "Ada Lovelace")
check(written.status == 200 and len(written.versions) == 1, "Execute(Hset) answers 200 with a version")
read = kv.Execute(request(hget=kv_pb2.Hget(table="users", key="ada")), timeout=10)
check(read.values[0].string == "Ada Lovelace", "Execute(Hget) reads what was written")
check(read.versions[0] == written.versions[0], "with the version the write answered")

error, qkv_status, frame = failure(lambda: kv.Execute(request(hget=kv_pb2.Hget(table="users", key="nobody")), timeout=10))
check(error.code() == grpc.StatusCode.NOT_FOUND, "a miss is NOT_FOUND")
check(qkv_status == "404" and frame.status == 404, "with qkv's 404 beside it, and the frame in the details")

error, qkv_status, frame = failure(lambda: hset("users", "ada", "Eve", expected=1))
check(error.code() == grpc.StatusCode.ABORTED, "a conditional write that lost is ABORTED")
check(qkv_status == "409" and frame.values[0].string == "Ada Lovelace", "its frame carries the current value")
check(frame.versions[0] == written.versions[0], "and the current version")

error, _, _ = failure(lambda: kv.Execute(request(hgetall=kv_pb2.Hgetall(table="users")), timeout=10))
check(error.code() == grpc.StatusCode.INVALID_ARGUMENT, "Execute refuses Hgetall: it answers with many frames")

pairs = [kv_pb2.Kvpair(key=f"key-{i:05}", value=kv_pb2.Value(integer=i)) for i in range(3000)]
kv.Execute(request(hmset=kv_pb2.Hmset(table="big", pairs=pairs)), timeout=30)
frames = list(kv.ExecuteStream(request(hgetall=kv_pb2.Hgetall(table="big")), timeout=30))
keys = [pair.key for frame in frames for pair in frame.pairs]
check(len(frames) > 1 and all(f.more for f in frames[:-1]) and not frames[-1].more, "ExecuteStream(Hgetall) streams frames")
check(keys == sorted(p.key for p in pairs), "every key once, in key order")
page = list(kv.ExecuteStream(request(hgetall=kv_pb2.Hgetall(table="big", after="key-00099", limit=5)), timeout=10))
check([p.key for f in page for p in f.pairs] == [f"key-{i:05}" for i in range(100, 105)], "Hgetall pages with after and limit")

# A subscription: its first frame, a message published meanwhile, then the call's deadline ends it.
subscription = kv.ExecuteStream(request(subscribe=kv_pb2.Subscribe(topic="news")), timeout=6)
first = next(subscription)
check(first.more and first.values[0].integer > 0, "ExecuteStream(Subscribe) answers with the subscription's id")
published = kv.Execute(request(publish=kv_pb2.Publish(topic="news", data=[kv_pb2.Value(string="hello")])), timeout=10)
check(published.values[0].integer == 1, "Publish reaches the one subscriber")
message = next(subscription)
check(message.values[0].string == "hello", "the subscriber gets the message")
started = time.monotonic()
try:
    next(subscription)
    raise AssertionError("the subscription outlived its deadline")
except grpc.RpcError as error:
    check(error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline ends the call")
check(time.monotonic() - started < 15, "at the deadline, not long after")

# Pipeline: TCP's byte stream (4-byte big-endian length + message) in the call's messages, split
# anywhere; answers in request order; the call ends once the client half-closes and all is answered.
def framed(command):
    encoded = command.SerializeToString()
    return len(encoded).to_bytes(4, "big") + encoded


commands = [
    request(hset=kv_pb2.Hset(table="piped", pair=kv_pb2.Kvpair(key="k", value=kv_pb2.Value(string="v")))),
    request(hget=kv_pb2.Hget(table="piped", key="k")),
    request(hgetall=kv_pb2.Hgetall(table="big")),
    request(hget=kv_pb2.Hget(table="piped", key="nobody")),
    request(ping=kv_pb2.Ping(payload=b"last")),
]
stream_bytes = b"".join(framed(c) for c in commands)
# The first request a byte at a time, the rest in pieces of 7 bytes: frames cross messages both ways.
first_len = len(framed(commands[0]))
pieces = [stream_bytes[i:i + 1] for i in range(first_len)]
pieces += [stream_bytes[i:i + 7] for i in range(first_len, len(stream_bytes), 7)]
call = kv.Pipeline(iter(service_pb2.Frames(data=p) for p in pieces), timeout=30)
received = b"".join(message.data for message in call)
check(call.code() == grpc.StatusCode.OK, "a Pipeline call ends with OK once its requests are answered")
max_message = int(dict(call.initial_metadata()).get("qkv-max-message", "0"))
check(max_message >= 1024, "and says how large its messages may be (qkv-max-message)")
answers, offset = [], 0
while offset < len(received):
    length = int.from_bytes(received[offset:offset + 4], "big")
    frame = kv_pb2.CommandResponse()
    frame.ParseFromString(received[offset + 4:offset + 4 + length])
    answers.append(frame)
    offset += 4 + length
check(offset == len(received), "the answers are whole frames")
check(answers[0].status == 200 and answers[1].values[0].string == "v", "Pipeline answers in request order")
listing = answers[2:-2]
check(all(f.more for f in listing[:-1]) and not listing[-1].more, "a multi-frame answer ends with more = false")
check(sum(len(f.pairs) for f in listing) == 3000, "with every entry, before the next request's answer")
check(answers[-2].status == 404 and answers[-1].values[0].binary == b"last", "a refusal is a frame; the call goes on")

oversized = kv.Pipeline(iter([service_pb2.Frames(data=bytes(max_message + 1))]), timeout=10)
error, qkv_status, _ = failure(lambda: list(oversized))
check(error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and qkv_status == "413", "a Pipeline message over the limit ends the call with 413")

unknown = channel.unary_unary("/qkv.v1.Kv/Nope", request_serializer=lambda m: m.SerializeToString())
error, _, _ = failure(lambda: unknown(request(ping=kv_pb2.Ping()), timeout=10))
check(error.code() == grpc.StatusCode.UNIMPLEMENTED, "an unknown method is UNIMPLEMENTED")

# Reflection: what grpcurl and Postman use to find the service without the .proto files.
database = ProtoReflectionDescriptorDatabase(channel)
services = database.get_services()
check("qkv.v1.Kv" in services, "reflection lists qkv.v1.Kv")
service = database.FindFileContainingSymbol("qkv.v1.Kv")
check(any(m.name == "ExecuteStream" for s in service.service for m in s.method), "reflection describes its methods")
message = database.FindFileContainingSymbol("abi.CommandRequest")
check(any(m.name == "CommandRequest" for m in message.message_type), "and the protocol's messages")

print("all checks passed", flush=True)
