"""croissant.json: the preprocessing output described as an MLCommons Croissant 1.0 data set.

Written by the driver after the manifest, from the files on disk: the distribution lists every
shard, examples-index, dead-letter and quality file with its SHA-256 (as FileObjects) and the
same files as FileSets by glob, which three record sets read: ``examples`` (the examples
index), ``dead_letters`` and ``quality_flags``. ``mlcroissant`` (and so TFDS's CroissantBuilder,
Hugging Face, Kaggle, OpenML) reads it; the data's fingerprint is the data set's identifier.
Nothing here reaches the network: every contentUrl is a path relative to this file.
"""

from __future__ import annotations

import datetime
import posixpath
from collections.abc import Mapping
from typing import Any

from apache_beam.io.filesystems import FileSystems

from pipelines import features, output_dir
from pipelines.config import DatasetCard
from pipelines.manifest import file_sha256

CONFORMS_TO = "http://mlcommons.org/croissant/1.0"
# The Croissant 1.0 JSON-LD context, as the specification gives it.
CONTEXT = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileProperty": "cr:fileProperty",
    "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "parentField": "cr:parentField",
    "path": "cr:path",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "sc": "https://schema.org/",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}
TFRECORD_GZIP = "application/x-tfrecord+gzip"  # No registered MIME type; what the shards are.
CSV, JSON, JSON_LINES = "text/csv", "application/json", "application/jsonlines"

# (file set @id, glob relative to the output, encoding format, what the files hold)
FILE_SETS = (
    ("shards", "*" + features.SHARD_SUFFIX, TFRECORD_GZIP, "tf.Example shards; features in manifest.json"),
    ("examples-index", f"{features.EXAMPLES_DIR}/*.csv", CSV, "a row per written example"),
    ("dead-letters", f"{features.DEAD_LETTER_DIR}/*.jsonl", JSON_LINES, "every unusable image or CSV row, why"),
    ("quality-images", f"{features.QUALITY_DIR}/images-*.jsonl", JSON_LINES, "per-image quality statistics, flags"),
    ("quality-duplicates", f"{features.QUALITY_DIR}/duplicates-*.jsonl", JSON_LINES, "duplicate groups"),
)
UNSPECIFIED_LICENSE = "unspecified (preprocess --dataset_license sets it)"
TEXT, INTEGER = "sc:Text", "sc:Integer"
_EXAMPLE_TYPES = {"label": INTEGER}
# (record set @id, file set, key, fields (name, type), description)
_DEAD_LETTER_FIELDS = (("id", TEXT), ("path", TEXT), ("stage", TEXT), ("reason", TEXT), ("detail", TEXT))
_QUALITY_FIELDS = (("id", TEXT), ("split", TEXT), ("content_hash", TEXT), ("flags", TEXT))


def _relative_files(root: str, pattern: str) -> list[tuple[str, int]]:
    """(path relative to ``root``, size) of the files matching ``pattern`` under it, sorted."""
    matched = FileSystems.match([FileSystems.join(root, pattern)])[0].metadata_list
    prefix = root.rstrip("/") + "/"
    return sorted((m.path[len(prefix) :], m.size_in_bytes) for m in matched)


def _file_object(root: str, relative: str, size: int, encoding: str, description: str) -> dict[str, Any]:
    return {
        "@type": "cr:FileObject",
        "@id": relative,
        "name": relative,
        "description": description,
        "contentUrl": relative,
        "contentSize": f"{size} B",
        "encodingFormat": encoding,
        "sha256": file_sha256(FileSystems.join(root, relative)),
    }


def _field(record_set: str, file_set: str, name: str, data_type: str) -> dict[str, Any]:
    return {
        "@type": "cr:Field",
        "@id": f"{record_set}/{name}",
        "name": name,
        "dataType": data_type,
        "source": {"fileSet": {"@id": file_set}, "extract": {"column": name}},
    }


