"""What a run shows: terminal tables, the HTML/Markdown report, progress output.

``terminal`` (the tables ``lana run``, ``lana search`` and ``lana status`` print),
``html`` (``report/report.html`` and its Markdown twin, with plots), ``progress``
(progress bars and log lines, one look for every stage). Nothing is imported here.
"""
