"""``mftrain study``: comparisons of training strategies on one store, each a recipe.

Every recipe runs through one runner and shares its arguments, study stores, configs, tables,
plots and analyses; a recipe module states only its models, its results and its report.

- :mod:`~mftrain.studies.args`: the arguments every recipe takes, checked in one place;
- :mod:`~mftrain.studies.options`: the command line's options, declared once for every recipe;
- :mod:`~mftrain.studies.data`: the study stores (held-out test part, nested training stores);
- :mod:`~mftrain.studies.configs`: the shared base config, the budget, the kinds of model;
- :mod:`~mftrain.studies.recipe`: what a recipe states and what the runner hands back;
- :mod:`~mftrain.studies.runner`: the run loop (plan check, parallel runs, resume, scoring);
- :mod:`~mftrain.studies.tables`, :mod:`~mftrain.studies.plots`: the reports' tables and PNGs;
- :mod:`~mftrain.studies.md`, :mod:`~mftrain.studies.cka`: the MD check, CKA of backbones;
- recipes: :mod:`~mftrain.studies.low_forces`, :mod:`~mftrain.studies.pretrain_finetune`,
  :mod:`~mftrain.studies.multihead_vs_finetune`, :mod:`~mftrain.studies.representations`.
"""
