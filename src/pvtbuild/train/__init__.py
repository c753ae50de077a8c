"""The bundled trainer: diffusion models on pvtbuild datasets (and toy data).

Split as the best diffusion codebases split it (see STYLE.md):

- `backbone`: the conditional U-Net ``F(x_in, noise_level, controls)``; knows no formalism.
- `formalisms/`: one module per formalism (EDM, DDPM, DiscDPM, IADB), each a
  ``loss(net, x0, controls, generator)`` and a ``sample(net, shape, controls, steps, cfg_scale, generator)``.
- `guidance`: the controls a batch carries, control dropout, classifier-free guidance.
- `spec`: what a model knows of its data; `data`, `toy_data`: batches from a dataset's TFRecord shards
  (PyTorch reader) or toy data; `toy_model`, `toy_metrics`: the toy MLP and the toy sample metrics.
- `checkpoint`, `loop`: exact-resume checkpoints and the training loop (single process or torchrun).
"""
