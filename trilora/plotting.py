"""matplotlib for trilora's plots: no display needed, and every label drawn literally.

Labels come from users (`--name`, file names, prompts): a `$` must print as a dollar sign, not
start matplotlib's mathtext (which fails on `$...$` it cannot parse).
"""


def pyplot():
    # here, not at the top: matplotlib (~0.5 s), which importing this module does not need
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False
    # here, not at the top: matplotlib (~0.5 s), which importing this module does not need
    import matplotlib.pyplot as plt

    return plt
