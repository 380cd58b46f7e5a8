"""Reads one record from strongroom over TLS (and mTLS) with the Python grpcio client.

This is how a service in another language talks to the vault: the stubs are generated from
proto/strongroom/v1/strongroom.proto with grpcio-tools, the channel is authenticated with the
private CA (and a client certificate when the vault requires one), and the bearer token rides in
the `authorization` metadata. The token is read from an environment variable, never argv.

    python get_record.py --addr localhost:7700 --ca ca.pem [--cert client.pem --key client.key] \
        --id REC --purpose support        # token in $STRONGROOM_TOKEN

Prints one JSON object: {"id": ..., "fields": [{"name", "disclosure", "value"}...]}.
"""

import argparse
import importlib
import json
import os
import pathlib
import sys
import tempfile

import grpc
from grpc_tools import protoc

REPO = pathlib.Path(__file__).resolve().parents[2]


def stubs(out: str):
    """Generates the Python stubs of strongroom.proto into `out` and imports them."""
    proto = REPO / "proto"
    rc = protoc.main(
        [
            "protoc",
            f"-I{proto}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(proto / "strongroom/v1/strongroom.proto"),
        ]
    )
    if rc != 0:
        sys.exit(f"protoc failed: {rc}")
    sys.path.insert(0, out)
    pb = importlib.import_module("strongroom.v1.strongroom_pb2")
    rpc = importlib.import_module("strongroom.v1.strongroom_pb2_grpc")
    return pb, rpc


def main() -> None:
    args = argparse.ArgumentParser()
    args.add_argument("--addr", required=True)
    args.add_argument("--ca", required=True)
    args.add_argument("--cert")
    args.add_argument("--key")
    args.add_argument("--id", required=True)
    args.add_argument("--purpose", required=True)
    opts = args.parse_args()
    token = os.environ["STRONGROOM_TOKEN"]

    with tempfile.TemporaryDirectory() as out:
        pb, rpc = stubs(out)
        read = lambda p: pathlib.Path(p).read_bytes() if p else None
        tls = grpc.ssl_channel_credentials(
            root_certificates=read(opts.ca),
            private_key=read(opts.key),
            certificate_chain=read(opts.cert),
        )
        creds = grpc.composite_channel_credentials(
            tls, grpc.access_token_call_credentials(token)
        )
        with grpc.secure_channel(opts.addr, creds) as channel:
            records = rpc.RecordsStub(channel)
            try:
                resp = records.GetRecord(
                    pb.GetRecordRequest(id=opts.id, purpose=opts.purpose), timeout=30
                )
            except grpc.RpcError as e:
                print(json.dumps({"error": e.code().name, "message": e.details()}))
                return
        fields = [
            {
                "name": f.name,
                "disclosure": pb.Disclosure.Name(f.disclosure),
                "value": f.value,
            }
            for f in resp.fields
        ]
        print(json.dumps({"id": resp.id, "fields": fields}))


if __name__ == "__main__":
    main()
