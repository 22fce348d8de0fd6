"""A run: the stages over a run directory, resumable and read back by ``lana status``.

``stages`` (the stage graph and the run directory's file names, as data; no torch),
``runner`` (:class:`~lana.pipeline.runner.Run`, every phase over the directory, and
:func:`~lana.pipeline.runner.run`), ``status`` (how far a run got, read only), ``io``
(atomic, checksummed JSON and safetensors files; the run lock), ``dist`` (torchrun: process
group, ranks, devices, the test kill hook). Nothing is imported here.
"""
