# A Beam Python SDK worker image with this package: the `python` that runs on the cluster's
# workers (Dataflow's sdk_container_image; environment_type=DOCKER on Flink and Spark; or,
# started with --worker_pool, the EXTERNAL worker pool beside each task manager). It extends
# the official image of the Beam and Python versions the build is launched with: keep them
# equal: nothing checks it, and workers of another Beam version fail in odd ways.
#
#   docker build -t REGISTRY/ava-keyframes-beam:0.1.0 .
#   docker push REGISTRY/ava-keyframes-beam:0.1.0
FROM apache/beam_python3.11_sdk:2.77.0

WORKDIR /opt/ava-keyframes
COPY pyproject.toml README.md ./
COPY ava_keyframes ./ava_keyframes
COPY detector ./detector
# The image's apache-beam satisfies the package's requirement and stays as it is; the check
# fails the image build (not a worker, later) if an install moved it.
RUN pip install --no-cache-dir ".[beam]" \
 && python -c "import apache_beam, ava_keyframes, google_crc32c, tensorflow_datasets; \
assert apache_beam.__version__ == '2.77.0', apache_beam.__version__"
WORKDIR /
# ENTRYPOINT stays the SDK image's /opt/apache/beam/boot.
