#!/usr/bin/env python3
"""A delaying HTTP/1.1 proxy for cmd/bench.sh's `wan` scenario: a distant registry.

    delay_proxy.py LISTEN_PORT UPSTREAM_HOST:PORT DELAY_MS [REQUEST_LOG]

Listens on 127.0.0.1:LISTEN_PORT and relays every connection to UPSTREAM. Each request
is held DELAY_MS milliseconds, from the moment its head has arrived to the moment it is
passed on; its body and the answers then pass through as fast as the kernel moves them.
One held request per request is one round trip of a distant registry (the request's way
there and the answer's way back, folded into one wait); doc/perf.md says what that
leaves out (TCP and TLS handshakes, bandwidth, the delay of each later packet).

It models latency, not bandwidth, so it must not become the bottleneck itself: bodies
and answers are moved with splice(2) through a pipe, socket to socket inside the kernel,
never copied into Python (an earlier asyncio version copying 64 KiB at a time capped a
blob at ~100-250 MB/s on this 2-CPU machine and spent more CPU than the tool measured).
One thread per direction of a connection, blocking calls; splice releases the GIL.

Why a script of the standard library rather than the test rig's hyper proxy: the bench
needs no build step for it. It parses only what it must to find where a request ends on
a kept-alive connection (the head, then a Content-Length or chunked body), and never
parses the answers: clients here do not pipeline, so the upstream's bytes are passed to
the client as they come. A connection that does not start with an HTTP method (skopeo
first tries TLS on a registry it is told not to verify) is held once and then relayed raw,
so the upstream answers it as it would without the proxy.

DELAY_PROXY_KIB_PER_S, when set in the environment, also caps how fast the answers of
each connection flow (a slow link): cmd/demo-cluster.sh uses it to keep a copy in flight
long enough to kill its replica half-way. The bench never sets it.

REQUEST_LOG, when given, gets one line per request: the time it arrived and the time it
was passed on (Unix time, so the logs of two proxies line up), the connection number and the request
line; for finding which requests of a tool wait on each other.
"""
import fcntl
import os
import socket
import sys
import threading
import time

HEAD_MAX = 1 << 16
PIPE_SIZE = 1 << 20
METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"PATCH ", b"DELETE ", b"OPTIONS ")
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class Conn:
    """The client side of one connection: a socket and the bytes read but not yet used."""

    def __init__(self, sock):
        self.sock, self.buf = sock, b""

    def fill(self):
        more = self.sock.recv(HEAD_MAX)
        if not more:
            raise EOFError
        self.buf += more

    def take(self, n):
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def line(self):
        while b"\r\n" not in self.buf:
            self.fill()
        return self.take(self.buf.index(b"\r\n") + 2)


def new_pipe():
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # the default 64 KiB still works, with more calls
    return r, w


def splice(src, dst, pipe, n=None):
    """Moves n bytes (None: until EOF) from socket src to socket dst through pipe."""
    r, w = pipe
    while n is None or n > 0:
        want = PIPE_SIZE if n is None else min(n, PIPE_SIZE)
        got = os.splice(src.fileno(), w, want, flags=os.SPLICE_F_MOVE)
        if got == 0:
            if n is None:
                return
            raise EOFError("client closed inside a request body")
        left = got
        while left:
            left -= os.splice(r, dst.fileno(), left, flags=os.SPLICE_F_MOVE)
        if n is not None:
            n -= got


def throttled(src, dst, pipe, rate):
    """Moves bytes from socket src to socket dst until EOF, at most `rate` bytes a second
    (in pieces of a tenth of it)."""
    r, w = pipe
    piece = max(1024, min(PIPE_SIZE, int(rate / 10)))
    while True:
        got = os.splice(src.fileno(), w, piece, flags=os.SPLICE_F_MOVE)
        if got == 0:
            return
        left = got
        while left:
            left -= os.splice(r, dst.fileno(), left, flags=os.SPLICE_F_MOVE)
        time.sleep(got / rate)


