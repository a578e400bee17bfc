"""gRPC adapters: generated stubs, servicers, channels and interceptors. Only this package imports grpc."""
