#!/usr/bin/env python3
"""Talks to a ChainQL node over gRPC from Python, with stubs generated from ChainQL's .proto files.

It makes a new ed25519 key, signs a transaction that creates a table and inserts a row, submits
it and waits for its receipt, then reads the row back with a query and the transaction with
GetTransaction, and follows the chain with Subscribe until the transaction's block arrives.

    pip install -r requirements.txt
    ./generate.sh generated
    PYTHONPATH=generated python3 chainql_example.py --node 127.0.0.1:7545

Exits non-zero, with a message, when anything is not as expected.
"""

import argparse
import sys

import blake3
import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

import chainql_pb2
import node_pb2
import node_pb2_grpc

# Domain separation, as in chainql/src/crypto.rs and transaction.rs: a tag, a zero byte, the data.
TRANSACTION_DOMAIN = b"chainql/transaction/v1"
TRANSACTION_HASH_DOMAIN = b"chainql/transaction-hash/v1"
ADDRESS_DOMAIN = b"chainql/address/v1"
GAS_LIMIT = 10_000_000


def tagged(tag: bytes, data: bytes) -> bytes:
    return blake3.blake3(tag + b"\x00" + data).digest()


def address_of(public_key: bytes) -> str:
    """An account's address: the first 20 bytes of the tagged blake3 digest of its key."""
    return "0x" + tagged(ADDRESS_DOMAIN, public_key)[:20].hex()


def sign(key: Ed25519PrivateKey, chain_id: str, nonce: int, statements) -> chainql_pb2.SignedTransaction:
    public_key = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    body = chainql_pb2.Transaction(
        chain_id=chain_id,
        sender=public_key,
        nonce=nonce,
        gas_limit=GAS_LIMIT,
        statements=statements,
    ).SerializeToString()
    signature = key.sign(TRANSACTION_DOMAIN + b"\x00" + body)
    return chainql_pb2.SignedTransaction(transaction=body, signature=signature)


def check(condition: bool, what: str) -> None:
    if not condition:
        sys.exit(f"chainql_example: {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node", default="127.0.0.1:7545", help="the node's gRPC address")
    parser.add_argument("--table", default="python_notes", help="the table to create")
    args = parser.parse_args()

    channel = grpc.insecure_channel(args.node)
    node = node_pb2_grpc.NodeStub(channel)
    status = node.Status(node_pb2.StatusRequest(), timeout=10)
    print(f"connected to chain {status.chain_id} at height {status.height}")

    key = Ed25519PrivateKey.generate()
    public_key = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    address = address_of(public_key)
    account = node.GetAccount(node_pb2.GetAccountRequest(address=address), timeout=10)
    check(account.next_nonce == 0, f"a new key's next nonce is {account.next_nonce}")

    # Sign and submit: one transaction, two statements, applied atomically.
    signed = sign(
        key,
        status.chain_id,
        account.next_nonce,
        [
            f"CREATE TABLE {args.table} (id BIGINT PRIMARY KEY, author TEXT, body TEXT)",
            f"INSERT INTO {args.table} VALUES (1, CALLER(), 'written from Python')",
        ],
    )
    response = node.SubmitTransaction(
        node_pb2.SubmitTransactionRequest(transaction=signed, wait_for_receipt=True), timeout=30
    )
    expected_hash = tagged(TRANSACTION_HASH_DOMAIN, signed.transaction)
    check(response.transaction_hash == expected_hash, "the node names the transaction by another hash")
    receipt = response.receipt
    check(
        receipt.status == chainql_pb2.RECEIPT_STATUS_SUCCESS,
        f"the transaction failed: {receipt.error} ({receipt.code})",
    )
    check([s.command for s in receipt.statements] == ["CREATE TABLE", "INSERT"], f"{receipt.statements}")
    print(f"committed {response.transaction_hash.hex()} in block {receipt.block_height}")

    # Read back: the row, through a query (as text rows; Arrow IPC is there too).
    answer = node.Query(
        node_pb2.QueryRequest(sql=f"SELECT id, author, body FROM {args.table}", include_rows=True),
        timeout=10,
    )
    rows = [[cell.text if cell.HasField("text") else None for cell in row.cells] for row in answer.rows]
    check([c.name for c in answer.columns] == ["id", "author", "body"], f"columns {answer.columns}")
    check(rows == [["1", address, "written from Python"]], f"rows {rows}; expected author {address}")
    check(len(answer.arrow_ipc) > 0, "no Arrow IPC answer")

    # Read back: the transaction itself, exactly as signed.
    stored = node.GetTransaction(
        node_pb2.GetTransactionRequest(transaction_hash=response.transaction_hash), timeout=10
    )
    check(stored.transaction == signed, "the stored transaction differs from the one signed")
    check(stored.receipt.block_height == receipt.block_height, "the stored receipt differs")

    # Follow the chain: the transaction's block, with its receipts.
    blocks = node.Subscribe(
        node_pb2.SubscribeRequest(from_height=receipt.block_height, include_receipts=True), timeout=30
    )
    block = next(iter(blocks))
    blocks.cancel()
    check(block.height == receipt.block_height, f"subscribe began at {block.height}")
    hashes = [r.transaction_hash for r in block.receipts]
    check(response.transaction_hash in hashes, "the block's receipts lack the transaction")

    account = node.GetAccount(node_pb2.GetAccountRequest(address=address), timeout=10)
    check(account.committed_nonce == 1, f"committed nonce {account.committed_nonce}")
    print(f"read back row {rows[0]} and block {block.height}: ok")


if __name__ == "__main__":
    main()
