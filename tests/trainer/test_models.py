"""trainer/models.py: the presets build the seeds' exact layers from one build_model(hp)."""

from __future__ import annotations

import pathlib

import keras
import keras_tuner as kt
import numpy as np
import pytest
import tensorflow as tf

from pipelines import features
from trainer import architectures, data, export, fitting, flags, models, task, training, tuning
from trainer.recipe import Recipe


def _layers(model):
    return [(type(layer).__name__, layer) for layer in model.layers]


def test_model_glasses_cnn_builds_the_seed_architecture_with_its_best_values():
    preset, _ = models.get_preset("glasses_cnn", shape=(50, 50, 3))  # What --model glasses_cnn resolves to.
    model = models.build_model(kt.HyperParameters(), preset=preset, input_shape=(50, 50, 3))
    kinds = [kind for kind, _ in _layers(model)]
    assert kinds == ["InputLayer", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dense"]
    _, conv, pool, _, dense, head = (layer for _, layer in _layers(model))
    assert model.input_shape == (None, 50, 50, 3)
    assert (conv.filters, conv.kernel_size, conv.activation.__name__) == (64, (3, 3), "relu")
    assert pool.pool_size == (2, 2)
    assert (dense.units, dense.activation.__name__) == (128, "relu")
    assert (head.units, head.activation.__name__) == (1, "sigmoid")
    assert model.loss == "binary_crossentropy"
    assert isinstance(model.optimizer, keras.optimizers.Adam)


def test_comics_preset_builds_the_seed_architecture_with_its_best_values():
    model = models.build_model(kt.HyperParameters(), preset=models.COMICS_CNN, input_shape=(128, 128, 1))
    kinds = [kind for kind, _ in _layers(model)]
    assert kinds == ["InputLayer", "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Flatten", "Dropout", "Dense"]
    _, conv1, pool1, conv2, pool2, _, dropout, head = (layer for _, layer in _layers(model))
    assert model.input_shape == (None, 128, 128, 1)
    assert (conv1.filters, conv1.kernel_size) == (100, (3, 3))
    assert (conv2.filters, conv2.kernel_size) == (50, (3, 3))
    assert pool1.pool_size == pool2.pool_size == (2, 2)
    assert dropout.rate == 0.5
    assert (head.units, head.activation.__name__) == (2, "softmax")
    assert model.loss == "sparse_categorical_crossentropy"
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-3)
    assert models.COMICS_CNN.defaults["epochs"] == 4
    assert models.GLASSES_CNN.defaults["batch_size"] == 64 and models.GLASSES_CNN.defaults["epochs"] == 3


def test_hyperparameters_drive_the_build():
    hp = models.fixed_hyperparameters(
        models.COMICS_CNN, {"filters_1": 200, "filters_2": 25, "dropout": 0.7, "learning_rate": 1e-2}
    )
    model = models.build_model(hp, preset=models.COMICS_CNN, input_shape=(24, 24, 1))
    assert [layer.filters for layer in model.layers if isinstance(layer, keras.layers.Conv2D)] == [200, 25]
    assert model.get_layer("dropout").rate == 0.7
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-2)

    hp = models.fixed_hyperparameters(
        models.GLASSES_CNN, {"filters": 32, "kernel_size": 5, "pool_size": 3, "units": 64}
    )
    model = models.build_model(hp, preset=models.GLASSES_CNN, input_shape=(16, 16, 3))
    assert model.get_layer("conv").kernel_size == (5, 5) and model.get_layer("pool").pool_size == (3, 3)
    assert model.get_layer("dense").units == 64


@pytest.mark.parametrize("preset", list(models.PRESETS.values()), ids=list(models.PRESETS))
def test_search_spaces(preset):
    small, full = preset.space("small"), preset.space("full")
    assert set(small) == set(full) == set(preset.defaults) >= {"batch_size", "epochs"}
    size = int(np.prod([len(v) for v in small.values()]))
    assert 2 <= size <= 4
    assert int(np.prod([len(v) for v in full.values()])) > size
    for name, values in full.items():
        assert preset.defaults[name] in values  # The best-found point is on the grid.
    # Registering the space makes the preset's best values the first grid point.
    hp = kt.HyperParameters()
    models.declare_hyperparameters(hp, full, preset.defaults)
    assert hp.values == dict(preset.defaults)
    with pytest.raises(ValueError, match="unknown search space"):
        preset.space("huge")


