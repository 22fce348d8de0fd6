"""A run: the stages over a run directory, resumable and read back by ``lana status``.

``stages`` (the stage graph, as data; no torch), ``runner``
(:class:`~lana.pipeline.runner.Run`, every phase over the directory, and
:func:`~lana.pipeline.runner.run`), ``status`` (how far a run got, read only), ``verify``
(``lana verify --independent``: the exported files re-timed by a plain loop in fresh
processes). The files it reads and writes are named in :mod:`lana.core.layout`. Nothing is
imported here.
"""
