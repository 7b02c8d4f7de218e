# One image for both halves of facepipe:
#  - a Beam custom SDK worker container (Dataflow: --sdk_container_image=IMAGE,
#    Flink/portable: --environment_type=DOCKER --environment_config=IMAGE), whose
#    entrypoint stays Beam's /opt/apache/beam/boot;
#  - the trainer: docker run --entrypoint python IMAGE -m trainer.task train ...
# Its Beam and Python versions must match requirements.txt (a test checks).
FROM apache/beam_python3.11_sdk:2.77.0

WORKDIR /opt/facepipe
COPY requirements.txt setup.py MANIFEST.in ./
COPY pipelines ./pipelines
COPY trainer ./trainer
RUN pip install --no-cache-dir -r requirements.txt \
    && pip install --no-cache-dir --no-deps .