def test_comics_full_space_is_the_seed_grid():
    space = models.COMICS_CNN.space("full")
    assert space["filters_1"] == [100, 200] and space["filters_2"] == [25, 50]
    assert space["dropout"] == [0.5, 0.7] and sorted(space["learning_rate"]) == [1e-3, 1e-2]


@pytest.mark.parametrize(
    ("shape", "vector_length", "expected", "described"),
    [
        ((128, 128, 1), 0, "face_cnn", "default for 128x128 grey images: "),
        ((50, 50, 3), 0, "face_cnn", "default for 50x50 RGB images: "),
        ((50, 50, 1), 16, "image_latent", "default for 50x50 grey images with a 16-value vector: "),
        ((50, 50, 3), 512, "image_latent", "default for 50x50 RGB images with a 512-value vector: "),
        ((0, 0, 0), 512, "latent_mlp", "default for no images with a 512-value vector: "),
    ],
)
def test_the_default_preset_per_data_shape_is_the_documented_one_and_says_why(
    shape, vector_length, expected, described
):
    preset, why = models.get_preset(None, shape=shape, vector_length=vector_length)
    assert preset.name == expected and why.startswith(described) and len(why) > len(described) + 20
    # The README's preset table names the same default for the same shape.
    readme = (pathlib.Path(__file__).parents[2] / "README.md").read_text()
    assert f"| `{expected}` (default: {DOCUMENTED_SHAPES[expected]})" in readme


# How the README's preset table names the data each default is for.
DOCUMENTED_SHAPES = {
    "face_cnn": "grey or RGB images",
    "image_latent": "images with a vector",
    "latent_mlp": "a vector alone",
}


def test_the_model_flag_wins_and_an_unknown_one_is_refused():
    preset, why = models.get_preset("glasses_cnn", shape=(24, 24, 1))
    assert preset is models.GLASSES_CNN and why == "--model"
    with pytest.raises(ValueError, match="unknown model"):
        models.get_preset("resnet", shape=(24, 24, 3))
    with pytest.raises(ValueError, match="no default model for 24x24 4-channel images"):
        models.default_preset((24, 24, 4))  # Neither grey nor RGB: no measured default.


def test_for_comics_data_the_default_settles_input_norm_none_and_the_named_preset_keeps_its_own():
    preset, why = models.get_preset(None, shape=(128, 128, 3), dataset="comics")
    assert preset.name == "face_cnn" and models.fixed_hyperparameters(preset).get("input_norm") == "none"
    assert "for the comics data set input_norm none: " in why and "face2comics" in why
    # Settled: tune's default space leaves it out; the full grid still searches it.
    assert "input_norm" not in preset.spaces["small"] and preset.space("small")["input_norm"] == ["none"]
    assert preset.space("full")["input_norm"] == ["none", "local"]
    with_vector, _ = models.get_preset(None, shape=(128, 128, 3), vector_length=4, dataset="comics")
    assert with_vector.name == "image_latent" and with_vector.defaults["input_norm"] == "none"
    for named, dataset in (("face_cnn", "comics"), (None, "glasses"), (None, None)):
        other, _ = models.get_preset(named, shape=(128, 128, 3), dataset=dataset)
        assert other.defaults["input_norm"] == "local" and "input_norm" in other.spaces["small"]
    assert models.FACE_CNN.defaults["input_norm"] == "local"  # The preset itself is unchanged.


def test_tunes_default_space_for_face_cnn_is_input_norm_none_or_local():
    for preset in (models.FACE_CNN, models.IMAGE_LATENT):
        space = {name: values for name, values in preset.space("small").items() if len(values) > 1}
        assert space == {"input_norm": ["none", "local"]}  # Chosen by validation loss: a 2-point grid.
        # Untuned (train, find_label_issues without tune's file): local, the better on both glasses sets.
        assert models.fixed_hyperparameters(preset).get("input_norm") == "local"
    args = flags.parse_args(["tune", "--data_dir", "d", "--job_dir", "j"])
    assert (args.search_space, args.tuner, args.model) == ("small", None, None)
    assert tuning.default_tuner(args.search_space) == "grid" and tuning.OBJECTIVE.name == "val_loss"


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [50, 128])
def test_face_cnn_builds_for_any_size_and_channels_under_a_million_parameters(size, channels):
    largest = models.fixed_hyperparameters(models.FACE_CNN, {"width": 32, "blocks": 4, "convs_per_block": 2})
    model = models.build_model(largest, preset=models.FACE_CNN, input_shape=(size, size, channels))
    assert model.input_shape == (None, size, size, channels) and model.output_shape == (None, 1)
    assert model.count_params() < 1_000_000
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"BatchNormalization", "GlobalAveragePooling2D", "Dropout"} <= kinds
    assert model.loss == "binary_crossentropy"
    probability = architectures.positive_probability(model.predict(np.zeros((2, size, size, channels)), verbose=0))
    assert probability.shape == (2,)
    for space in ("full", "wide"):  # Every point of its spaces stays under the budget.
        assert max(models.FACE_CNN.space(space)["width"]) <= 32


