#!/usr/bin/env python3
"""A delaying HTTP/1.1 proxy for cmd/bench.sh's `wan` scenario: a distant registry.

    delay_proxy.py LISTEN_PORT UPSTREAM_HOST:PORT DELAY_MS [KIB_PER_S]

Listens on 127.0.0.1:LISTEN_PORT and relays every connection to UPSTREAM. Each request
is held DELAY_MS milliseconds, from the moment its head has arrived to the moment it is
passed on; its body and the answers stream through unbuffered, both ways at once. One
held request per request is one round trip of a distant registry (the request's way
there and the answer's way back, folded into one wait); doc/perf.md says what that
leaves out (TCP and TLS handshakes, bandwidth, the delay of each later packet).

Why a script of the standard library rather than the test rig's hyper proxy: the bench
needs no build step for it, and relaying raw bytes is all it does. It parses only what
it must to find where a request ends on a kept-alive connection (the head, then a
Content-Length or chunked body), and never parses the answers: clients here do not
pipeline, so the upstream's bytes are copied to the client as they come. A connection
that does not start with an HTTP method (skopeo first tries TLS on a registry it is told
not to verify) is held once and then relayed raw, so the upstream answers it as it would
without the proxy.

KIB_PER_S, when given, also caps how fast the answers of each connection flow (a slow
link): cmd/demo-cluster.sh uses it to keep a copy in flight long enough to kill its
replica half-way.
"""
import asyncio
import sys

CHUNK = 1 << 16
METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"PATCH ", b"DELETE ", b"OPTIONS ")


async def pump(reader, writer, rate=None):
    """Copies reader to writer until EOF, then closes writer's side; at most `rate`
    bytes a second when given (in pieces of a tenth of it)."""
    piece = CHUNK if rate is None else max(1024, min(CHUNK, int(rate / 10)))
    try:
        while True:
            data = await reader.read(piece)
            if not data:
                break
            writer.write(data)
            await writer.drain()
            if rate is not None:
                await asyncio.sleep(len(data) / rate)
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def copy_exactly(reader, writer, n):
    while n > 0:
        data = await reader.read(min(n, CHUNK))
        if not data:
            raise ConnectionError("client closed inside a request body")
        writer.write(data)
        await writer.drain()
        n -= len(data)


async def copy_chunked(reader, writer):
    while True:
        line = await reader.readuntil(b"\r\n")
        writer.write(line)
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            # Trailers, then the empty line that ends the body.
            while True:
                line = await reader.readuntil(b"\r\n")
                writer.write(line)
                if line == b"\r\n":
                    await writer.drain()
                    return
        await copy_exactly(reader, writer, size + 2)


async def requests(reader, writer, delay):
    """Relays the client's requests one by one, each held `delay` seconds."""
    try:
        first = await reader.read(CHUNK)
        if not first:
            return
        await asyncio.sleep(delay)
        if not first.startswith(METHODS):
            writer.write(first)
            await pump(reader, writer)
            return
        reader_buf = first
        while True:
            # The head: what is buffered plus whatever completes it.
            while b"\r\n\r\n" not in reader_buf:
                more = await reader.read(CHUNK)
                if not more:
                    return
                reader_buf += more
            head, reader_buf = reader_buf.split(b"\r\n\r\n", 1)
            head += b"\r\n\r\n"
            length, chunked = 0, False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value.strip())
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
            writer.write(head)
            await writer.drain()
            # What was read past the head belongs to the body or to the next request.
            body_reader = Prefixed(reader_buf, reader)
            if chunked:
                await copy_chunked(body_reader, writer)
            else:
                await copy_exactly(body_reader, writer, length)
            reader_buf = body_reader.rest()
            if not reader_buf:
                nxt = await reader.read(CHUNK)
                if not nxt:
                    return
                reader_buf = nxt
            await asyncio.sleep(delay)
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


class Prefixed:
    """A reader that first serves `prefix` (bytes already read), then `reader`."""

    def __init__(self, prefix, reader):
        self.buf, self.reader = prefix, reader

    async def read(self, n):
        if self.buf:
            data, self.buf = self.buf[:n], self.buf[n:]
            return data
        return await self.reader.read(n)

    async def readuntil(self, sep):
        while sep not in self.buf:
            more = await self.reader.read(CHUNK)
            if not more:
                raise asyncio.IncompleteReadError(self.buf, None)
            self.buf += more
        i = self.buf.index(sep) + len(sep)
        data, self.buf = self.buf[:i], self.buf[i:]
        return data

    def rest(self):
        return self.buf


async def main():
    port, upstream, delay_ms = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    host, _, uport = upstream.rpartition(":")
    delay = delay_ms / 1000
    rate = float(sys.argv[4]) * 1024 if len(sys.argv) > 4 else None

    async def handle(c_reader, c_writer):
        try:
            u_reader, u_writer = await asyncio.open_connection(host, int(uport))
        except OSError:
            c_writer.close()
            return
        answers = asyncio.ensure_future(pump(u_reader, c_writer, rate))
        await requests(c_reader, u_writer, delay)
        await answers

    server = await asyncio.start_server(handle, "127.0.0.1", port, limit=CHUNK * 4)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
