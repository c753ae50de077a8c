"""The domain libraries: MIDI lines and windows, FluidSynth rendering, control signals, audio analysis,
SoundFonts. They know nothing of stages or executors."""
