# A real gRPC client (grpcio) through the gateway: all four call kinds, a server error, the
# deadline, and a call for a function that is not deployed. Prints what it saw as JSON.
#   TARGET host:port, CA (a CA file: TLS), PREFIX (/function/NAME, or "" with METADATA
#   naming the function), CHECKS (comma-separated; all by default).
import json
import os
import queue
import threading
import time

import grpc

target = os.environ["TARGET"]
prefix = os.environ.get("PREFIX", "")
md = tuple(tuple(x) for x in json.loads(os.environ.get("METADATA", "[]")))
checks = os.environ.get("CHECKS", "unary,server,client,bidi,fail,deadline,missing").split(",")
if os.environ.get("CA"):
    with open(os.environ["CA"], "rb") as f:
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(f.read()))
else:
    channel = grpc.insecure_channel(target)


def method(name, base=None):
    return (prefix if base is None else base) + "/virga.test.Echo/" + name


def status(f):
    try:
        f()
    except grpc.RpcError as e:
        return [e.code().name, e.details()]
    return None


out = {}
if "unary" in checks:
    resp, call = channel.unary_unary(method("Unary")).with_call(b"hi", metadata=md, timeout=30)
    out["unary"] = resp.decode()
    out["trailer"] = dict(call.trailing_metadata()).get("x-trailer")

if "server" in checks:
    t0 = time.monotonic()
    got, at = [], []
    n = os.environ.get("STREAM_LEN", "5").encode()
    stream = channel.unary_stream(method("ServerStream"))(n, metadata=md, timeout=60)
    if "during" in checks:
        # Other calls come and go on the same connection while the stream runs.
        def others():
            for _ in range(3):
                time.sleep(0.3)
                channel.unary_unary(method("Unary"))(b"x", metadata=md, timeout=30)
        threading.Thread(target=others, daemon=True).start()
    for m in stream:
        got.append(m.decode())
        at.append(time.monotonic() - t0)
    out["server_stream"] = got
    out["arrivals"] = at

if "drained" in checks:
    # A long server stream whose instance is drained meanwhile: what came, then the status.
    got = []
    try:
        for m in channel.unary_stream(method("ServerStream"))(b"500", metadata=md, timeout=60):
            got.append(m.decode())
        out["drained"] = [len(got), "OK", ""]
    except grpc.RpcError as e:
        out["drained"] = [len(got), e.code().name, e.details()]

if "client" in checks:
    def chunks():
        for i in range(4):
            yield b"c%d" % i
            time.sleep(0.05)
    out["client_stream"] = channel.stream_unary(method("ClientStream"))(
        chunks(), metadata=md, timeout=30).decode()

if "bidi" in checks:
    # Lock-step: each message is sent only once the answer to the one before arrived, so a
    # hop that buffered either direction would stall here.
    q = queue.Queue()

    def requests():
        while (m := q.get()) is not None:
            yield m

    q.put(b"ping0")
    replies = []
    for i, r in enumerate(channel.stream_stream(method("Bidi"))(requests(), metadata=md, timeout=30)):
        replies.append(r.decode())
        q.put(b"ping%d" % (i + 1) if i < 4 else None)
    out["bidi"] = replies

if "fail" in checks:
    out["fail"] = status(lambda: channel.unary_unary(method("Fail"))(
        "ünïcode 100%".encode(), metadata=md, timeout=30))

if "deadline" in checks:
    out["remaining"] = float(channel.unary_unary(method("Remaining"))(b"", metadata=md, timeout=5))

if "limits" in checks:
    # 30 messages of 10 kB: 300 kB in all, each one under a 100 kB --max-body-bytes.
    out["many_small"] = channel.stream_unary(method("Count"))(
        iter([b"x" * 10000] * 30), metadata=md, timeout=30).decode()
    out["one_big"] = status(lambda: channel.unary_unary(method("Unary"))(
        b"x" * 200000, metadata=md, timeout=30))

if "pause" in checks:
    # The client stream is quiet for 2.5 s between its two messages.
    q = queue.Queue()

    def quiet():
        while (m := q.get()) is not None:
            yield m

    q.put(b"a")
    paused = []
    for r in channel.stream_stream(method("Bidi"))(quiet(), metadata=md, timeout=30):
        paused.append(r.decode())
        if len(paused) == 1:
            time.sleep(2.5)
        q.put(b"b" if len(paused) == 1 else None)
    out["paused"] = paused

if "slow" in checks:
    out["slow"] = status(lambda: channel.unary_unary(method("Sleep"))(b"3", metadata=md, timeout=30))

if "missing" in checks:
    out["missing"] = status(lambda: channel.unary_unary(method("Unary", "/function/no-such-fn"))(
        b"x", timeout=30))
    out["unnamed"] = status(lambda: channel.unary_unary(method("Unary", ""))(b"x", timeout=30))

print(json.dumps(out))