def body_length(head):
    """(Content-Length, chunked) of a request head."""
    length, chunked = 0, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    return length, chunked


def pass_chunked(client, upstream, pipe):
    """Passes a chunked body on: sizes and trailers parsed, chunk data spliced."""
    while True:
        line = client.line()
        upstream.sendall(line)
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while True:  # trailers, then the empty line that ends the body
                line = client.line()
                upstream.sendall(line)
                if line == b"\r\n":
                    return
        pass_exactly(client, upstream, pipe, size + 2)


def pass_exactly(client, upstream, pipe, n):
    """Passes n body bytes on: first those already read, then the rest spliced."""
    if client.buf:
        data = client.take(n)
        upstream.sendall(data)
        n -= len(data)
    if n:
        splice(client.sock, upstream, pipe, n)


def requests(client, upstream, delay, log, conn_no):
    """Relays the client's requests one by one, each held `delay` seconds."""
    pipe = new_pipe()
    try:
        client.fill()
        arrived = time.time()
        if not client.buf.startswith(METHODS):
            time.sleep(delay)
            upstream.sendall(client.take(len(client.buf)))
            splice(client.sock, upstream, pipe)
            return
        while True:
            while b"\r\n\r\n" not in client.buf:
                client.fill()
            head = client.take(client.buf.index(b"\r\n\r\n") + 4)
            time.sleep(max(0.0, arrived + delay - time.time()))
            if log:
                log(arrived, conn_no, head)
            upstream.sendall(head)
            length, chunked = body_length(head)
            if chunked:
                pass_chunked(client, upstream, pipe)
            else:
                pass_exactly(client, upstream, pipe, length)
            if not client.buf:
                client.fill()
            arrived = time.time()
    except (OSError, EOFError, ValueError):
        pass
    finally:
        for fd in pipe:
            os.close(fd)
        shut(upstream, socket.SHUT_WR)


def answers(upstream, client, rate):
    """Passes the upstream's bytes to the client until either side closes; at most `rate`
    bytes a second when given."""
    pipe = new_pipe()
    try:
        if rate:
            throttled(upstream, client, pipe, rate)
        else:
            splice(upstream, client, pipe)
    except (OSError, EOFError):
        pass
    finally:
        for fd in pipe:
            os.close(fd)
        # The upstream closed (or broke): so does the client's connection, as it would
        # without the proxy; the request side then ends on its own.
        shut(client, socket.SHUT_RDWR)


def shut(sock, how):
    try:
        sock.shutdown(how)
    except OSError:
        pass


def handle(sock, upstream_addr, delay, log, conn_no, rate):
    try:
        upstream = socket.create_connection(upstream_addr)
    except OSError:
        sock.close()
        return
    for s in (sock, upstream):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    back = threading.Thread(target=answers, args=(upstream, sock, rate), daemon=True)
    back.start()
    requests(Conn(sock), upstream, delay, log, conn_no)
    back.join()
    sock.close()
    upstream.close()


def request_logger(path):
    if not path:
        return None
    out = open(path, "a", buffering=1)
    lock = threading.Lock()

    def log(arrived, conn_no, head):
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        with lock:
            out.write(f"{arrived:.4f} {time.time():.4f} {conn_no} {line}\n")

    return log


def main():
    port, upstream, delay_ms = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    log = request_logger(sys.argv[4] if len(sys.argv) > 4 else None)
    rate = float(os.environ.get("DELAY_PROXY_KIB_PER_S") or 0) * 1024
    host, _, uport = upstream.rpartition(":")
    server = socket.create_server(("127.0.0.1", port), backlog=256)
    conn_no = 0
    while True:
        sock, _ = server.accept()
        conn_no += 1
        threading.Thread(
            target=handle,
            args=(sock, (host, int(uport)), delay_ms / 1000, log, conn_no, rate),
            daemon=True,
        ).start()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
