"""The pieces of `alexnet train` (alexnet/train.py is the command): runtime, data, state,
the epoch loop, the run folder, the checkpoint policy and the procedure that joins them."""
