# reembed's command line, for docker-compose.yml's `reembed` service.
FROM python:3.12-slim
WORKDIR /src
COPY pyproject.toml README.md alembic.ini ./
COPY alembic ./alembic
COPY sql ./sql
COPY toolkit ./toolkit
RUN pip install --no-cache-dir . && rm -rf /src
# docker-compose.yml runs it as your user (REEMBED_UID) so plan files on the host are yours.
ENV HOME=/tmp
WORKDIR /plans
ENTRYPOINT ["reembed"]
CMD ["--help"]
