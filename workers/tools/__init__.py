"""The tools stage: governed, costed tool execution for agent loops (``stage.py``), the tenant rules it applies
(``governance.py``), exactly-once effects (``effects.py``), and the tools themselves (``builtins.py``, ``http.py``)."""
