"""The networks: teachers and their data in, students out.

``zoo`` (the teacher registry: timm, torchvision, lana's own, ``python:``), ``data``
(datasets and splits), ``decompose`` (teacher -> chain of replaceable layers),
``usercode`` (``python:<module>:<callable>`` in a config), ``toys`` (small teachers for
tests and benchmarks), ``student`` (assemble, save and load students). Nothing is imported
here: ``import lana.model`` costs nothing.
"""
