"""Generated protobuf and gRPC modules for the orbitvault.v1 IDL in proto/orbitvault/v1/.

Made by `make proto` (python -m orbitvault.grpc.codegen); do not edit. Import the modules directly,
e.g. `from orbitvault.grpc.v1 import shard_store_pb2, shard_store_pb2_grpc`.
"""
