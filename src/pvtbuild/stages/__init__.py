"""The pipeline's stages, one module each: select, render, encode, qa, shard (see `pvtbuild.pipeline`)."""
