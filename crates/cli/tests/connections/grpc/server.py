# An http-mode function serving gRPC over h2c on its upstream port, with generic handlers
# and no (de)serializers: messages are bytes, so no protoc is needed.
import os
import time
from concurrent import futures

import grpc


def unary(req, ctx):
    ctx.set_trailing_metadata((("x-trailer", "kept"),))
    return b"echo:" + req


def server_stream(req, ctx):
    for i in range(int(req)):
        yield b"m%d" % i
        time.sleep(0.2)


def client_stream(requests, ctx):
    parts = list(requests)
    return b"%d:" % len(parts) + b"+".join(parts)


def count(requests, ctx):
    sizes = [len(m) for m in requests]
    return b"%d:%d" % (len(sizes), sum(sizes))


def bidi(requests, ctx):
    for m in requests:
        yield m.upper()


def fail(req, ctx):
    ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad input: " + req.decode())


def sleep(req, ctx):
    time.sleep(float(req))
    return b"slept"


def remaining(req, ctx):
    return repr(ctx.time_remaining()).encode()


handler = grpc.method_handlers_generic_handler(
    "virga.test.Echo",
    {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Count": grpc.stream_unary_rpc_method_handler(count),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Remaining": grpc.unary_unary_rpc_method_handler(remaining),
        "Sleep": grpc.unary_unary_rpc_method_handler(sleep),
    },
)
port = int(os.environ["upstream_url"].rsplit(":", 1)[1].split("/")[0])
server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
server.add_generic_rpc_handlers((handler,))
server.add_insecure_port(f"127.0.0.1:{port}")
server.start()
server.wait_for_termination()