def _record_set(record_set: str, file_set: str, fields, description: str, key: str | None) -> dict[str, Any]:
    record = {
        "@type": "cr:RecordSet",
        "@id": record_set,
        "name": record_set,
        "description": description,
        "field": [_field(record_set, file_set, name, data_type) for name, data_type in fields],
    }
    if key:
        record["key"] = {"@id": f"{record_set}/{key}"}
    return record


def _description(card: DatasetCard, manifest: Mapping[str, Any]) -> str:
    """The card's description, then what the job made of it, from the manifest's counts."""
    counts, image = manifest["counts"], manifest["image"]
    written = ", ".join(f"{split} {sum(per_class.values())}" for split, per_class in counts["written"].items())
    made = (
        f"Preprocessed by facepipe: {counts['images_seen']} images seen, {counts['written_total']} written as "
        f"{image['width']}x{image['height']} {image['color_mode']} tf.Example shards ({written}), "
        f"{counts['dead_letter_total']} dead letters; classes {', '.join(manifest['classes'])}. "
        f"Data fingerprint {manifest['fingerprint']['data']} (manifest.json)."
    )
    return f"{card.description.rstrip()} {made}" if card.description else made


def build(root: str, manifest: Mapping[str, Any], card: DatasetCard) -> dict[str, Any]:
    """The Croissant JSON-LD of the output directory ``root`` (its manifest already written)."""
    distribution = [
        _file_object(
            root,
            features.MANIFEST_FILE,
            _relative_files(root, features.MANIFEST_FILE)[0][1],
            JSON,
            "counts, options, library versions and the data fingerprint of this run",
        ),
    ]
    non_empty: set[str] = set()
    for file_set, pattern, encoding, description in FILE_SETS:
        files = _relative_files(root, pattern)
        distribution += [_file_object(root, path, size, encoding, description) for path, size in files]
        if any(size for _, size in files):
            non_empty.add(file_set)
        distribution.append(
            {
                "@type": "cr:FileSet",
                "@id": file_set,
                "name": file_set,
                "description": f"{description} ({len(files)} file{'' if len(files) == 1 else 's'})",
                "encodingFormat": encoding,
                "includes": pattern,
            }
        )
    index_fields = [(name, _EXAMPLE_TYPES.get(name, TEXT)) for name in features.EXAMPLES_INDEX_COLUMNS]
    record_sets = [
        _record_set(
            "examples", "examples-index", index_fields, "the written examples: source file, label, split, shard", "id"
        )
    ]
    # A record set over files without a single record cannot be read (no columns): left out.
    if "dead-letters" in non_empty:
        record_sets.append(
            _record_set(
                "dead_letters",
                "dead-letters",
                _DEAD_LETTER_FIELDS,
                "images and CSV rows not used, with the reason",
                None,
            )
        )
    if "quality-images" in non_empty:
        record_sets.append(
            _record_set(
                "quality_flags",
                "quality-images",
                _QUALITY_FIELDS,
                "every decoded image's outlier flags (blurry, dark, atypical, ...); empty list: none",
                "id",
            )
        )
    fingerprint = manifest["fingerprint"]["data"]
    name = card.name or posixpath.basename(root.rstrip("/")) or "facepipe-data"
    source = {key: value for key, value in (("url", card.url), ("citeAs", card.citation)) if value}
    return {
        "@context": CONTEXT,
        "@type": "sc:Dataset",
        "conformsTo": CONFORMS_TO,
        "name": name,
        "description": _description(card, manifest),
        "license": card.license or UNSPECIFIED_LICENSE,
        **source,
        "identifier": f"facepipe-data-fingerprint:{fingerprint}",
        "version": "1.0.0",
        "datePublished": datetime.datetime.now(datetime.UTC).date().isoformat(),
        "distribution": distribution,
        "recordSet": record_sets,
    }


def write(root: str, manifest: Mapping[str, Any], card: DatasetCard) -> str:
    """Writes ``root/croissant.json`` (temp file, then rename); returns its path."""
    path = FileSystems.join(root, features.CROISSANT_FILE)
    output_dir.write_json(path, build(root, manifest, card))
    return path
