"""The bundled trainer: diffusion models on pvtbuild datasets (and toy data).

Modules, in the order they import one another (each imports only modules above it):

- `spec`: what a model knows of its data (`DataSpec`, `DataStats`); `guidance`: the controls a batch
  carries, control dropout, classifier-free guidance; `device`: the `--device` rule under torchrun.
- `backbone`: the conditional U-Net ``F(x_in, noise_level, controls)``; knows no formalism.
  `toy_model`: the toy MLP. `toy_data`: the swiss rolls. `formalisms/`: one module per formalism
  (EDM, DDPM, DiscDPM, IADB), each a ``loss(net, x0, controls, generator)`` and a
  ``sample(net, shape, controls, steps, cfg_scale, generator)``. Each owns its config section.
- `config`: training configs (YAML) into typed, checked objects.
- `data`: batches from a dataset's TFRecord shards (PyTorch reader) or toy data; `conditioning`:
  controls a person writes, as the model reads them; `build`: the backbone and formalism of a config.
- `checkpoint`: exact-resume checkpoints and the run directory's files; `export`: a run as safetensors.
- `judge`, `frechet`, `vggish`, `toy_metrics`: what scores audio and samples.
- `sample`: generation from a checkpoint or export; `validate`: validation while training;
  `loop`: the training loop (single process or torchrun); `evaluate`: `pvtbuild evaluate`.

"Manté 2024" in docstrings is the report whose models the trainer reproduces: A. Manté, *Génération
automatique de jingles audio*, internship report (mémoire de stage), Ircam / Ircam Amplify, 2024.
"""
