"""moto's server, with SQS FIFO deduplication as AWS does it, and DynamoDB's transaction
size as AWS has it now.

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

from moto.dynamodb import models as dynamodb_models
from moto.dynamodb import responses as dynamodb_responses
from moto.sqs import models
from moto.server import main

# AWS takes up to 100 actions in one TransactWriteItems since 2022; moto's check of the
# request still says 25 (its model takes 100).
dynamodb_responses.TRANSACTION_MAX_ITEMS = 100

# moto runs a transaction by copying the whole table once per action (to roll back),
# unguarded: a transaction of 100 actions on a table of thousands of items takes
# seconds, and two at once (the server answers each request on a thread of its own)
# break each other with a 500. This does what DynamoDB does, as moto's code does, but
# checks every condition first and writes only when all hold (nothing to roll back),
# one transaction at a time.
_transactions = threading.Lock()
_conditions = {}


def _condition(condition, names, values):
    """moto's parse of a condition, kept: the items of a transaction share theirs."""
    from moto.dynamodb.comparisons import get_filter_expression

    key = (condition, repr(sorted((names or {}).items())), repr(sorted((values or {}).items())))
    parsed = _conditions.get(key)
    if parsed is None:
        if len(_conditions) > 10000:
            _conditions.clear()
        parsed = _conditions[key] = get_filter_expression(condition, names, values)
    return parsed


def transact_write_items(self, transact_items):
    from moto.dynamodb.exceptions import (
        ConditionalCheckFailed,
        MultipleTransactionsException,
        TooManyTransactionsException,
        TransactionCanceledException,
        TransactWriteSingleOpException,
    )

    if len(transact_items) > 100:
        raise TooManyTransactionsException()
    with _transactions:
        seen = set()
        actions = []
        errors = []
        for entry in transact_items:
            if len(entry) > 1:
                raise TransactWriteSingleOpException
            op_type, op = next(iter(entry.items()))
            table_name = op["TableName"]
            table = self.get_table(table_name)
            source = op["Item"] if op_type == "Put" else op["Key"]
            key = {table.hash_key_attr: source[table.hash_key_attr]}
            if table.range_key_attr is not None:
                key[table.range_key_attr] = source[table.range_key_attr]
            identity = (table_name, str(sorted(key.items())))
            if identity in seen:
                raise MultipleTransactionsException()
            seen.add(identity)
            condition = op.get("ConditionExpression")
            failed = False
            if condition is not None:
                current = self.get_item(table_name, key)
                check = _condition(
                    condition,
                    op.get("ExpressionAttributeNames"),
                    op.get("ExpressionAttributeValues"),
                )
                failed = not check.expr(current)
            if failed:
                errors.append(("ConditionalCheckFailed", ConditionalCheckFailed().message, None))
            else:
                errors.append((None, None, None))
            actions.append((op_type, op, table_name, key))
        if any(code is not None for code, _, _ in errors):
            raise TransactionCanceledException(errors)
        for op_type, op, table_name, key in actions:
            names = op.get("ExpressionAttributeNames")
            values = op.get("ExpressionAttributeValues")
            if op_type == "Put":
                self.put_item(table_name, op["Item"])
            elif op_type == "Delete":
                self.delete_item(table_name, key)
            elif op_type == "Update":
                self.update_item(
                    table_name,
                    key,
                    update_expression=op["UpdateExpression"],
                    expression_attribute_names=names,
                    expression_attribute_values=values,
                )


dynamodb_models.DynamoDBBackend.transact_write_items = transact_write_items

WINDOW_SECONDS = 300

_add_message = models.Queue.add_message
_lock = threading.Lock()


def add_message(self, message):
    if not self.fifo_queue or self.lambda_event_source_mappings:
        return _add_message(self, message)
    # Deduplication here replaces moto's own, which compares the id with every
    # message in the queue (a send to a queue of thousands is then slow): what is
    # still queued was sent within the window or is older than it, as AWS has it.
    if message.deduplication_id:
        with _lock:
            seen = self.__dict__.setdefault("_deduplication_ids", {})
            now = time.monotonic()
            if len(seen) > 1000:
                for stale in [key for key, at in seen.items() if now - at >= WINDOW_SECONDS]:
                    del seen[stale]
            first = seen.get(message.deduplication_id)
            if first is not None and now - first < WINDOW_SECONDS:
                return
            seen[message.deduplication_id] = now
    with self._messages_lock:
        self._messages.append(message)
        self._messages_lock.notify_all()


models.Queue.add_message = add_message

# moto reads the clock for every message of a queue each time it counts the visible
# ones (several times per message sent), through a datetime round trip: a send to a
# queue of thousands takes seconds. The same test on the plain clock.
models.Message.visible = property(lambda self: time.time() * 1000 > self.visible_at)
models.Message.delayed = property(lambda self: time.time() * 1000 < self.delayed_until)

# And it builds every attribute of a queue (counting its messages three ways) each time
# one attribute is read, several times per message sent: kept for 50 ms (the counts
# are approximate on AWS too), forgotten when the queue's attributes are set.
_queue_attributes = models.Queue.attributes


def _attributes(self):
    now = time.monotonic()
    cached = self.__dict__.get("_cached_attributes")
    if cached is not None and now - cached[0] < 0.05:
        return dict(cached[1])
    value = _queue_attributes.fget(self)
    self.__dict__["_cached_attributes"] = (now, value)
    return dict(value)


models.Queue.attributes = property(_attributes)
_set_queue_attributes = models.SQSBackend.set_queue_attributes


def set_queue_attributes(self, queue_name, attributes):
    queue = self.get_queue(queue_name)
    queue.__dict__.pop("_cached_attributes", None)
    try:
        return _set_queue_attributes(self, queue_name, attributes)
    finally:
        queue.__dict__.pop("_cached_attributes", None)


models.SQSBackend.set_queue_attributes = set_queue_attributes

if __name__ == "__main__":
    sys.exit(main())
