# One image for every imagesvc process; compose.yaml picks the command.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY domain ./domain
COPY services ./services
COPY imagesvc ./imagesvc
COPY alembic ./alembic
RUN pip install --no-cache-dir -e .
USER nobody
ENTRYPOINT ["imagesvc"]
