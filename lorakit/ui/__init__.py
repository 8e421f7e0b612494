"""``lorakit ui``: a web dashboard over the same functions the command line calls.

``runs`` reads run directories, ``jobs`` starts ``lorakit train`` / ``lorakit eval`` as child
processes, ``forms`` turns ``TrainConfig`` into the New-run form and back, ``chat`` owns the
serving engine for side-by-side answers, ``inspect`` feeds the rank/similarity plots, ``app``
is the FastAPI layer and ``static/`` the front end (plain HTML, CSS and JavaScript, no build
step, nothing fetched from elsewhere).
"""
