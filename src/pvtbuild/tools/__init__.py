"""Tools beside the pipeline: dataset inspection, SoundFont audit, decoding stored formats to audio,
and the outside QA judge."""
