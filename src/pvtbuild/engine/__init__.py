"""What runs the stages and knows nothing of MIDI or audio: executors (local, dask; tasks, worker processes,
the cluster connection and its TLS), stage files and their records, run planning and resume, manifests and
atomic writes, npz shards, the parse sandbox."""
