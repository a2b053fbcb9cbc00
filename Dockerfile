# One image for every imagesvc process; compose.yaml picks the command.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY domain ./domain
COPY services ./services
COPY imagesvc ./imagesvc
COPY alembic ./alembic
# A regular install: one package, imagesvc, with the migrations inside (imagesvc/migrations), and
# the s3 extra (boto3) so that the image can use an S3-compatible image store too.
RUN pip install --no-cache-dir ".[s3]" && rm -rf build
# The processes run as `imagesvc` (uid/gid 10001), which owns the image store's mount point, so
# that a fresh named volume mounted at /srv/images is created owned by it (Docker copies the
# directory's ownership into an empty named volume). /srv/vms is the node agent's snapshot
# directory (read only). Keep the uid fixed: existing store volumes are owned by it.
RUN groupadd --system --gid 10001 imagesvc \
 && useradd --system --uid 10001 --gid imagesvc --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin imagesvc \
 && mkdir -p /srv/images /srv/vms \
 && chown imagesvc:imagesvc /srv/images \
 && chmod 0750 /srv/images
USER imagesvc
ENTRYPOINT ["imagesvc"]
