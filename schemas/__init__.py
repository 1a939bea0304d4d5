"""The single source of truth: labels, aliases, TFRecord features and table schemas.

Everything else in the project imports from here; this package imports nothing of ours.
"""

from schemas.labels import (  # noqa: F401
    LABELS,
    LABEL_TO_INDEX,
    LABELS_VERSION,
    NUM_CLASSES,
    SPLIT_ALIASES,
    SPLITS,
    canonical_label,
    canonical_split,
)
from schemas.splits import MIN_EVAL_IMAGES, eval_split_too_small, min_eval_images  # noqa: F401
from schemas.tta import TTA_MODES  # noqa: F401
from schemas.tfrecord import (  # noqa: F401
    SCHEMA_VERSION,
    FEATURES,
    encode_example,
)
from schemas.tables import (  # noqa: F401
    PREDICTIONS_SCHEMA,
    RUNS_SCHEMA,
    TABLE_PARTITION_KEYS,
    TABLE_SCHEMA,
    REJECTED_SCHEMA,
    PER_CLASS_SCHEMA,
    CONFUSION_SCHEMA,
    COVERAGE_SCHEMA,
    FACE_FIELDS,
    SLICES_SCHEMA,
    bigquery_schema,
)
from schemas.compare import (  # noqa: F401
    AGREEMENT_SCHEMA,
    COMPARE_INPUT_SCHEMA,
    COMPARE_OPTIONAL_COLUMNS,
    COMPARE_PER_CLASS_SCHEMA,
    DISAGREEMENTS_SCHEMA,
)
