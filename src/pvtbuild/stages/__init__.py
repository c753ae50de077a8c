"""The pipeline's stages, one module each (select, render, encode, qa, shard), behind one interface (`base`).

Beside them, what several stages read without importing each other: `render_settings` (the SoundFont
and the render parameter hash), `render_input` (what the stages fed by render shards share) and
`qa_output` (a build's qa records and summary). The order of the stages is `pvtbuild.pipeline`'s.
"""
