"""What to run, decided before anything runs: the pass catalog and the pipeline plan.

* :mod:`~mil_sparsity.plan.catalog`: one entry per pass (configs, dtypes, options and how
  each option's value is checked, the default config, whether it streams). Below the passes:
  it never imports :mod:`mil_sparsity.passes`.
* :mod:`~mil_sparsity.plan.pipeline`: a model and a ``ct.PassPipeline`` (or a config) in, a
  :class:`~mil_sparsity.plan.pipeline.PipelinePlan` out (passes with checked selectors and
  options, the deployment target change, streaming or why not). Both rewriters execute it.
"""
