"""Generated protobuf and gRPC code for ``ckpt.v1`` (proto/ckpt/v1/checkpoint.proto).

Made by ``grpcio-tools``; do not edit. ``tests/test_stubs.py`` regenerates them and
fails when they differ from the .proto file.
"""
