"""gRPC servicers: thin layers that turn protos into store and hub calls."""
