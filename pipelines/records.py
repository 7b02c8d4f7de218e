"""The records that flow between the preprocessing stages, and nothing that does work.

Every stage imports its element types from here (sources -> transforms -> staging -> sinks,
the label rules and the review), so that no stage imports another for a type: the modules
that do the work form no import circle (tests/test_import_graph.py). The shape of a dead
letter (a dict) is pipelines/dead_letters.py's; a :class:`Rejection` holds its fields.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

# The label of an image that has none (a Kaggle test.csv id): decoded for the quality audit
# alone, never written (its dead letter says ``unlabelled``).
NO_LABEL = -1
# The split the audit gives such images: a copy of a train image among them is leakage too.
UNLABELLED_SPLIT = "unlabelled"

# (path, size, folder_label, group): one listed image file, keyed by its id.
ImageFile = tuple[str, int, int | None, str]


class VectorLocation(NamedTuple):
    """Where a --numeric_columns vector waits on disk (pipelines.staging): a record of a vectors file."""

    path: str
    offset: int  # of the record: the vector's digest, then its bytes
    length: int


class LabelRow(NamedTuple):
    """A labels-CSV row reduced to what the pipeline uses."""

    label: int | None  # None: the row has no label (e.g. the Kaggle test.csv).
    source_split: str
    group: str
    error: str  # Non-empty when the label value could not be parsed.
    vector: bytes = b""  # float32 values of the --numeric_columns, in order; b"" when none or bad.
    vector_error: str = ""  # Non-empty when a --numeric_columns value is missing or not a finite number.
    # Where the vector waits when the job staged it (pipelines.staging); ``vector`` is then its
    # digest, so that equal vectors still compare equal.
    vector_location: VectorLocation | None = None


class LabelledImage(NamedTuple):
    """One input image with its resolved label, before decoding."""

    id: str
    path: str
    size: int
    label: int
    group: str
    source_split: str  # "train"/"validation"/"test" from the labels CSV name, else "".
    overridden: bool
    vector: bytes = b""  # float32 values of the --numeric_columns (ndarray.tobytes()); b"" when none.
    # Where the vector waits when the job staged it at the CSV parse; ``vector`` is then its digest.
    vector_location: VectorLocation | None = None


@dataclasses.dataclass(frozen=True)
class Rejection:
    """Why an image or a CSV row cannot be used: the fields of its dead letter."""

    stage: str
    reason: str
    path: str = ""
    image_id: str = ""
    detail: str = ""
    is_image: bool = True


class ImageQuality(NamedTuple):
    """What the audit (pipelines/quality/) knows of one image: a few numbers, no pixels."""

    width: int  # original, from the header
    height: int
    aspect_ratio: float  # width / height of the original
    sharpness: float  # variance of the Laplacian of the resized grey image
    anisotropy: float  # log of the horizontal / vertical gradient energies: far off by motion blur, smears
    brightness: float  # mean grey value, 0-255
    contrast: float  # std of the grey values
    saturated: float  # share of channel values that are 0 or 255
    constancy: float  # share of the most common grey value (1.0: one colour)
    phash: int  # 64-bit perceptual hash (DCT)
    thumbnail: bytes  # quality.measures.THUMBNAIL_SIDE² grey uint8: the near-duplicate check beside the hash
    patches: bytes  # quality.measures.PATCHES_SIDE² grey uint8: what the atypicality measures
    # How far the patches lie from the other fold's face space (quality.face_space.atypicality): set by
    # the audit once the whole data set is seen (quality.face_space.with_atypicality); NaN until then.
    atypicality: float = math.nan


class DecodedImage(NamedTuple):
    """A decoded image reduced to the pixels that go into a shard (an unlabelled one: to its audit)."""

    id: str
    label: int | None  # None: an unlabelled image, audited but never written
    split: str
    pixels: bytes  # uint8, row-major height x width x channels
    content_hash: int
    group: str  # What the split kept together (a person with --group_by), else the id.
    vector: bytes = b""  # float32 --numeric_columns values (LabelledImage.vector); b"" when none.
    quality: ImageQuality | None = None  # The audit's statistics (pipelines/quality/).
    staged: str = ""  # The staging file holding the pixels while they are b"" (pipelines.staging).
    vector_location: VectorLocation | None = None  # Where the vector waits while it is b"" (staged at the parse).
    path: str = ""  # The source file (LabelledImage.path): the examples index names it.