@pytest.mark.parametrize("channels", [1, 3])
def test_face_cnn_with_local_contrast_saves_and_loads(tmp_path, channels):
    hp = models.fixed_hyperparameters(models.FACE_CNN, {"width": 8, "blocks": 2, "input_norm": "local"})
    model = models.build_model(hp, preset=models.FACE_CNN, input_shape=(50, 50, channels))
    assert model.get_layer("local_contrast").size == 7  # An eighth of 50, odd.
    images = np.random.default_rng(1).normal(size=(2, 50, 50, channels)).astype("float32")
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded(images).numpy(), model(images).numpy(), rtol=1e-5, atol=1e-6)
    assert "input_norm" in models.FACE_CNN.space("full") and "input_norm" in models.IMAGE_LATENT.space("wide")


def test_face_cnn_with_local_contrast_exports_a_serving_model(rgb_dir, tmp_path):
    data_dir = data.DataDir.read(rgb_dir)
    hp = models.fixed_hyperparameters(models.FACE_CNN, {"width": 8, "blocks": 2, "input_norm": "local"})
    model = models.build_model(hp, preset=models.FACE_CNN, input_shape=data_dir.image_shape)
    export.export_model(model, tft_output=data_dir.tft_output, manifest=data_dir.manifest, export_dir=str(tmp_path))
    serve, _ = export.load_serving(str(tmp_path))
    png = next(pathlib.Path(rgb_dir).parent.joinpath("images").glob("*.png")).read_bytes()
    probability = serve(image_bytes=tf.constant([png]))["probability"].numpy()
    assert probability.shape == (1,) and 0.0 <= probability[0] <= 1.0


def test_wide_space_is_seed_003s_future_work_for_every_preset():
    for preset in models.PRESETS.values():
        wide = preset.space("wide")
        assert set(wide) == set(preset.defaults)
        assert wide["dropout"] == [0.1, 0.3, 0.5, 0.7]
        assert int(np.prod([len(v) for v in wide.values()])) > 100  # Too many for a grid.
    assert models.GLASSES_CNN.space("wide")["filters"] == [50, 100, 150, 200, 250, 300]
    assert models.COMICS_CNN.space("wide")["filters_1"] == [50, 100, 150, 200, 250, 300]
    hp = models.fixed_hyperparameters(models.GLASSES_CNN, {"conv_layers": 3, "dropout": 0.3, "filters": 50})
    model = models.build_model(hp, preset=models.GLASSES_CNN, input_shape=(50, 50, 3))
    assert [layer.filters for layer in model.layers if isinstance(layer, keras.layers.Conv2D)] == [50, 50, 50]
    assert model.get_layer("dropout").rate == 0.3
    hp = models.fixed_hyperparameters(models.COMICS_CNN, {"conv_layers": 3})
    model = models.build_model(hp, preset=models.COMICS_CNN, input_shape=(50, 50, 1))
    assert [layer.filters for layer in model.layers if isinstance(layer, keras.layers.Conv2D)] == [100, 50, 50]


def test_the_recipe_compiles_into_every_presets_optimizer():
    for preset in models.PRESETS.values():
        model = models.build_model(
            kt.HyperParameters(),
            preset=preset,
            input_shape=(32, 32, 1),
            recipe=Recipe(clipnorm=2.0),
            steps_per_epoch=4,
            vector_length=4,  # Ignored by the image presets.
        )
        schedule = model.optimizer.get_config()["learning_rate"]
        assert schedule["class_name"] == "CosineDecay" and schedule["config"]["warmup_steps"] == 4
        assert model.optimizer.clipnorm == 2.0
    with pytest.raises(ValueError, match="steps_per_epoch"):
        models.build_model(kt.HyperParameters(), preset=models.FACE_CNN, input_shape=(32, 32, 3), recipe=Recipe())


