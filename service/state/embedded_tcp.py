"""`tollgate dev`'s embedded fakeredis, served over TCP on a loopback port as well, so that
another process (`tollgate inspect`, `redis-cli`) can read the state of a running dev:
`TOLLGATE_REDIS_URL=redis://127.0.0.1:<port> tollgate inspect job ID`.

The API, the worker thread and the flusher keep using the in-process server directly; this
only opens a door to the same data. No password, so it listens on 127.0.0.1 only.
"""

from __future__ import annotations

import threading

from fakeredis import TcpFakeServer

from service.state.clients import embedded_server


class EmbeddedRedisOverTcp:
    def __init__(self, port: int = 0) -> None:
        self._tcp = TcpFakeServer(("127.0.0.1", port), server_type="redis")
        self._tcp.fake_server = embedded_server()  # the data `tollgate dev` runs on
        # A client left connected must not hold up the stop of `tollgate dev`.
        self._tcp.daemon_threads = True
        self._tcp.block_on_close = False
        self._thread = threading.Thread(target=self._tcp.serve_forever,
                                        name="tollgate-embedded-redis-tcp", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._tcp.server_address[:2]
        return f"redis://{host!s}:{port}/0"

    def close(self) -> None:
        self._tcp.shutdown()
        self._tcp.server_close()
        self._thread.join(5)
