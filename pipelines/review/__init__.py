"""Label review: a local web page to relabel and exclude images nine at a time, by keyboard.

    python -m pipelines.review --images DIR --dataset glasses \\
        --overrides_csv overrides.csv --exclude_csv exclusions.csv [--predictions preds.csv] \\
        [--label_issues label_issues.csv] [--quality_dir OUT/quality] [--port 8765]

Open the printed address (the server binds 127.0.0.1 only). Keys: 1-9 flip the label of a
tile (cycle with more than two classes), Shift+1-9 or x then 1-9 exclude / re-include it,
n/p or the arrows page (leaving a page forward marks it reviewed), u undoes the last
decision, a/l/o/d pick a filter (all, unlabelled, overridden, most disagreeing first) and
s/q/k the findings' filters (suspects, quality outliers, duplicate groups: findings.py); y then
1-9 accepts a suspect's suggested label.

The review writes what ``python -m pipelines.preprocess --overrides_csv ... --exclude ...`` reads:

    --overrides_csv   id,<label column>   one row per image whose label the reviewer changed
    --exclude_csv     id                  one row per excluded (distorted) image
    --journal         time,action,id,field,before,after: every decision, undo and reviewed
                      page, appended and fsynced (default: <overrides_csv stem>.journal.csv)

Both CSVs are rewritten atomically (temp file, fsync, os.replace) after every decision, so they
always hold the final state: the pipeline reads two override rows of an id as a conflict and
any exclusion row as final, so an append-only file would not do; the journal is the
append-only record (reviewed ids and the undo history survive a restart). Images are listed
and labelled with the pipeline's own code (options.parse_args, the label rules of
pipelines/labels.py, csv_rows.py) and thumbnails decoded with its decoder (transforms), so the page shows
the labels and the unreadable images the pipeline would see.

Modules: listing (images and their labels), findings (label issues, quality audit), store (the review's state and files),
thumbnails, server (HTTP) and cli (the command line; ``__main__`` runs it).
"""
