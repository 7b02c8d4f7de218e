"""facepipe preprocessing: raw images -> TFRecord shards, tf.Transform statistics, manifest."""
