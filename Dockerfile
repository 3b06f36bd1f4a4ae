# Cascade's container image: a build stage with the Rust toolchain (its
# dependency layer cached apart from the sources), a runtime stage with only
# the binary, config/ and the app's models, run as a non-root user.
#
#   docker build -t cascade .                                    # tract backend
#   docker build --build-arg FEATURES=ort -t cascade:ort .       # + ONNX Runtime
#   docker run -p 8080:8080 -p 9090:9090 cascade
#
# With FEATURES=ort the ONNX Runtime library comes from the onnxruntime wheel
# on PyPI (ORT_VERSION), as scripts/fetch-onnxruntime.sh fetches it, and
# CASCADE_MODELS__ORT_LIBRARY points at it; the default build carries none.

ARG RUST_VERSION=1.92
ARG DEBIAN=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN} AS build
ARG FEATURES=""
WORKDIR /src
# Dependencies only: this layer is rebuilt when Cargo.toml or Cargo.lock
# change, not when the sources do.
COPY Cargo.toml Cargo.lock ./
COPY load-tests/Cargo.toml load-tests/Cargo.toml
RUN mkdir -p src load-tests/src benches \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > load-tests/src/main.rs && touch load-tests/src/lib.rs \
 && for b in inference pipeline retrieval components; do echo 'fn main() {}' > "benches/$b.rs"; done \
 && cargo build --release --locked -p cascade ${FEATURES:+--features "$FEATURES"} \
 && rm -rf src load-tests/src benches
COPY src src
COPY load-tests load-tests
COPY benches benches
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked -p cascade ${FEATURES:+--features "$FEATURES"} \
 && install -D target/release/cascade /out/cascade

# libonnxruntime.so from PyPI, only for FEATURES=ort (an empty folder otherwise).
FROM python:3.11-slim-${DEBIAN} AS ort
ARG FEATURES=""
ARG ORT_VERSION=1.31.1
WORKDIR /ort
RUN if [ "$FEATURES" = "ort" ]; then \
      pip download --quiet --no-deps --only-binary=:all: "onnxruntime==${ORT_VERSION}" -d /tmp/wheel \
      && python -c "import sys, zipfile, glob; z = zipfile.ZipFile(glob.glob('/tmp/wheel/*.whl')[0]); open('/ort/libonnxruntime.so', 'wb').write(z.read('onnxruntime/capi/libonnxruntime.so.${ORT_VERSION}'))" \
      && rm -rf /tmp/wheel; \
    fi

FROM debian:${DEBIAN}-slim AS runtime
RUN groupadd --system --gid 10001 cascade \
 && useradd --system --uid 10001 --gid cascade --home-dir /app --shell /usr/sbin/nologin cascade \
 && mkdir -p /app /var/lib/cascade/state \
 && chown cascade:cascade /var/lib/cascade/state
WORKDIR /app
COPY --from=build /out/cascade /usr/local/bin/cascade
COPY --from=ort /ort /opt/onnxruntime
COPY config config
COPY models/catalog models/catalog
COPY models/filter models/filter
COPY models/ranker models/ranker
COPY models/cold_start models/cold_start
# Listen on every interface inside the container; live state on a volume.
ENV CASCADE_SERVER__LISTEN=0.0.0.0:8080 \
    CASCADE_SERVER__ADMIN_LISTEN=0.0.0.0:9090 \
    CASCADE_STATE__DIR=/var/lib/cascade/state \
    CASCADE_MODELS__ORT_LIBRARY=/opt/onnxruntime/libonnxruntime.so
VOLUME ["/var/lib/cascade/state"]
EXPOSE 8080 9090
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/cascade"]
CMD ["serve", "--config", "config/default.toml"]
