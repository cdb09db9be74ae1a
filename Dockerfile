# dwfc in a container: docker build -t dwfc . && docker run --rm -v "$PWD:/work" dwfc demo --out /work/runs/demo
# PyPI's torch wheel is the CUDA build; for a smaller CPU-only image pass PyTorch's CPU wheel index:
#   docker build --build-arg PIP_EXTRA_INDEX_URL=<pytorch cpu index> -t dwfc .
FROM python:3.11-slim
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /opt/dwfc
COPY pyproject.toml README.md ./
COPY dwfc ./dwfc
COPY recipes ./recipes
RUN pip install .
WORKDIR /work
ENTRYPOINT ["dwfc"]
CMD ["--help"]
