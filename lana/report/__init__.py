"""What a run shows: terminal tables and the HTML/Markdown report.

``terminal`` (the tables ``lana run``, ``lana search`` and ``lana status`` print),
``html`` (``report/report.html`` and its Markdown twin, with plots). Progress bars and log
lines are :mod:`lana.core.progress`. Nothing is imported here.
"""
