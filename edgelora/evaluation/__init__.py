"""Evaluation of the shipped GGUFs: held-out, probes, extra sets and the shipped regression set,
scored on the base and every quantization, with gates that stop a build.

- ``sets``: eval files and the sets a project declares (file:line errors)
- ``metrics``: exact, json_fields, contains, regex, rouge_l, refusal, checks
- ``generate``: batched greedy decoding through llama-cpp-python
- ``runner``: sets × models → the eval.json report
- ``report``: eval.md and the bundle README's headline
- ``gates``: ``min`` / ``max_drop_vs_base`` per set and metric
- ``stage``: the build stages and ``edgelora eval``
"""
