"""facepipe training: tf.data over the shards, strategies, tuning, training, evaluation, export."""