def test_image_latent_is_face_cnns_tower_and_latent_mlps_tower_with_one_head():
    hp = models.fixed_hyperparameters(models.IMAGE_LATENT, {"blocks": 2, "layers": 2, "units": 8})
    model = models.build_model(hp, preset=models.IMAGE_LATENT, input_shape=(16, 16, 3), vector_length=4)
    names = {layer.name for layer in model.layers}
    assert {"block1_conv1", "block2_conv1", "gap", "latent_dense_1", "latent_dense_2", "towers"} <= names
    assert architectures.input_names(model) == ("image", "latent") and model.output_shape == (None, 1)
    mlp = models.build_model(kt.HyperParameters(), preset=models.LATENT_MLP, input_shape=(16, 16, 3), vector_length=4)
    assert architectures.input_names(mlp) == ("latent",)
    assert [layer.units for layer in mlp.layers if isinstance(layer, keras.layers.Dense)] == [64, 64, 1]
    with pytest.raises(ValueError, match="latent_mlp takes the --numeric_columns vector"):
        models.build_model(kt.HyperParameters(), preset=models.LATENT_MLP, input_shape=(16, 16, 3))


def _test_records(data_dir):
    return [r.numpy() for r in tf.data.TFRecordDataset(data.list_shards(data_dir, "test"), compression_type="GZIP")]


@pytest.mark.slow
@pytest.mark.parametrize("preset", [models.LATENT_MLP, models.IMAGE_LATENT], ids=lambda p: p.name)
def test_vector_presets_train_and_their_export_serves_the_same_probability(latent_dir, tmp_path, preset):
    data_dir = data.DataDir.read(latent_dir)
    small = {"width": 8, "blocks": 2, "units": 8, "layers": 1, "batch_size": 8}
    model = training.train(
        fitting.Run(
            data_dir=data_dir,
            job_dir=str(tmp_path / "job"),
            preset=preset,
            hyperparameters={**small, "epochs": 2},
            verbose=0,
            patience=0,
        )
    )
    ds = data.make_dataset(
        latent_dir,
        "test",
        manifest=data_dir.manifest,
        tft_output=data_dir.tft_output,
        global_batch_size=64,
        training=False,
        with_metadata=True,
        inputs=preset.inputs,
    )
    batch = next(iter(ds))
    expected = np.asarray(architectures.positive_probability(model.predict_on_batch(batch["inputs"])))
    ids = [i.decode() for i in batch["id"].numpy()]

    loaded = tf.saved_model.load(str(tmp_path / "job" / "export"))
    by_example = loaded.signatures["serving_examples"](examples=tf.constant(_test_records(latent_dir)))
    np.testing.assert_allclose(by_example["probability"].numpy(), expected, atol=1e-5)
    # The raw vectors (the CSV's values) and the PNG files through the vector signatures.
    rows = {
        line.split(",")[0]: np.array(line.split(",")[2:], np.float32)
        for line in (pathlib.Path(latent_dir).parent / "test.csv").read_text().splitlines()[1:]
    }
    vectors = tf.constant(np.stack([rows[i] for i in ids]))
    if preset is models.LATENT_MLP:
        served = loaded.signatures["serving_latent"](latent=vectors)
    else:
        images = [(pathlib.Path(latent_dir).parent / "images" / f"{i}.png").read_bytes() for i in ids]
        served = loaded.signatures["serving_image_latent"](image_bytes=tf.constant(images), latent=vectors)
    np.testing.assert_allclose(served["probability"].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(
        loaded.signatures["serving_default"](
            **(
                {"latent": vectors}
                if preset is models.LATENT_MLP
                else {"image_bytes": tf.constant(images), "latent": vectors}
            )
        )["probability"].numpy(),
        expected,
        atol=1e-5,
    )
    assert export.read_serving_config(str(tmp_path / "job" / "export"))["vector_columns"] == ["v1", "v2", "v3", "v4"]


@pytest.mark.parametrize("name", ["latent_mlp", "image_latent"])
def test_a_vector_preset_is_refused_on_data_without_a_vector(rgb_dir, tmp_path, capsys, name):
    for command in ("train", "tune"):
        status = task.main([command, "--data_dir", rgb_dir, "--job_dir", str(tmp_path / "job"), "--model", name])
        assert status == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == f"error: --model {name} needs a vector: {rgb_dir} was preprocessed without --numeric_columns"
    assert not (tmp_path / "job").exists()
    assert features.vector_length(features.read_manifest(rgb_dir)) == 0
