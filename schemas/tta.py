"""The test-time augmentation modes, cheapest first: the values of the tables' `tta` column, of predict's and
evaluate's --tta, and of an exported model's recommended_tta (model/tta.py and model/engines.py compute
their views; the evaluation prefers the cheapest mode within its tolerance of the best).

    none   the image
    flip   the image and its mirror (2 views)
    crops  the image, four 3-pixel shifted crops of its reflect-padded copy, and all their mirrors (10 views)
"""

TTA_MODES = ("none", "flip", "crops")
