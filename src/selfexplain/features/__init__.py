"""Everything the feature-description task is built from, below the label maker
(``tasks.features``): the text corpus (``corpus``), residual-stream activations on it
(``activations``), the TopK SAE (``sae``), what is known about each latent (``records``:
``FeatureRecord``, the type the others share), the describers (``describe``), the injection of a
vector into an explainer as a continuous token (``injection``) and the scores of generated
descriptions (``metrics``). Nothing here imports from ``tasks``, ``train`` or ``evaluate``.
"""
