"""moto's server, with SQS FIFO deduplication as AWS does it.

AWS remembers a FIFO queue's deduplication id for five minutes after the first
message sent with it, whether that message was deleted since or not: a second send
with the id within the window is answered as a success and dropped. moto compares
an id only with messages still in the queue, so a test on plain moto never sees a
re-sent id swallowed. The tests start moto through this file, so that every path
that sends an id again meets the window as it would on AWS.

Run with the virtualenv's Python: `python moto_server.py -H 127.0.0.1 -p PORT`.
"""

import sys
import threading
import time

from moto.sqs import models
from moto.server import main

WINDOW_SECONDS = 300

_add_message = models.Queue.add_message
_lock = threading.Lock()


def add_message(self, message):
    if self.fifo_queue and message.deduplication_id:
        with _lock:
            seen = self.__dict__.setdefault("_deduplication_ids", {})
            now = time.monotonic()
            for stale in [key for key, at in seen.items() if now - at >= WINDOW_SECONDS]:
                del seen[stale]
            if message.deduplication_id in seen:
                return
            seen[message.deduplication_id] = now
    _add_message(self, message)


models.Queue.add_message = add_message

if __name__ == "__main__":
    sys.exit(main())
